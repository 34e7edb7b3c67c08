#include "calc/ops.h"

long op_popcount(long a)
{
    unsigned long u = (unsigned long)a;
    long n = 0;
    for (; u != 0; u &= u - 1)
        n++;
    return n;
}
