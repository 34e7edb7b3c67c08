/* The version calc --version prints. */
#ifndef CALC_VERSION_H
#define CALC_VERSION_H

#define CALC_VERSION "1.0.0"

#endif
