#include "calc/common.h"
#include "calc/vec.h"

void vec_scale(struct vec *a, long factor)
{
    for (int i = 0; i < VEC_LEN; i++)
        a->v[i] = calc_clamp(a->v[i] * factor);
}
