/* roofline.h: this machine's limits, measured in the same run as a benchmark
 * (shared machines drift, so a figure measured yesterday is no roofline):
 * memory read bandwidth and the AMX BF16 tile peak, with a given number of
 * threads. */
#ifndef DSV_ROOFLINE_H
#define DSV_ROOFLINE_H

#include <stddef.h>

/* GB/s of n_threads threads each streaming through its share of a buffer of
 * `mib` MiB (choose it larger than the last-level cache): the median of
 * `reps` passes after one warm-up pass. Returns < 0 if the buffer cannot be
 * allocated or a thread cannot start. */
double roofline_read_gbs(int n_threads, size_t mib, int reps);

/* TFLOPS of n_threads threads each multiplying BF16 tiles held in tile
 * registers (TDPBF16PS, no memory traffic: the compute ceiling), the median
 * of `reps` runs. Returns 0 and sets *why when the CPU or the kernel offers
 * no AMX. */
double roofline_amx_bf16_tflops(int n_threads, int reps, const char **why);

#endif
