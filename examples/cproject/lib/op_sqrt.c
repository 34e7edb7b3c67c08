#include "calc/ops.h"

long op_sqrt(long a)
{
    long r = 0;
    while ((r + 1) * (r + 1) <= a)
        r++;
    return r;
}
