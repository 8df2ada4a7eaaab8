/* roofline.h: this machine's limits, measured in the same run as a benchmark
 * (shared machines drift, so a figure measured yesterday is no roofline):
 * memory read bandwidth and the compute peak of each vector or tile unit a
 * kernel level runs on, with a given number of threads. */
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

/* The units behind the kernel levels: avx2 runs on AVX2 FMA, avx512 on
 * AVX512_BF16 (fp8 and bf16 linears) and AVX-512 FMA (fp32 linears),
 * VNNI for int8 (quantized GGUF weights), amx on the AMX tiles. */
enum roofline_unit {
    ROOFLINE_AVX2_FMA,    /* VFMADD ymm: 8 fp32 lanes, 2 flops each */
    ROOFLINE_AVX512_FMA,  /* VFMADD zmm: 16 fp32 lanes */
    ROOFLINE_AVX512_BF16, /* VDPBF16PS zmm: 32 bf16 products, 2 flops each */
    ROOFLINE_AVX512_VNNI, /* VPDPBUSD zmm: 64 int8 products, 2 ops each (TOPS) */
    ROOFLINE_AMX_BF16,    /* TDPBF16PS (roofline_amx_bf16_tflops) */
    ROOFLINE_UNITS
};

/* Tera-operations per second of n_threads threads each issuing one unit's
 * instruction on register operands in independent chains (no memory
 * traffic), from the fastest of `reps` runs (a peak: load from elsewhere
 * only slows a run). Returns 0 and sets *why (the missing
 * feature) when the CPU or the OS lacks the unit. */
double roofline_unit_tflops(enum roofline_unit u, int n_threads, int reps, const char **why);

/* The same probes for a caller with its own timer (bench/kbench.c counts
 * one thread's CPU time): roofline_unit_ready says whether the CPU and OS
 * offer unit u (for AMX it also asks Linux for the tile state), else returns
 * 0 and sets *why; roofline_unit_once, only after it said yes, runs the
 * unit's loop once on the calling thread and returns the operations done. */
int roofline_unit_ready(enum roofline_unit u, const char **why);
double roofline_unit_once(enum roofline_unit u);

#endif
