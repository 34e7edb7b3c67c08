#include "calc/format.h"

void format_vec(struct strbuf *sb, const struct vec *a)
{
    strbuf_add(sb, "[");
    for (int i = 0; i < VEC_LEN; i++) {
        if (i > 0)
            strbuf_add(sb, " ");
        strbuf_add_long(sb, a->v[i]);
    }
    strbuf_add(sb, "]");
}
