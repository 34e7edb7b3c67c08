#include "calc/ops.h"

long op_gcd(long a, long b)
{
    a = op_abs(a);
    b = op_abs(b);
    while (b != 0) {
        long t = a % b;
        a = b;
        b = t;
    }
    return a;
}
