/* cpu.c: which kernel sets this machine can run, and the one a context
 * runs (dispatch). Nothing here is global state beyond the CPU's features,
 * detected once: each context holds its own table (ctx->kern).
 *
 * A level is usable when the CPU has every instruction its file is compiled
 * for (the Makefile's ISA flags) and the OS saves the registers it uses
 * (XCR0, read with xgetbv); AMX also needs the kernel's permission for the
 * tile data state (arch_prctl ARCH_REQ_XCOMP_PERM). The choice never looks
 * at CPU model names. This file is compiled without ISA flags, so it runs
 * on any x86-64; elsewhere only the generic set exists. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "ops.h"
#include "base/threads.h"
#include "base/util.h"

#if defined(__x86_64__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

enum { LV_GENERIC = DSV_KLEVEL_GENERIC, LV_AVX2, LV_AVX512, LV_AMX, LV_COUNT };

static unsigned long long xgetbv0(void) {
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((unsigned long long)hi << 32) | lo;
}

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

/* Permission to use the AMX tile data (process-wide in Linux; asking again
 * from each pool thread, as the hook does, is harmless). */
static int amx_permit(void) { return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0; }
static void amx_thread_init(void) { (void)amx_permit(); }

static int top_level;

static void detect(void) {
    unsigned a, b, c, d;
    top_level = LV_GENERIC;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return;
    const int fma = (c >> 12) & 1, osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, f16c = (c >> 29) & 1;
    if (!osxsave || !avx) return;
    const unsigned long long xcr0 = xgetbv0();
    if ((xcr0 & 0x6) != 0x6) return; /* SSE and AVX state */
    unsigned b7 = 0, c7 = 0, d7 = 0, a71 = 0, t;
    if (!__get_cpuid_count(7, 0, &t, &b7, &c7, &d7)) return;
    if (t >= 1) __get_cpuid_count(7, 1, &a71, &t, &t, &t);
    const int avx2 = (b7 >> 5) & 1;
    if (!(avx2 && fma && f16c)) return;
    top_level = LV_AVX2;
    /* avx512: F, DQ, BW, VL, VNNI, BF16, and the opmask/ZMM state. */
    const int f = (b7 >> 16) & 1, dq = (b7 >> 17) & 1, bw = (b7 >> 30) & 1, vl = (b7 >> 31) & 1;
    const int vnni = (c7 >> 11) & 1, bf16 = (a71 >> 5) & 1;
    if (!(f && dq && bw && vl && vnni && bf16) || (xcr0 & 0xe0) != 0xe0) return;
    top_level = LV_AVX512;
    /* amx: TILE, BF16, INT8 (and AVX512_VBMI, which every AMX CPU has), the
     * XTILECFG/XTILEDATA state, and permission. */
    const int amx_bf16 = (d7 >> 22) & 1, amx_tile = (d7 >> 24) & 1, amx_int8 = (d7 >> 25) & 1, vbmi = (c7 >> 1) & 1;
    if (!(amx_bf16 && amx_tile && amx_int8 && vbmi) || (xcr0 & 0x60000) != 0x60000 || !amx_permit()) return;
    dsv_thread_init_hook = amx_thread_init;
    top_level = LV_AMX;
}

static const dsv_kernels *const sets[LV_COUNT] = {&dsv_kernels_ref, &dsv_kernels_avx2, &dsv_kernels_avx512,
                                                  &dsv_kernels_amx};
#else
enum { LV_GENERIC = DSV_KLEVEL_GENERIC, LV_COUNT };
static int top_level;
static void detect(void) { top_level = LV_GENERIC; }
static const dsv_kernels *const sets[LV_COUNT] = {&dsv_kernels_ref};
#endif

/* The one list of level names, in the order of the levels (cpu.c is the
 * only place that parses them: DSV32_ISA, dsv_context_params.kernels,
 * the split model's agreement on a level). */
static const char *const level_names[DSV_KLEVEL_COUNT] = {"generic", "avx2", "avx512", "amx"};
static pthread_once_t detect_once = PTHREAD_ONCE_INIT;

const char *dsv_kernels_level_name(int level) {
    return level >= 0 && level < DSV_KLEVEL_COUNT ? level_names[level] : NULL;
}

int dsv_kernels_level_parse(const char *name) {
    for (int i = 0; name && i < DSV_KLEVEL_COUNT; i++)
        if (!strcmp(name, level_names[i])) return i;
    return -1;
}

int dsv_kernels_top(void) {
    pthread_once(&detect_once, detect);
    return top_level;
}

const dsv_kernels *dsv_kernels_at(int level) {
    return level >= 0 && level <= dsv_kernels_top() && level < LV_COUNT ? sets[level] : NULL;
}

int dsv_kernels_level_of(const dsv_kernels *k) {
    for (int i = 0; i < LV_COUNT; i++)
        if (sets[i] == k) return i;
    return -1;
}

/* The level called `name`, or -1 with the error recorded in *status. */
static int lookup(const char *name, int *status) {
    const int lv = dsv_kernels_level_parse(name), top = dsv_kernels_top();
    if (lv < 0) {
        *status = dsv_error(DSV_ERR_ARG, "unknown kernel level '%s' (generic, avx2, avx512 or amx)", name);
        return -1;
    }
    if (lv > top) {
        *status = dsv_error(DSV_ERR_UNSUPPORTED, "kernel level '%s' is not supported by this %s (best: '%s')",
                            name, lv < LV_COUNT ? "CPU or OS" : "build", level_names[top]);
        return -1;
    }
    return lv;
}

int dsv_kernels_choose(const dsv_kernels **out, const char *name) {
    int lv, st = DSV_OK;
    if (name && *name) {
        if ((lv = lookup(name, &st)) < 0) return st;
    } else {
        const char *env = getenv("DSV32_ISA");
        if (env && *env) {
            if ((lv = lookup(env, &st)) < 0) return dsv_error_prefix(st, "DSV32_ISA");
        } else {
            lv = dsv_kernels_top();
        }
    }
    *out = sets[lv];
    return DSV_OK;
}

int dsv_kernels_env_level(void) {
    const char *env = getenv("DSV32_ISA");
    return env && *env ? dsv_kernels_level_parse(env) : -1;
}

/* ---- the public API ------------------------------------------------------ */

const char *dsv_kernels_level(int i) { return dsv_kernels_level_name(i); }

int dsv_kernels_supported(const char *level) {
    int st = DSV_OK;
    if (!level) return dsv_error(DSV_ERR_ARG, "no kernel level named");
    return lookup(level, &st) < 0 ? st : DSV_OK;
}

const char *dsv_kernels_name(void) {
    const dsv_kernels *k = &dsv_kernels_ref;
    (void)dsv_kernels_choose(&k, NULL);
    return k->name;
}
