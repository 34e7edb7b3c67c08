#include <errno.h>
#include <stdlib.h>

#include "calc/common.h"
#include "calc/eval.h"

long parse_long(const char *text, int *ok)
{
    char *end;
    errno = 0;
    long value = strtol(text, &end, 10);
    *ok = errno == 0 && end != text && *end == '\0';
    return calc_clamp(value);
}
