#include "calc/common.h"
#include "calc/ops.h"

long op_fact(long a)
{
    long r = 1;
    for (long i = 2; i <= a; i++)
        r = calc_clamp(r * i);
    return r;
}
