/* A fixed-size string buffer: the formatting modules write their results into one. */
#ifndef CALC_STRBUF_H
#define CALC_STRBUF_H

#include <stddef.h>

struct strbuf {
    char text[256];
    size_t len;
};

void strbuf_init(struct strbuf *sb);
void strbuf_add(struct strbuf *sb, const char *s);
void strbuf_add_long(struct strbuf *sb, long value);

#endif
