/* Small fixed-length vectors of longs. */
#ifndef CALC_VEC_H
#define CALC_VEC_H

#define VEC_LEN 8

struct vec {
    long v[VEC_LEN];
};

void vec_fill(struct vec *out, long start, long step);
long vec_sum(const struct vec *a);
long vec_dot(const struct vec *a, const struct vec *b);
void vec_scale(struct vec *a, long factor);
long vec_max(const struct vec *a);
long vec_min(const struct vec *a);

#endif
