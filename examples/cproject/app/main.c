#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "calc/format.h"

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "--version") == 0) {
        printf("calc %s\n", format_version());
        return 0;
    }
    if (argc == 4)
        return cli_eval(argv[1], argv[2], argv[3]);
    if (argc == 1)
        return cli_report();
    fprintf(stderr, "usage: calc [--version | A OP B]\n");
    return 2;
}
