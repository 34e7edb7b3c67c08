#include "calc/common.h"
#include "calc/vec.h"

void vec_fill(struct vec *out, long start, long step)
{
    for (int i = 0; i < VEC_LEN; i++)
        out->v[i] = calc_clamp(start + step * i);
}
