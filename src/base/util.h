/* util.h: error reporting, assertions and small helpers shared by every module.
 *
 * Two tiers of errors (see style.md): DSV_ASSERT for our own broken invariants
 * (always on, prints file:line and aborts), dsv_error() for anything a user or
 * a file can cause (records a message, returns the status to propagate). */
#ifndef DSV_UTIL_H
#define DSV_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "dsv32.h"
#include "dsv32_util.h"

/* dsv_error, dsv_error_prefix, dsv_error_clear, dsv_time, dsv_read_file and
 * dsv_path_join are declared in include/dsv32_util.h (the commands use them
 * too). */

void dsv_assert_fail(const char *expr, const char *file, int line);
#define DSV_ASSERT(x) ((x) ? (void)0 : dsv_assert_fail(#x, __FILE__, __LINE__))

#define DSV_MIN(a, b) ((a) < (b) ? (a) : (b))
#define DSV_MAX(a, b) ((a) > (b) ? (a) : (b))

/* A number read from a file or a request as a whole number in [lo, hi]:
 * 1 and *out set when v is finite, integral and in range, else 0. The range
 * is checked on the double before any conversion (casting an out-of-range
 * double to an integer is undefined behaviour); lo and hi must be exactly
 * representable (|x| <= 2^53). */
int dsv_whole_in_range(double v, int64_t lo, int64_t hi, int64_t *out);

#endif
