#include "calc/common.h"
#include "calc/vec.h"

long vec_max(const struct vec *a)
{
    long m = a->v[0];
    for (int i = 1; i < VEC_LEN; i++)
        m = a->v[i] > m ? a->v[i] : m;
    return m;
}
