/* Text output of values and vectors. */
#ifndef CALC_FORMAT_H
#define CALC_FORMAT_H

#include "calc/strbuf.h"
#include "calc/vec.h"

void format_value(struct strbuf *sb, const char *name, long value);
void format_vec(struct strbuf *sb, const struct vec *a);
const char *format_version(void);

#endif
