#include "calc/format.h"
#include "version.h"

const char *format_version(void)
{
    return CALC_VERSION;
}
