#include <stdio.h>

#include "cli.h"
#include "calc/common.h"
#include "calc/eval.h"
#include "calc/format.h"

int cli_eval(const char *a, const char *op, const char *b)
{
    long result;
    if (eval_words(a, op, b, &result) != CALC_OK) {
        fprintf(stderr, "calc: cannot evaluate %s %s %s\n", a, op, b);
        return 1;
    }
    struct strbuf sb;
    strbuf_init(&sb);
    format_value(&sb, "result", result);
    puts(sb.text);
    return 0;
}
