#include "calc/format.h"

void format_value(struct strbuf *sb, const char *name, long value)
{
    strbuf_add(sb, name);
    strbuf_add(sb, " = ");
    strbuf_add_long(sb, value);
}
