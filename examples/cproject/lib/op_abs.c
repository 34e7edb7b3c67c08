#include "calc/common.h"
#include "calc/ops.h"

long op_abs(long a)
{
    return a < 0 ? -a : a;
}
