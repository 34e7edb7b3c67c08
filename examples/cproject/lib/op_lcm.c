#include "calc/common.h"
#include "calc/ops.h"

long op_lcm(long a, long b)
{
    long g = op_gcd(a, b);
    return g == 0 ? 0 : calc_clamp(op_abs(a / g * b));
}
