/* roofline.c: memory read bandwidth and compute peak probes (roofline.h).
 *
 * All run the same work on every thread at once, started together by a
 * barrier, and time the slowest: that is what a data-parallel kernel on
 * those threads would see. The read loop sums 16-byte vectors into eight
 * independent accumulators, which outruns DRAM several times over. The AMX
 * loop keeps four accumulator tiles busy from four operand tiles that never
 * leave the registers (2x2 blocking, as fast GEMM kernels do), so it
 * measures the tile unit alone. The vector probes (FMA, VDPBF16PS,
 * VPDPBUSD) run 12 independent accumulator chains on register operands:
 * more chains than latency x throughput on current cores, so the pipes, not
 * a dependency, set the pace. Each probe function carries its own target
 * attribute and runs only after CPUID and XCR0 say the CPU and OS have it. */
#include "roofline.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return v[n / 2];
}

/* Runs fn(arg, ith, n) on n threads at once, `reps` + 1 times (the first a
 * warm-up); times[r] gets each timed run's wall time from a shared start to
 * the last thread's end. Threads wait at a gate until all have started, so
 * a failure to start one can still send the others home. */
struct team {
    int n, reps, state;      /* state: 0 wait, 1 go, -1 give up */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_barrier_t bar;
    void (*fn)(void *arg, int ith, int nth);
    void *arg;
};
struct member {
    struct team *t;
    int ith;
};

static void *member_main(void *p) {
    struct member *m = p;
    struct team *t = m->t;
    pthread_mutex_lock(&t->mu);
    while (!t->state) pthread_cond_wait(&t->cv, &t->mu);
    int go = t->state > 0;
    pthread_mutex_unlock(&t->mu);
    for (int r = 0; go && r <= t->reps; r++) {
        pthread_barrier_wait(&t->bar);
        t->fn(t->arg, m->ith, t->n);
        pthread_barrier_wait(&t->bar);
    }
    return NULL;
}

static void open_gate(struct team *t, int state) {
    pthread_mutex_lock(&t->mu);
    t->state = state;
    pthread_cond_broadcast(&t->cv);
    pthread_mutex_unlock(&t->mu);
}

static int run_team(int n, int reps, void (*fn)(void *, int, int), void *arg, double *times) {
    struct team t = {.n = n, .reps = reps, .fn = fn, .arg = arg};
    pthread_t tid[256];
    struct member mem[256];
    if (n < 1 || n > 256 || pthread_barrier_init(&t.bar, NULL, (unsigned)n)) return -1;
    pthread_mutex_init(&t.mu, NULL);
    pthread_cond_init(&t.cv, NULL);
    int started = 1;
    for (; started < n; started++) {
        mem[started] = (struct member){&t, started};
        if (pthread_create(&tid[started], NULL, member_main, &mem[started])) break;
    }
    open_gate(&t, started == n ? 1 : -1);
    for (int r = 0; started == n && r <= reps; r++) {
        pthread_barrier_wait(&t.bar);
        double t0 = now();
        fn(arg, 0, n);
        pthread_barrier_wait(&t.bar);
        if (r > 0) times[r - 1] = now() - t0;
    }
    for (int i = 1; i < started; i++) pthread_join(tid[i], NULL);
    pthread_barrier_destroy(&t.bar);
    pthread_mutex_destroy(&t.mu);
    pthread_cond_destroy(&t.cv);
    return started == n ? 0 : -1;
}

/* ---- read bandwidth ------------------------------------------------------ */

struct bw_arg {
    uint64_t *buf;
    size_t n;                /* words */
    volatile uint64_t sink;
};

static void share(size_t n, int ith, int nth, size_t *b, size_t *e) {
    size_t q = n / (size_t)nth;
    *b = q * (size_t)ith;
    *e = ith == nth - 1 ? n : *b + q;
}

/* First touch by the thread that will read it, so pages sit near it. */
static void bw_init(void *a, int ith, int nth) {
    struct bw_arg *p = a;
    size_t b, e;
    share(p->n, ith, nth, &b, &e);
    for (size_t i = b; i < e; i++) p->buf[i] = i;
}

/* 16-byte vectors (GNU vector extension, SSE2 on any x86-64) summed into 8
 * independent accumulators that stay in registers: 128 bytes a step. */
typedef uint64_t v2u64 __attribute__((vector_size(16)));

static void bw_read(void *a, int ith, int nth) {
    struct bw_arg *p = a;
    size_t b, e;
    share(p->n, ith, nth, &b, &e);
    b = (b + 1) & ~(size_t)1;
    v2u64 s[8] = {{0}};
    const v2u64 *v = (const v2u64 *)(p->buf + b);
    size_t n = (e > b ? e - b : 0) / 16;
    for (size_t i = 0; i < n; i++, v += 8) {
        s[0] += v[0]; s[1] += v[1]; s[2] += v[2]; s[3] += v[3];
        s[4] += v[4]; s[5] += v[5]; s[6] += v[6]; s[7] += v[7];
    }
    v2u64 t = s[0] + s[1] + s[2] + s[3] + s[4] + s[5] + s[6] + s[7];
    p->sink = t[0] + t[1];
}

double roofline_read_gbs(int n_threads, size_t mib, int reps) {
    struct bw_arg a = {0};
    a.n = (mib << 20) / sizeof(uint64_t);
    double times[64];
    if (reps < 1 || reps > 64 || !(a.buf = aligned_alloc(64, a.n * sizeof(uint64_t)))) return -1;
    double t0;
    int st = run_team(n_threads, 0, bw_init, &a, &t0);
    if (!st) st = run_team(n_threads, reps, bw_read, &a, times);
    free(a.buf);
    return st ? -1 : (double)(a.n * sizeof(uint64_t)) / median(times, reps) / 1e9;
}

/* ---- AMX BF16 peak ------------------------------------------------------- */

#if defined(__x86_64__)
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18
#define AMX_ITERS 1000000L

/* Palette 1: 8 tiles of 16 rows x 64 bytes. */
struct tilecfg {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
};

__attribute__((target("amx-tile,amx-bf16"))) static void amx_loop(void *a, int ith, int nth) {
    (void)a; (void)ith; (void)nth;
    struct tilecfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int i = 0; i < 8; i++) { cfg.colsb[i] = 64; cfg.rows[i] = 16; }
    _Alignas(64) uint8_t buf[1024];
    memset(buf, 0, sizeof buf);
    _tile_loadconfig(&cfg);
    _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
    _tile_loadd(4, buf, 64); _tile_loadd(5, buf, 64);
    _tile_loadd(6, buf, 64); _tile_loadd(7, buf, 64);
    for (long it = 0; it < AMX_ITERS; it++) {
        _tile_dpbf16ps(0, 4, 6); _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6); _tile_dpbf16ps(3, 5, 7);
    }
    _tile_stored(0, buf, 64);
    _tile_release();
}

/* Whether the CPU has AMX-BF16 and Linux lets this process use the tiles. */
static int amx_ready(const char **why) {
    unsigned a, b, c, d;
    /* CPUID.(7,0):EDX bit 22 AMX-BF16, bit 24 AMX-TILE. */
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(d & (1u << 22)) || !(d & (1u << 24))) {
        *why = "this CPU has no AMX-BF16";
        return 0;
    }
    /* Linux hands out the 8 KB tile state only on request (once per process). */
    if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)) {
        *why = "the kernel refused the AMX tile state (arch_prctl)";
        return 0;
    }
    return 1;
}

/* ---- vector unit peaks --------------------------------------------------- */

#define VEC_ITERS 2000000L
#define VEC_CHAINS 12
/* Fully unrolled, so the accumulators live in registers. */
#define UNROLL _Pragma("GCC unroll 16")

static unsigned long long xgetbv0(void) {
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((unsigned long long)hi << 32) | lo;
}

/* Whether the CPU and the OS (XCR0) offer a unit: the same tests as the
 * kernel dispatch (src/kernels/cpu.c) makes for the level that uses it. */
static int have_unit(enum roofline_unit u) {
    unsigned a, b, c, d, b7 = 0, c7 = 0, d7 = 0, a71 = 0, t;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    const int fma = (c >> 12) & 1, osxsave = (c >> 27) & 1, avx = (c >> 28) & 1;
    if (!osxsave || !avx || (xgetbv0() & 0x6) != 0x6 || !__get_cpuid_count(7, 0, &t, &b7, &c7, &d7)) return 0;
    if (t >= 1) __get_cpuid_count(7, 1, &a71, &t, &t, &t);
    const int avx2 = (b7 >> 5) & 1, f = (b7 >> 16) & 1, zmm = (xgetbv0() & 0xe0) == 0xe0;
    switch (u) {
    case ROOFLINE_AVX2_FMA: return avx2 && fma;
    case ROOFLINE_AVX512_FMA: return f && zmm;
    case ROOFLINE_AVX512_BF16: return f && zmm && ((a71 >> 5) & 1);
    case ROOFLINE_AVX512_VNNI: return f && zmm && ((c7 >> 11) & 1);
    default: return 0;
    }
}

/* The accumulators end in a volatile sink, so no loop is dead code. */
static volatile float vec_sink_f;
static volatile int vec_sink_i;

/* One probe per unit, all of one shape: VEC_CHAINS accumulators of type T,
 * chain i starting at INIT(i), each step replacing every accumulator a by
 * STEP(a) (the unit's instruction on register operands), then the chains
 * summed with ADD and the sum handed to SINK. Each probe is compiled with
 * its own target attribute only, so the rest of this file runs anywhere. */
#define VEC_PROBE(name, target_, T, INIT, STEP, ADD, SINK)                        \
    __attribute__((target(target_))) static void name(void *a, int ith, int nth) { \
        (void)a; (void)ith; (void)nth;                                           \
        T acc[VEC_CHAINS];                                                       \
        for (int i = 0; i < VEC_CHAINS; i++) acc[i] = INIT(i);                   \
        for (long it = 0; it < VEC_ITERS; it++)                                  \
            UNROLL for (int i = 0; i < VEC_CHAINS; i++) acc[i] = STEP(acc[i]);   \
        T s = acc[0];                                                            \
        for (int i = 1; i < VEC_CHAINS; i++) s = ADD(s, acc[i]);                 \
        SINK(s);                                                                 \
    }

/* Operands: fp32 1e-3 x 1e-4 for the FMAs, bf16 ~1e-3 (0x3a83) for
 * VDPBF16PS (products stay normal), the byte 3 for VPDPBUSD. */
#define AVX2_INIT(i) _mm256_set1_ps((float)(i))
#define AVX2_FMA_STEP(a) _mm256_fmadd_ps(_mm256_set1_ps(1e-3f), _mm256_set1_ps(1e-4f), a)
#define AVX2_SINK(s) (vec_sink_f = _mm256_cvtss_f32(s))
#define ZMM_INIT(i) _mm512_set1_ps((float)(i))
#define ZMM_SINK(s) (vec_sink_f = _mm512_reduce_add_ps(s))
#define AVX512_FMA_STEP(a) _mm512_fmadd_ps(_mm512_set1_ps(1e-3f), _mm512_set1_ps(1e-4f), a)
#define BF16_X ((__m512bh)_mm512_set1_epi16(0x3a83))
#define AVX512_BF16_STEP(a) _mm512_dpbf16_ps(a, BF16_X, BF16_X)
#define VNNI_INIT(i) _mm512_set1_epi32(i)
#define VNNI_STEP(a) _mm512_dpbusd_epi32(a, _mm512_set1_epi8(3), _mm512_set1_epi8(3))
#define VNNI_SINK(s) (vec_sink_i = _mm512_reduce_add_epi32(s))

VEC_PROBE(avx2_fma_loop, "avx2,fma", __m256, AVX2_INIT, AVX2_FMA_STEP, _mm256_add_ps, AVX2_SINK)
VEC_PROBE(avx512_fma_loop, "avx512f", __m512, ZMM_INIT, AVX512_FMA_STEP, _mm512_add_ps, ZMM_SINK)
VEC_PROBE(avx512_bf16_loop, "avx512f,avx512bf16", __m512, ZMM_INIT, AVX512_BF16_STEP, _mm512_add_ps, ZMM_SINK)
VEC_PROBE(avx512_vnni_loop, "avx512f,avx512vnni", __m512i, VNNI_INIT, VNNI_STEP, _mm512_add_epi32, VNNI_SINK)

/* Each unit's loop and what one call of it does: operations per
 * instruction (lanes x products per lane x 2, multiply and add) times
 * instructions per call. */
static const struct {
    void (*fn)(void *, int, int);
    double ops;
    const char *what;
} units[ROOFLINE_UNITS] = {
    [ROOFLINE_AVX2_FMA] = {avx2_fma_loop, 8 * 2 * (double)VEC_ITERS * VEC_CHAINS, "AVX2 and FMA"},
    [ROOFLINE_AVX512_FMA] = {avx512_fma_loop, 16 * 2 * (double)VEC_ITERS * VEC_CHAINS, "AVX-512"},
    [ROOFLINE_AVX512_BF16] = {avx512_bf16_loop, 16 * 2 * 2 * (double)VEC_ITERS * VEC_CHAINS, "AVX512_BF16"},
    [ROOFLINE_AVX512_VNNI] = {avx512_vnni_loop, 16 * 4 * 2 * (double)VEC_ITERS * VEC_CHAINS, "AVX512_VNNI"},
    /* Each TDPBF16PS: 16 x 16 outputs, 32-deep dot products, 2 flops each. */
    [ROOFLINE_AMX_BF16] = {amx_loop, 4.0 * AMX_ITERS * 16 * 16 * 32 * 2, "AMX-BF16"},
};

int roofline_unit_ready(enum roofline_unit u, const char **why) {
    if ((int)u < 0 || u >= ROOFLINE_UNITS) {
        *why = "unknown unit";
        return 0;
    }
    if (u == ROOFLINE_AMX_BF16) return amx_ready(why);
    if (!have_unit(u)) {
        *why = units[u].what;
        return 0;
    }
    return 1;
}

double roofline_unit_once(enum roofline_unit u) {
    units[u].fn(NULL, 0, 1);
    return units[u].ops;
}

double roofline_unit_tflops(enum roofline_unit u, int n_threads, int reps, const char **why) {
    double times[64];
    if (u == ROOFLINE_AMX_BF16) return roofline_amx_bf16_tflops(n_threads, reps, why);
    if (reps < 1 || reps > 64) { *why = "bad repetition count"; return 0; }
    if (!roofline_unit_ready(u, why)) return 0;
    if (run_team(n_threads, reps, units[u].fn, NULL, times)) { *why = "cannot start threads"; return 0; }
    /* The best run: other work on the machine only ever slows a run down. */
    double best = times[0];
    for (int r = 1; r < reps; r++) best = times[r] < best ? times[r] : best;
    return (double)n_threads * units[u].ops / best / 1e12;
}

double roofline_amx_bf16_tflops(int n_threads, int reps, const char **why) {
    double times[64];
    if (reps < 1 || reps > 64) { *why = "bad repetition count"; return 0; }
    if (!amx_ready(why)) return 0;
    if (run_team(n_threads, reps, amx_loop, NULL, times)) { *why = "cannot start threads"; return 0; }
    return (double)n_threads * units[ROOFLINE_AMX_BF16].ops / median(times, reps) / 1e12;
}
#else
double roofline_unit_tflops(enum roofline_unit u, int n_threads, int reps, const char **why) {
    (void)n_threads; (void)reps;
    if (u == ROOFLINE_AMX_BF16) return roofline_amx_bf16_tflops(n_threads, reps, why);
    *why = "x86-64 only";
    return 0;
}

double roofline_amx_bf16_tflops(int n_threads, int reps, const char **why) {
    (void)n_threads; (void)reps;
    *why = "AMX exists on x86-64 only";
    return 0;
}

int roofline_unit_ready(enum roofline_unit u, const char **why) {
    *why = u == ROOFLINE_AMX_BF16 ? "AMX exists on x86-64 only" : "x86-64 only";
    return 0;
}

double roofline_unit_once(enum roofline_unit u) {
    (void)u;
    return 0;
}
#endif
