/* kbench.c: single-kernel timings of the decoding linears, the indexer, its
 * top-k and the sparse attention over the gathered rows,
 * for tuning on a machine shared with other work (`make kbench`).
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
 * core in the same units (-k peak: tools/roofline.c's probe of each level's
 * unit on register operands, timed here in thread CPU time).
 * Not a test: nothing here checks a result (tests/test_kernels.c does). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/numeric.h"
#include "kernels/ops.h"
#include "kernels/quant.h"
#include "roofline.h"

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

static int cmp_i32(const void *a, const void *b) {
    const int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

static uint32_t rng = 12345;
static uint32_t rnd(void) {
    rng ^= rng << 13;
    rng ^= rng >> 17;
    rng ^= rng << 5;
    return rng;
}

/* One line per level: the median and the best of its rounds' times t[level
 * * rounds + round] (seconds; sorted here), shown as work / time (a rate)
 * or, when per_call, time * work, with `width` digits and the unit after
 * each (best_unit may be ""), then the ratio of the first level's median to
 * this level's (above 1: faster). */
static void report(const char **names, int ns, double *t, int rounds, double work, int per_call, int width,
                   const char *unit, const char *best_unit) {
    double base = 0;
    for (int s = 0; s < ns; s++) {
        double *v = t + (size_t)s * rounds;
        qsort(v, (size_t)rounds, sizeof(double), cmp_double);
        const double med = v[rounds / 2], best = v[0];
        if (!s) base = med;
        printf("%-8s median %*.2f %s  best %*.2f%s%s  x%.3f\n", names[s], width, per_call ? med * work : work / med,
               unit, width, per_call ? best * work : work / best, *best_unit ? " " : "", best_unit, base / med);
    }
}

/* topk and mqa: rounds of `reps` calls on data that stays in the caches
 * (what decoding reads there: one token's scores, the gathered rows). */
static int bench_attn(const dsv_kernels **sets, const char **names, int ns, int n, int rounds, int mqa) {
    enum { H = 16, C = 512, R = 64, KSEL = 2048 };
    const int np = dsv_mqa_keys_padded(n), reps = mqa ? 4 : 32;
    float *sc = malloc(sizeof(float) * (size_t)n), *S = aligned_alloc(64, sizeof(float) * (size_t)H * np);
    int32_t *pos = malloc(sizeof(int32_t) * KSEL), *tscr = malloc(sizeof(int32_t) * dsv_topk_scratch(n));
    dsv_bf16 *kv = aligned_alloc(64, (size_t)np * (C + R) * 2 + 64), *pe = kv + (size_t)np * C;
    dsv_bf16 *qa = malloc((size_t)H * (C + R) * 2), *qr = qa + (size_t)H * C, *P = aligned_alloc(64, (size_t)H * np * 2);
    dsv_bf16 *o = malloc((size_t)H * C * 2);
    void *kvp = aligned_alloc(64, (dsv_mqa_kvp_bytes(n, C) + 63) & ~(size_t)63);
    float *scr = aligned_alloc(64, (dsv_attn_scratch(n, C, R) * 4 + 63) & ~(size_t)63);
    double *t = calloc((size_t)ns * rounds, sizeof(double));
    if (!sc || !S || !pos || !tscr || !kv || !qa || !P || !o || !kvp || !scr || !t) return 1;
    for (int i = 0; i < n; i++) sc[i] = (float)(rnd() % 100000) * 1e-3f;
    for (size_t i = 0; i < (size_t)np * (C + R); i++) kv[i] = dsv_f32_to_bf16((float)((int)(rnd() % 2001) - 1000) * 1e-3f);
    for (int i = 0; i < H * (C + R); i++) qa[i] = dsv_f32_to_bf16((float)((int)(rnd() % 2001) - 1000) * 1e-3f);
    printf("kbench %s: %d keys, %d rounds of %d calls\n", mqa ? "mqa (16 heads, 512 + 64)" : "topk 2048", n, rounds, reps);
    for (int r = -1; r < rounds; r++)
        for (int s = 0; s < ns; s++) {
            const dsv_kernels *k = sets[s];
            const double t0 = now();
            for (int i = 0; i < reps; i++) {
                if (!mqa) {
                    dsv_topk_select(pos, NULL, sc, n, n < KSEL ? n : KSEL, tscr);
                    continue;
                }
                if (k->mqa_pack) k->mqa_pack(kvp, kv, n, C, 0, n);
                k->mqa_scores(S, np, qa, qr, kv, pe, H, C, R, 0.07f, 0, n, NULL, scr);
                for (int h = 0; h < H; h++) {
                    float *sr = S + (size_t)h * np;
                    k->softmax_bf16(sr, n);
                    for (int j = 0; j < np; j++) P[(size_t)h * np + j] = j < n ? (dsv_bf16)(dsv_f32_bits(sr[j]) >> 16) : 0;
                }
                k->mqa_pv(o, P, np, kv, kvp, n, H, C, 0, C, scr);
            }
            if (r >= 0) t[(size_t)s * rounds + r] = now() - t0;
        }
    report(names, ns, t, rounds, 1e6 / reps, 1, 8, "us/call", "us/call");
    free(sc); free(S); free(pos); free(tscr); free(kv); free(qa); free(P); free(o); free(kvp); free(scr); free(t);
    return 0;
}

/* gather: what mla.c does per layer before the scores, on records spread as
 * the cache spreads them (pages of 64 records of several layers). */
static int bench_gather(const dsv_kernels **sets, const char **names, int ns, int n, int dist, int rounds) {
    enum { C = 512, R = 64, REC = C + 4 * (C / 128) + 2 * R, NSEL = 2048, LAYERS = 6 };
    const size_t layer = (size_t)64 * (REC + 132), page = layer * LAYERS;
    const int pages = (n + 63) / 64, nsel = n < NSEL ? n : NSEL;
    uint8_t *mem = aligned_alloc(64, page * pages);
    int32_t *idx = malloc(sizeof(int32_t) * (size_t)n);
    dsv_bf16 *lat = aligned_alloc(64, (size_t)NSEL * C * 2), *pe = aligned_alloc(64, (size_t)NSEL * R * 2);
    double *t = calloc((size_t)ns * rounds, sizeof(double));
    if (!mem || !idx || !lat || !pe || !t) return 1;
    for (size_t i = 0; i < page * pages; i++) mem[i] = (uint8_t)(rnd() & 0x77);
    for (int p = 0; p < pages; p++)
        for (int l = 0; l < LAYERS; l++)
            for (int r = 0; r < 64; r++) {
                float one = 1.0f / 64;
                for (int g = 0; g < C / 128; g++) memcpy(mem + p * page + l * layer + (size_t)r * REC + C + 4 * g, &one, 4);
            }
    printf("kbench gather: %d of %d positions, 6 layers, prefetch %d rows ahead, %d rounds\n", nsel, n, dist, rounds);
    for (int r = -1; r < rounds; r++)
        for (int s = 0; s < ns; s++) {
            /* nsel distinct positions of n, ascending (a partial Fisher-Yates,
             * then a sort), drawn anew for every call as each decoded token
             * draws its own: the same positions again would find their
             * records in the L3 cache (2048 x 6 records are 8 MB), which a
             * token at depth 16384 does not. */
            for (int i = 0; i < n; i++) idx[i] = i;
            for (int i = 0; i < nsel; i++) {
                const int j = i + (int)(rnd() % (uint32_t)(n - i)), x = idx[i];
                idx[i] = idx[j];
                idx[j] = x;
            }
            qsort(idx, (size_t)nsel, sizeof *idx, cmp_i32);
            const double t0 = now();
            for (int l = 0; l < LAYERS; l++) {
                const uint8_t *base = mem + l * layer;
#define REC_AT(j) (base + (size_t)(idx[j] / 64) * page + (size_t)(idx[j] % 64) * REC)
                for (int j = 0; j < nsel; j++) {
                    if (dist && j + dist < nsel)
                        for (int o = 0; o < REC; o += 64) __builtin_prefetch(REC_AT(j + dist) + o, 0, 2);
                    sets[s]->dequant(lat + (size_t)j * C, REC_AT(j), (const float *)(const void *)(REC_AT(j) + C), C);
                    memcpy(pe + (size_t)j * R, REC_AT(j) + C + 4 * (C / 128), 2 * R);
                }
#undef REC_AT
            }
            if (r >= 0) t[(size_t)s * rounds + r] = now() - t0;
        }
    report(names, ns, t, rounds, 1e6 / LAYERS, 1, 8, "us per layer", "");
    free(mem); free(idx); free(lat); free(pe); free(t);
    return 0;
}

/* absorb: one layer's absorbed query and output of a token (16 heads, nope
 * 128, latent 512, v 128), as mla.c runs them on one thread: today's bf16
 * wkv_b (absorb_q / absorb_o per head) and a GGUF's blocks (dsv_q_absorb,
 * attn_k_b of type tk, attn_v_b of tv), each on its own weights cycled
 * through `mb` MB so every call streams from DRAM. Two lines per level. */
static int bench_absorb(const dsv_kernels **sets, const char **names, int ns, uint32_t tk, uint32_t tv, int mb,
                        int rounds) {
    enum { H = 16, N = 128, C = 512, V = 128 };
    const size_t kb = dsv_ggml_row_size(tk, N), vb = dsv_ggml_row_size(tv, C);
    const size_t qbytes = (size_t)H * C * kb + (size_t)H * V * vb, bbytes = (size_t)H * (N + V) * C * 2;
    const int nq = (int)(((size_t)mb << 20) / qbytes) + 1, nb = (int)(((size_t)mb << 20) / bbytes) + 1;
    uint8_t *qm = aligned_alloc(64, (qbytes * nq + 63) & ~(size_t)63);
    dsv_bf16 *bm = aligned_alloc(64, (bbytes * nb + 63) & ~(size_t)63);
    float *wf = malloc(sizeof(float) * (size_t)H * C * N), acc[C];
    dsv_bf16 *q = malloc((size_t)H * (N + 64) * 2), *lat = malloc((size_t)H * C * 2), *y = malloc((size_t)H * C * 2);
    double *t = calloc((size_t)2 * ns * rounds, sizeof(double));
    if (!qm || !bm || !wf || !q || !lat || !y || !t) return 1;
    for (size_t i = 0; i < (size_t)H * C * N; i++) wf[i] = (float)((int)(rnd() % 2001) - 1000) / 1000.0f;
    dsv_q_quant(tk, wf, qm, (int64_t)H * C * N);
    dsv_q_quant(tv, wf, qm + (size_t)H * C * kb, (int64_t)H * V * C);
    for (int j = 1; j < nq; j++) memcpy(qm + (size_t)j * qbytes, qm, qbytes);
    for (size_t i = 0; i < bbytes / 2 * nb; i++) bm[i] = dsv_f32_to_bf16(wf[i % ((size_t)H * C * N)]);
    for (int i = 0; i < H * (N + 64); i++) q[i] = dsv_f32_to_bf16((float)((int)(rnd() % 2001) - 1000) / 1000.0f);
    for (int i = 0; i < H * C; i++) lat[i] = dsv_f32_to_bf16((float)((int)(rnd() % 2001) - 1000) / 1000.0f);
    printf("kbench absorb: 16 heads, nope 128, latent 512, v 128; bf16 wkv_b (%zu KB a layer) vs %s/%s blocks "
           "(%zu KB), %d rounds\n", bbytes >> 10, dsv_ggml_name(tk), dsv_ggml_name(tv), qbytes >> 10, rounds);
    const char *lname[16];
    char lbuf[16][48];
    int cq = 0, cb = 0;
    for (int r = -1; r < rounds; r++)
        for (int s = 0; s < ns; s++) {
            const dsv_kernels *k = sets[s];
            const int lv = dsv_kernels_level_of(k);
            double t0 = now();
            for (int j = 0; j < 8; j++, cb = (cb + 1) % nb) {
                const dsv_linear w = {.dtype = DSV_DT_BF16, .n_out = H * (N + V), .n_in = C, .ld = C,
                                      .w = bm + (size_t)cb * (bbytes / 2)};
                for (int h = 0; h < H; h++) k->absorb_q(y + h * C, q + h * (N + 64), &w, h * (N + V), N, acc);
                for (int h = 0; h < H; h++) k->absorb_o(y + h * V, lat + h * C, &w, h * (N + V) + N, V);
            }
            if (r >= 0) t[(size_t)(2 * s) * rounds + r] = (now() - t0) / 8;
            t0 = now();
            for (int j = 0; j < 8; j++, cq = (cq + 1) % nq) {
                const uint8_t *w = qm + (size_t)cq * qbytes;
                dsv_q_absorb_for(lv, tk)(tk, w, kb, C, N, q, N + 64, y, 0, H);
                dsv_q_absorb_for(lv, tv)(tv, w + (size_t)H * C * kb, vb, V, C, lat, C, y, 0, H);
            }
            if (r >= 0) t[(size_t)(2 * s + 1) * rounds + r] = (now() - t0) / 8;
        }
    for (int s = 0; s < 2 * ns && s < 16; s++) {
        snprintf(lbuf[s], sizeof lbuf[s], "%s/%s", names[s / 2], s % 2 ? "blocks" : "bf16");
        lname[s] = lbuf[s];
    }
    printf("(names: LEVEL/bf16 is wkv_b, LEVEL/blocks the file's blocks; name width cut at 8)\n");
    report(lname, 2 * ns, t, rounds, 1e6, 1, 8, "us/layer", "us/layer");
    free(qm); free(bm); free(wf); free(q); free(lat); free(y); free(t);
    return 0;
}

/* -k peak: tools/roofline.c's probe of the unit a level's linears run on,
 * timed here in this thread's CPU time on one core (the bench times it in
 * wall time on its threads): operations per CPU-second over `calls` calls. */
static double peak_gflops(enum roofline_unit u, int calls) {
    double ops = 0;
    const double t0 = now();
    for (int c = 0; c < calls; c++) ops += roofline_unit_once(u);
    return ops / (now() - t0) * 1e-9;
}

static void usage(void) {
    printf("usage: kbench [options] LEVEL...\n"
           "  Times one kernel at each kernel LEVEL (generic, avx2, avx512, amx), the\n"
           "  levels alternated round by round.\n"
           "  -k KERNEL   fp8 | bf16 | fp8x (bf16 weights, fp8 activations) | index | topk |\n"
           "              mqa | gather | absorb[:TK,TV], or a block type (q8_0, q4_k, q6_k, ...: dsv_linear_q,\n"
           "              8-bit activations quantized in the call), or peak: one core's\n"
           "              GFLOPS per CPU-second of the unit each LEVEL's linears run on\n"
           "              (default fp8)\n"
           "  -m M        input rows (default 1; above 16, GFLOPS are reported too)\n"
           "  -n N        output rows of one weight matrix (default 512)\n"
           "  -K K        inputs (default 2048)\n"
           "  -r ROUNDS   rounds (default 15)\n"
           "  -b MB       weight memory cycled through per round (default 256)\n"
           "  index: -n is the number of keys, heads 64, one query.\n"
           "  topk: dsv_topk_select of 2048 among -n scores (the level does not matter).\n"
           "  mqa: one token's absorbed attention over -n gathered rows, 16 heads, latent\n"
           "       512 + rope 64: mqa_scores, softmax, mqa_pv (keys/us).\n"
           "  gather: the dequantization of 2048 latent records (656 bytes: 512 codes, 4\n"
           "       scales, 64 rope bf16) at sorted random positions among -n per layer of\n"
           "       6 layers of KV cache (new positions each call), prefetching the record\n"
           "       -m rows ahead into L2, as decoding does for its first block of keys.\n"
           "  absorb: one layer's absorbed query and output (16 heads, nope 128, latent 512,\n"
           "       v 128) from the bf16 wkv_b and from attn_k_b/attn_v_b blocks of types TK,\n"
           "       TV (default Q5_0,Q4_K), microseconds per layer, weights cycled through -b MB.\n");
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
    if (ns && rounds <= 1000 && !strcmp(kern, "gather")) return bench_gather(sets, names, ns, N, m, rounds);
    if (ns && rounds <= 1000 && !strncmp(kern, "absorb", 6)) {
        /* absorb or absorb:TK,TV (default Q5_0,Q4_K: llama.cpp's Q4_K_M of bench-small) */
        char tk[16] = "Q5_0", tv[16] = "Q4_K";
        if (kern[6] == ':' && sscanf(kern + 7, "%15[^,],%15s", tk, tv) != 2) {
            usage();
            return 2;
        }
        const int a = dsv_ggml_from_name(tk), b = dsv_ggml_from_name(tv);
        if (a < 0 || b < 0 || !dsv_q_absorb_ok((uint32_t)a, 128) || !dsv_q_absorb_ok((uint32_t)b, 512)) {
            usage();
            return 2;
        }
        return bench_absorb(sets, names, ns, (uint32_t)a, (uint32_t)b, mb, rounds);
    }
    if (!ns || m > 4096 || K % 128 || rounds > 1000) {
        usage();
        return 2;
    }
    if (!strcmp(kern, "peak")) {
        static const struct { const char *level, *unit; enum roofline_unit u; } probes[] = {
            {"avx2", "AVX2 FMA", ROOFLINE_AVX2_FMA},
            {"avx512", "AVX512_BF16", ROOFLINE_AVX512_BF16},
            {"amx", "AMX BF16", ROOFLINE_AMX_BF16},
        };
        for (int s = 0; s < ns; s++) {
            const int lv = dsv_kernels_level_of(sets[s]);
            const char *why = NULL;
            int p = 0;
            while (p < 3 && lv != dsv_kernels_level_parse(probes[p].level)) p++;
            if (p == 3) printf("%-8s no vector peak probe for this level\n", names[s]);
            else if (!roofline_unit_ready(probes[p].u, &why)) printf("%-8s %s peak unavailable: %s\n", names[s], probes[p].unit, why);
            else printf("%-8s %s peak %7.2f GFLOPS per CPU-second\n", names[s], probes[p].unit, peak_gflops(probes[p].u, 10));
        }
        return 0;
    }
    const int index = !strcmp(kern, "index"), fp8 = !strcmp(kern, "fp8"), fp8x = !strcmp(kern, "fp8x");
    const int topk = !strcmp(kern, "topk"), mqa = !strcmp(kern, "mqa");
    if (topk || mqa) return bench_attn(sets, names, ns, N, rounds, mqa);

    const int gt = index || fp8 || fp8x || !strcmp(kern, "bf16") ? 0 : dsv_ggml_from_name(kern);
    if (gt < 0 || (gt > 0 && (!dsv_q_supported((uint32_t)gt) || dsv_ggml_blck((uint32_t)gt) < 32 ||
                              K % dsv_ggml_blck((uint32_t)gt)))) {
        usage();
        return 2;
    }

    /* Weights: nmat matrices of N x K, cycled through so each call misses the caches. */
    /* index: the keys [N][128] stand for the matrix */
    const size_t esz = fp8 || index ? 1 : 2;
    const size_t wbytes = gt ? (size_t)N * dsv_ggml_row_size((uint32_t)gt, K) : (size_t)N * (index ? 128 : K) * esz;
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
    if (gt) { /* valid blocks (random bytes would give NaN scales): one matrix quantized, then copied */
        float *wf = malloc(sizeof(float) * (size_t)N * K);
        if (!wf) return 1;
        for (size_t i = 0; i < (size_t)N * K; i++) wf[i] = (float)((int)(rnd() % 2001) - 1000) / 1000.0f;
        dsv_q_quant((uint32_t)gt, wf, wmem, (int64_t)N * K);
        for (int j = 1; j < nmat; j++) memcpy(wmem + (size_t)j * wbytes, wmem, wbytes);
        free(wf);
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
                                .w = wp, .scale = scale, .scale_ld = sld, .act_fp8 = fp8x};
                if (gt) {
                    w.gtype = (uint32_t)gt;
                    dsv_linear_q((dsv_bf16 *)y, N, x, &w, m, 0, N, scr, dsv_kernels_level_of(k));
                } else if (index) {
                    k->index_q_pack(qp, q8, 64);
                    k->index_score(out, N, qp, hw, 64, 1, wp, ks, N, scr);
                } else if (fp8x) {
                    k->lin_pack_fp8x(xp, x, m, K, 0, m, 0);
                    k->linear_fp8x((dsv_bf16 *)y, N, xp, &w, m, 0, N, scr);
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
    if (index) report(names, ns, t, rounds, (double)N * nmat * 1e-6, 0, 8, "keys/us", "keys/us");
    else if (m <= 16) report(names, ns, t, rounds, (double)wbytes * nmat * 1e-9, 0, 7, "GB/s", "GB/s");
    else report(names, ns, t, rounds, 2.0 * m * N * K * nmat * 1e-9, 0, 7, "GFLOPS", "GFLOPS");
    free(t); free(wmem); free(scale); free(x); free(y); free(xp); free(scr); free(ks); free(out); free(qp);
    return 0;
}
