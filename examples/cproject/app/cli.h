/* The calc program's two modes. */
#ifndef CLI_H
#define CLI_H

int cli_eval(const char *a, const char *op, const char *b);
int cli_report(void);

#endif
