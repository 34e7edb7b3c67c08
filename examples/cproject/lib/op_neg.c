#include "calc/common.h"
#include "calc/ops.h"

long op_neg(long a)
{
    return -a;
}
