#include "calc/common.h"
#include "calc/ops.h"

long op_add(long a, long b)
{
    return calc_clamp(a + b);
}
