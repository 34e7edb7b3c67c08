/* Arithmetic on one value: each function is its own module, named op_<name>. */
#ifndef CALC_OPS_H
#define CALC_OPS_H

long op_add(long a, long b);
long op_sub(long a, long b);
long op_mul(long a, long b);
long op_div(long a, long b);
long op_mod(long a, long b);
long op_pow(long a, long b);
long op_gcd(long a, long b);
long op_lcm(long a, long b);
long op_abs(long a);
long op_neg(long a);
long op_sqrt(long a);
long op_fact(long a);
long op_fib(long a);
long op_square(long a);
long op_cube(long a);
long op_popcount(long a);

#endif
