#include <stdio.h>

#include "cli.h"
#include "calc/format.h"
#include "calc/ops.h"
#include "calc/table.h"

int cli_report(void)
{
    struct strbuf sb;
    struct vec v;
    vec_fill(&v, 1, 3);
    strbuf_init(&sb);
    format_vec(&sb, &v);
    printf("vector %s: sum %ld, max %ld\n", sb.text, vec_sum(&v), vec_max(&v));
    strbuf_init(&sb);
    format_value(&sb, "fib(20)", op_fib(20));
    puts(sb.text);
    printf("primes: %ld %ld %ld ... of %d\n", table_prime(0), table_prime(1), table_prime(2), table_size());
    printf("square(7) = %ld, gcd(84, 36) = %ld\n", table_square(7), op_gcd(84, 36));
    return 0;
}
