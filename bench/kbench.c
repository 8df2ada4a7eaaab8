/* kbench.c: single-kernel timings of the linears (decoding and prefill)
 * and the indexer, for tuning on a machine shared with other work
 * (`make kbench`).
 *
 * Whole-model benchmarks (dsv32 bench) mix every kernel with the thread
 * pool and the other processes on the machine; this tool times one kernel
 * of one level on one shape, with weights spread over more memory than the
 * caches hold (so each call streams from DRAM, as decoding does), and
 * alternates the levels named on the command line round by round, so a
 * burst of load from elsewhere hits every level alike. It reports the median
 * and the best round of each level as GB/s of weight read (linears) or keys
 * per microsecond (indexer) of the thread's CPU time, and the ratio of
 * medians to the first level. Linears with more than 16 input rows
 * (prefill: -m 64, 512) are compute-bound: their lines give GFLOPS per
 * CPU-second (2 m N K per call), to read against the unit's peak on one
 * core in the same units (-k peak: the levels' units on register operands,
 * as tools/roofline.c probes them, timed in thread CPU time).
 * Not a test: nothing here checks a result (tests/test_kernels.c does). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/numeric.h"
#include "kernels/ops.h"

/* This thread's CPU time: on a machine whose cores other processes share,
 * wall time mostly measures how long the scheduler kept the thread off a
 * core; CPU time counts only the cycles it ran (memory stalls included). */
static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static uint32_t rng = 12345;
static uint32_t rnd(void) {
    rng ^= rng << 13;
    rng ^= rng >> 17;
    rng ^= rng << 5;
    return rng;
}

#if defined(__x86_64__)
#include <immintrin.h>
#define PEAK_ITERS 20000000L
#define UNROLL12 _Pragma("GCC unroll 12")
static volatile float peak_sink;
/* GFLOPS per CPU-second of one core: 12 independent chains of the unit's
 * instruction on register operands. */
__attribute__((target("avx2,fma"))) static double peak_avx2_fma(void) {
    __m256 a[12];
    const __m256 c = _mm256_set1_ps(1e-4f);
    UNROLL12 for (int i = 0; i < 12; i++) a[i] = _mm256_set1_ps((float)i);
    const double t0 = now();
    for (long it = 0; it < PEAK_ITERS; it++) UNROLL12 for (int i = 0; i < 12; i++) a[i] = _mm256_fmadd_ps(a[i], c, c);
    const double t = now() - t0;
    for (int i = 0; i < 12; i++) peak_sink += a[i][0];
    return (double)PEAK_ITERS * 12 * 16 / t * 1e-9;
}
__attribute__((target("avx512f,avx512bf16"))) static double peak_avx512_bf16(void) {
    __m512 a[12];
    const __m512i x = _mm512_set1_epi16(0x3a83);
    UNROLL12 for (int i = 0; i < 12; i++) a[i] = _mm512_set1_ps((float)i);
    const double t0 = now();
    for (long it = 0; it < PEAK_ITERS; it++)
        UNROLL12 for (int i = 0; i < 12; i++) a[i] = _mm512_dpbf16_ps(a[i], (__m512bh)x, (__m512bh)x);
    const double t = now() - t0;
    for (int i = 0; i < 12; i++) peak_sink += a[i][0];
    return (double)PEAK_ITERS * 12 * 64 / t * 1e-9;
}
#endif

static void usage(void) {
    printf("usage: kbench [options] LEVEL...\n"
           "  Times one kernel at each kernel LEVEL (generic, avx2, avx512, amx), the\n"
           "  levels alternated round by round.\n"
           "  -k KERNEL   fp8 | bf16 | index | peak (default fp8; peak: one core's GFLOPS\n"
           "              per CPU-second of the unit each LEVEL's linears run on)\n"
           "  -m M        input rows (default 1; above 16, GFLOPS are reported too)\n"
           "  -n N        output rows of one weight matrix (default 512)\n"
           "  -K K        inputs (default 2048)\n"
           "  -r ROUNDS   rounds (default 15)\n"
           "  -b MB       weight memory cycled through per round (default 256)\n"
           "  index: -n is the number of keys, heads 64, one query.\n");
}

int main(int argc, char **argv) {
    const char *kern = "fp8";
    int m = 1, N = 512, K = 2048, rounds = 15, mb = 256;
    const dsv_kernels *sets[8];
    const char *names[8];
    int ns = 0;
    for (int a = 1; a < argc; a++) {
        const char *s = argv[a];
        if (!strcmp(s, "-h") || !strcmp(s, "--help")) {
            usage();
            return 0;
        }
        if (s[0] == '-' && a + 1 < argc) {
            const char *v = argv[++a];
            long x = strtol(v, NULL, 10);
            if (s[1] != 'k' && (x < 1 || x > 1 << 20)) {
                fprintf(stderr, "kbench: %s %s: out of range\n", s, v);
                return 2;
            }
            switch (s[1]) {
            case 'k': kern = v; break;
            case 'm': m = (int)x; break;
            case 'n': N = (int)x; break;
            case 'K': K = (int)x; break;
            case 'r': rounds = (int)x; break;
            case 'b': mb = (int)x; break;
            default: usage(); return 2;
            }
            continue;
        }
        const int lv = dsv_kernels_level_parse(s);
        const dsv_kernels *k = lv < 0 ? NULL : dsv_kernels_at(lv);
        if (!k || ns == 8) {
            fprintf(stderr, "kbench: level '%s' unknown or not on this machine\n", s);
            return 2;
        }
        names[ns] = s;
        sets[ns++] = k;
    }
    if (!ns || m > 4096 || K % 128 || rounds > 1000) {
        usage();
        return 2;
    }
    if (!strcmp(kern, "peak")) {
        for (int s = 0; s < ns; s++) {
            const int lv = dsv_kernels_level_of(sets[s]);
#if defined(__x86_64__)
            if (lv == dsv_kernels_level_parse("avx2")) {
                printf("%-8s AVX2 FMA peak %7.2f GFLOPS per CPU-second\n", names[s], peak_avx2_fma());
                continue;
            }
            if (lv == dsv_kernels_level_parse("avx512")) {
                printf("%-8s AVX512_BF16 peak %7.2f GFLOPS per CPU-second\n", names[s], peak_avx512_bf16());
                continue;
            }
#endif
            printf("%-8s no vector peak probe for this level\n", names[s]);
        }
        return 0;
    }
    const int index = !strcmp(kern, "index"), fp8 = !strcmp(kern, "fp8");
    if (!index && !fp8 && strcmp(kern, "bf16")) {
        usage();
        return 2;
    }

    /* Weights: nmat matrices of N x K, cycled through so each call misses the caches. */
    /* index: the keys [N][128] stand for the matrix */
    const size_t esz = fp8 || index ? 1 : 2, wbytes = (size_t)N * (index ? 128 : K) * esz;
    const int nmat = (int)(((size_t)mb << 20) / wbytes) < 1 ? 1 : (int)(((size_t)mb << 20) / wbytes);
    uint8_t *wmem = aligned_alloc(64, (wbytes * nmat + 63) & ~(size_t)63);
    const int sld = K / 128;
    float *scale = malloc(sizeof(float) * (size_t)((N + 127) / 128) * sld + 64);
    if (!wmem || !scale) return 1;
    for (size_t i = 0; i < wbytes * nmat; i++) {
        uint8_t c = (uint8_t)rnd();
        if (esz == 1) c = (c & 0x7f) == 0x7f ? 0x3f : c;
        else if (i % 2) c = (uint8_t)(0x3c + (c & 3)) | (c & 0x80); /* bf16 high byte: |v| in [2^-7, 2) */
        wmem[i] = c;
    }
    for (int i = 0; i < (N + 127) / 128 * sld; i++) scale[i] = 1.0f / 256;
    dsv_bf16 *x = malloc((size_t)m * K * 2), *y = malloc((size_t)m * N * 4 + 64);
    void *xp = aligned_alloc(64, (dsv_lin_pack_bytes(m, K) + 63) & ~(size_t)63);
    void *scr = aligned_alloc(64, DSV_LIN_SCRATCH);
    for (int i = 0; i < m * K; i++) x[i] = dsv_f32_to_bf16((float)((int)(rnd() % 2001) - 1000) / 1000.0f);
    /* indexer: one query of 64 heads */
    uint8_t q8[64 * 128];
    float hw[64], *ks = malloc(sizeof(float) * (size_t)N), *out = malloc(sizeof(float) * (size_t)N);
    void *qp = aligned_alloc(64, (dsv_index_q_bytes(64) + 63) & ~(size_t)63);
    for (int i = 0; i < 64 * 128; i++) q8[i] = (uint8_t)(rnd() % 0x7e);
    for (int i = 0; i < 64; i++) hw[i] = 0.01f * (float)(i + 1);
    for (int i = 0; i < N; i++) ks[i] = 1.0f;

    double *t = calloc((size_t)ns * rounds, sizeof(double));
    int cur = 0;
    if (index) printf("kbench index: 64 heads, one query, %d keys, %d rounds\n", N, rounds);
    else printf("kbench %s m=%d n=%d K=%d, %d matrices (%zu MB), %d rounds\n", kern, m, N, K, nmat,
                wbytes * nmat >> 20, rounds);
    for (int r = -1; r < rounds; r++) { /* round -1: warm-up (page faults) */
        for (int s = 0; s < ns; s++) {
            const dsv_kernels *k = sets[s];
            const double t0 = now();
            for (int j = 0; j < nmat; j++, cur = (cur + 1) % nmat) {
                const uint8_t *wp = wmem + (size_t)cur * wbytes;
                dsv_linear w = {.dtype = fp8 ? DSV_DT_F8_E4M3 : DSV_DT_BF16, .n_out = N, .n_in = K, .ld = K,
                                .w = wp, .scale = scale, .scale_ld = sld};
                if (index) {
                    k->index_q_pack(qp, q8, 64);
                    k->index_score(out, N, qp, hw, 64, 1, wp, ks, N, scr);
                } else if (fp8) {
                    k->lin_pack_fp8(xp, x, m, K, 0, m, 0);
                    k->linear_fp8((dsv_bf16 *)y, N, xp, &w, m, 0, N, scr);
                } else {
                    const void *in = x;
                    if (k->lin_pack_bf16) {
                        k->lin_pack_bf16(xp, x, m, K, 0, m);
                        in = xp;
                    }
                    k->linear_bf16((dsv_bf16 *)y, N, in, &w, m, 0, N, scr);
                }
            }
            if (r >= 0) t[(size_t)s * rounds + r] = now() - t0;
        }
    }
    double base = 0;
    for (int s = 0; s < ns; s++) {
        double *v = t + (size_t)s * rounds;
        qsort(v, (size_t)rounds, sizeof(double), cmp_double);
        const double med = v[rounds / 2], best = v[0];
        if (!s) base = med;
        if (index)
            printf("%-8s median %8.2f keys/us  best %8.2f keys/us  x%.3f\n", names[s], (double)N * nmat / med * 1e-6,
                   (double)N * nmat / best * 1e-6, base / med);
        else if (m <= 16)
            printf("%-8s median %7.2f GB/s  best %7.2f GB/s  x%.3f\n", names[s], (double)wbytes * nmat / med * 1e-9,
                   (double)wbytes * nmat / best * 1e-9, base / med);
        else {
            const double flop = 2.0 * m * N * K * nmat;
            printf("%-8s median %7.2f GFLOPS  best %7.2f GFLOPS  x%.3f\n", names[s], flop / med * 1e-9,
                   flop / best * 1e-9, base / med);
        }
    }
    free(t); free(wmem); free(scale); free(x); free(y); free(xp); free(scr); free(ks); free(out); free(qp);
    return 0;
}
