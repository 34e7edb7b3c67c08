#include "calc/common.h"
#include "calc/ops.h"

long op_square(long a)
{
    return calc_clamp(a * a);
}
