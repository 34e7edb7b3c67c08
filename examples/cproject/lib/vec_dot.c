#include "calc/common.h"
#include "calc/vec.h"

long vec_dot(const struct vec *a, const struct vec *b)
{
    long s = 0;
    for (int i = 0; i < VEC_LEN; i++)
        s = calc_clamp(s + a->v[i] * b->v[i]);
    return s;
}
