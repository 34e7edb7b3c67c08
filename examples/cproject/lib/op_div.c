#include "calc/common.h"
#include "calc/ops.h"

long op_div(long a, long b)
{
    return b == 0 ? 0 : a / b;
}
