#include "calc/common.h"
#include "calc/ops.h"

long op_fib(long a)
{
    long x = 0, y = 1;
    for (long i = 0; i < a; i++) {
        long t = calc_clamp(x + y);
        x = y;
        y = t;
    }
    return x;
}
