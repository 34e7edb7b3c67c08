#include "calc/table.h"
#include "tables.h"

int table_size(void)
{
    return TABLE_SIZE;
}
