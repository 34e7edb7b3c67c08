/* Lookups in the generated tables (tables.h, written at build time by tools/gen-tables.sh). */
#ifndef CALC_TABLE_H
#define CALC_TABLE_H

long table_square(int i);
long table_prime(int i);
int table_size(void);

#endif
