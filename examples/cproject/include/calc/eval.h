/* Evaluation of "a OP b" expressions given as three words. */
#ifndef CALC_EVAL_H
#define CALC_EVAL_H

int eval_words(const char *a, const char *op, const char *b, long *result);
long parse_long(const char *text, int *ok);

#endif
