#include "calc/common.h"
#include "calc/ops.h"

long op_mul(long a, long b)
{
    return calc_clamp(a * b);
}
