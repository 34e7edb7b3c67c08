#include "calc/common.h"
#include "calc/ops.h"

long op_cube(long a)
{
    return calc_clamp(a * a * a);
}
