#include "calc/table.h"
#include "tables.h"

long table_prime(int i)
{
    return i >= 0 && i < TABLE_SIZE ? primes[i] : -1;
}
