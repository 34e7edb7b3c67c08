#include "calc/common.h"
#include "calc/vec.h"

long vec_sum(const struct vec *a)
{
    long s = 0;
    for (int i = 0; i < VEC_LEN; i++)
        s = calc_clamp(s + a->v[i]);
    return s;
}
