#include <string.h>

#include "calc/common.h"
#include "calc/eval.h"
#include "calc/ops.h"

int eval_words(const char *a, const char *op, const char *b, long *result)
{
    int ok_a, ok_b;
    long x = parse_long(a, &ok_a), y = parse_long(b, &ok_b);
    if (!ok_a || !ok_b || strlen(op) != 1)
        return CALC_ERROR;
    switch (op[0]) {
    case '+': *result = op_add(x, y); return CALC_OK;
    case '-': *result = op_sub(x, y); return CALC_OK;
    case 'x': *result = op_mul(x, y); return CALC_OK;
    case '/': *result = op_div(x, y); return CALC_OK;
    case '%': *result = op_mod(x, y); return CALC_OK;
    case '^': *result = op_pow(x, y); return CALC_OK;
    default: return CALC_ERROR;
    }
}
