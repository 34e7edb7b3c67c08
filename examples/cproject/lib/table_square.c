#include "calc/table.h"
#include "tables.h"

long table_square(int i)
{
    return i >= 0 && i < TABLE_SIZE ? squares[i] : -1;
}
