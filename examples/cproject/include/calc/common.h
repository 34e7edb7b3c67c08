/* Shared by every module: the status codes and the clamp every operation applies. */
#ifndef CALC_COMMON_H
#define CALC_COMMON_H

#define CALC_OK 0
#define CALC_ERROR (-1)
#define CALC_LIMIT 1000000L

static inline long calc_clamp(long value)
{
    return value > CALC_LIMIT ? CALC_LIMIT : value < -CALC_LIMIT ? -CALC_LIMIT : value;
}

#endif
