#include <stdio.h>
#include <string.h>

#include "calc/strbuf.h"

void strbuf_init(struct strbuf *sb)
{
    sb->text[0] = '\0';
    sb->len = 0;
}

void strbuf_add(struct strbuf *sb, const char *s)
{
    size_t n = strlen(s);
    if (n > sizeof sb->text - 1 - sb->len)
        n = sizeof sb->text - 1 - sb->len;
    memcpy(sb->text + sb->len, s, n);
    sb->len += n;
    sb->text[sb->len] = '\0';
}

void strbuf_add_long(struct strbuf *sb, long value)
{
    char digits[32];
    snprintf(digits, sizeof digits, "%ld", value);
    strbuf_add(sb, digits);
}
