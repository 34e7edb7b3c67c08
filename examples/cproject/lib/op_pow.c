#include "calc/common.h"
#include "calc/ops.h"

long op_pow(long a, long b)
{
    long r = 1;
    while (b-- > 0)
        r = calc_clamp(r * a);
    return r;
}
