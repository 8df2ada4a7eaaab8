/* cmd_bench.c: `dsv32 bench`, prefill throughput and decode latency at
 * chosen context depths, next to this machine's limits.
 *
 * Per depth and attention mode: reset the sequence and reach the depth, by
 * prefilling random tokens in n_batch chunks (--fill real) or by writing
 * random cache contents (--fill random: a 128K depth in seconds; decode
 * timing is real either way); then time --prefill tokens appended at that
 * depth, cut the sequence back to the depth, and time --decode tokens one at
 * a time (greedy, logits of each) after --warmup untimed ones (cut back
 * again), so the timed tokens find the weights mapped and the caches warm
 * at that depth. Before any of it, every weight page is read once
 * (dsv_model_touch; --no-touch skips it): the untimed tokens reach only the
 * experts they route to, and the first timed figures must not include
 * reading a model from disk or mapping it. Decode rows add the per-token
 * latency percentiles (p50, p90, p99, max: nearest rank over the timed
 * tokens), the jitter a mean hides. Each measurement reports the engine's own
 * statistics (dsv_context_get_stats): time per part, weight bytes streamed
 * per token and the GB/s that makes, cache bytes, linear-layer TFLOPS. The
 * read bandwidth and the compute peak of every unit present (AVX2 FMA,
 * AVX-512 FMA, AVX512_BF16, AVX512_VNNI, AMX BF16) are measured at start
 * with the same thread count, so every figure sits next to its roofline in
 * one run; linTF stands next to the peak of the unit the context's kernel
 * level runs its linears on (pkTF, %pk).
 *
 * Output: a table (stdout; stderr with --json), and with --json one JSON
 * object per measurement on stdout. Both modes of --attn both share one
 * cache seed and alternate per depth, so their ratio is measured under the
 * same machine conditions. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "cli.h"
#include "commands.h"
#include "dsv32.h"
#include "roofline.h"
#include "dsv32_util.h"

static const char *usage =
    "usage: dsv32 bench -m MODEL_DIR [options]\n"
    "\n"
    "Prefill throughput and decode latency at each context depth, time split by part,\n"
    "weight and cache bytes per token, next to this machine's read bandwidth and the compute\n"
    "peak of each vector unit (AVX2 FMA, AVX-512 FMA and BF16, VNNI int8, AMX BF16; measured\n"
    "in the same run, with the same threads). pkTF is the peak of the unit the kernel level\n"
    "runs its linears on, %pk the linear layers' TFLOPS over it. Under mpirun, a line per\n"
    "measurement adds the time the split model spent communicating between ranks.\n"
    "\n"
    "  -m, --model DIR    model directory (config.json + *.safetensors; see dsv32 synth)\n"
    "  --depth LIST       context depths, comma-separated (default 0,4096)\n"
    "  --prefill N        tokens prefilled at each depth, timed; 0 skips (default 512)\n"
    "  --decode N         tokens decoded one by one at each depth, timed; 0 skips (default 32)\n"
    "  --warmup N         untimed tokens decoded before them at each depth (default 2)\n"
    "  --fill MODE        how each depth is reached: real (prefill in --batch chunks) or random\n"
    "                     (random cache contents; decode timing stays real) (default real)\n"
    "  --dense            attend to every position: the same attention kernel, no top-k\n"
    "  --topk K           keep K positions per query (default: the model's index_topk)\n"
    "  --topk-file FILE   a top-k per layer (from dsv32 analyze --suggest -o); \"topk\" reports the largest\n"
    "  --attn MODE        sparse, dense or both, alternating per depth (default sparse)\n"
    "  --act-quant Q      GGUF: fp8 or none: quantize the inputs of the linears that were fp8 in the checkpoint\n"
    "                     (default: what the file says, else none)\n"
    "  -t, --threads N    threads (default: all online CPUs)\n"
    "  --batch N          tokens per forward call when prefilling (default 512)\n"
    "  --seed S           seed of the tokens and of random cache contents (default 0)\n"
    "  --bw-mib N         buffer of the read-bandwidth probe, larger than the caches (default 1024)\n"
    "  --no-touch         skip reading every weight page before timing (the first figures may then\n"
    "                     include reading the model from disk and mapping it)\n"
    "  --json             one JSON object per measurement on stdout (the table goes to stderr)\n"
    "  -h, --help         this help\n";

enum { MODE_SPARSE = 1, MODE_DENSE = 2 };

struct bench {
    const char *cmd, *model_dir, *name, *topk_file;
    int layer_topk[DSV_MAX_TOPK_LAYERS];
    int *depths, n_depths;
    long prefill, decode, warmup, topk, threads, batch, bw_mib;
    int act_quant;             /* dsv_model_params.act_quant */
    double *lat;               /* per-token decode seconds [decode] */
    unsigned long long seed;
    int fill_random, modes, json;
    dsv_model *m;
    const dsv_config *c;
    dsv_context *ctx[2];       /* sparse, dense */
    float *logits;
    int32_t *toks;
    FILE *table;
    double mem_gbs, amx_tflops;
    const char *amx_why;
    double peak[ROOFLINE_UNITS]; /* roofline_unit_tflops, 0 where absent */
    double level_peak[2];        /* per context (sparse, dense): its level's unit */
    int warm, no_touch;
    char wlabel[64], wmix[256];  /* dsv_model_weight_types: "gguf Q4_K_M", "Q4_K 58%, ..." */
};

static int parse_depths(struct bench *b, const char *list) {
    int n = 1;
    for (const char *p = list; *p; p++) n += *p == ',';
    if (!(b->depths = malloc((size_t)n * sizeof *b->depths))) return cli_fail(b->cmd, "out of memory");
    b->n_depths = n;
    const char *s = list;
    for (int i = 0; i < n; i++) {
        char *end;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (errno || end == s || v < 0 || v > (1L << 26) || (*end && *end != ','))
            return cli_fail(b->cmd, "--depth: expected comma-separated depths in [0, %ld], got '%s'", 1L << 26, list);
        b->depths[i] = (int)v;
        s = end + (*end == ',');
    }
    return 0;
}

static uint64_t peak_rss_mb(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (uint64_t)ru.ru_maxrss / 1024; /* Linux: kB */
}

/* Deterministic pseudo-random token ids for (seed, depth, index). */
static void make_tokens(int32_t *t, int n, int vocab, uint64_t seed) {
    for (int i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        t[i] = (int32_t)((seed >> 33) % (uint64_t)vocab);
    }
}

/* The next token (greedy), inside the timed decode loop: the best value
 * stays in a register (reading x[best] back each step chained every
 * compare to a load: 117 us per token over a 32000-entry vocabulary on
 * the AMD EPYC class, against 30 us this way; same index, the first
 * maximum). */
static int argmax(const float *x, int n) {
    int best = 0;
    float bv = x[0];
    for (int i = 1; i < n; i++)
        if (x[i] > bv) {
            bv = x[i];
            best = i;
        }
    return best;
}

/* Prefills n tokens in chunks of --batch; logits of the last one if want. */
static int prefill(struct bench *b, dsv_context *ctx, const int32_t *t, int n, int want) {
    for (int pos = 0; pos < n;) {
        int len = n - pos < b->batch ? n - pos : (int)b->batch;
        int last = pos + len == n;
        dsv_batch_entry e = {0, len, t + pos, last && want ? DSV_LOGITS_LAST : DSV_LOGITS_NONE};
        if (dsv_forward(ctx, &e, 1, b->logits)) return 1;
        pos += len;
    }
    return 0;
}

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile p (0-100] of n sorted values. */
static double percentile(const double *v, int n, double p) {
    int r = (int)(p / 100.0 * n + 0.999999);
    return v[r < 1 ? 0 : r > n ? n - 1 : r - 1];
}

static const char *mode_name(int mode) { return mode == MODE_DENSE ? "dense" : "sparse"; }

static void print_header(struct bench *b) {
    fprintf(b->table,
            "%-7s %-6s %7s %4s %8s %9s | %8s %7s %8s %9s %9s %8s | %8s %6s %4s | %8s %8s %6s %6s %4s | %7s | %7s %7s %7s %7s\n",
            "phase", "mode", "depth", "tok", "tok/s", "ms/tok", "indexer", "top-k", "attn", "linear", "moe",
            "other", "wMB/tok", "GB/s", "%bw", "KV B/tok", "KV rd MB", "linTF", "pkTF", "%pk", "peak MB", "p50 ms", "p90 ms",
            "p99 ms", "max ms");
}

/* The most positions a layer keeps (per-layer lists, then --topk, then the model's). */
static int largest_topk(const struct bench *b) {
    int k = 0;
    for (int l = 0; l < b->c->n_layers && l < DSV_MAX_TOPK_LAYERS; l++) {
        int kl = b->layer_topk[l] ? b->layer_topk[l] : b->topk ? (int)b->topk
                 : b->c->index_topk_layer[l] ? b->c->index_topk_layer[l] : b->c->index_topk;
        if (kl > k) k = kl;
    }
    return k;
}

/* One measurement: stats over `n` tokens that took `secs`; lat: the
 * tokens' own times (decode), NULL for a prefill. */
static void report(struct bench *b, const char *phase, int mode, int depth, int n, double secs,
                   const dsv_context_stats *s, double *lat) {
    double pct[4] = {0, 0, 0, 0}; /* p50, p90, p99, max in ms */
    if (lat) {
        qsort(lat, (size_t)n, sizeof *lat, cmp_double);
        pct[0] = 1e3 * percentile(lat, n, 50);
        pct[1] = 1e3 * percentile(lat, n, 90);
        pct[2] = 1e3 * percentile(lat, n, 99);
        pct[3] = 1e3 * lat[n - 1];
    }
    const double per = 1.0 / n, ms = 1e-6 * per;
    const double wbytes = (double)s->weight_bytes * per;
    const double gbs = wbytes / (secs * per) / 1e9;
    const double lin_tf = s->ns[DSV_PHASE_LINEAR] ? (double)s->linear_flops / (double)s->ns[DSV_PHASE_LINEAR] / 1e3 : 0;
    const double attn_ms = (double)(s->ns[DSV_PHASE_INDEXER] + s->ns[DSV_PHASE_TOPK] + s->ns[DSV_PHASE_ATTN]) * ms;
    const double kv_read = (double)s->kv_read_bytes * per;
    const double keys = (double)s->n_keys * per / b->c->n_layers;
    const uint64_t rss = peak_rss_mb();
    const double pk = b->level_peak[mode == MODE_DENSE];
    fprintf(b->table,
            "%-7s %-6s %7d %4d %8.3f %9.2f | %8.2f %7.2f %8.2f %9.2f %9.2f %8.2f | %8.1f %6.2f %3.0f%% | %8llu %8.2f %6.3f "
            "%6.3f %3.0f%% | %7llu",
            phase, mode_name(mode), depth, n, n / secs, 1e3 * secs * per, s->ns[DSV_PHASE_INDEXER] * ms,
            s->ns[DSV_PHASE_TOPK] * ms, s->ns[DSV_PHASE_ATTN] * ms, s->ns[DSV_PHASE_LINEAR] * ms,
            s->ns[DSV_PHASE_MOE] * ms, s->ns[DSV_PHASE_OTHER] * ms, wbytes / 1e6, gbs,
            b->mem_gbs > 0 ? 100 * gbs / b->mem_gbs : 0, (unsigned long long)s->kv_token_bytes, kv_read / 1e6, lin_tf,
            pk, pk > 0 ? 100 * lin_tf / pk : 0, (unsigned long long)rss);
    if (lat) fprintf(b->table, " | %7.2f %7.2f %7.2f %7.2f\n", pct[0], pct[1], pct[2], pct[3]);
    else fprintf(b->table, " | %7s %7s %7s %7s\n", "-", "-", "-", "-");
    if (s->n_pool_runs)
        fprintf(b->table, "        thread pool: %.1f runs and %.1f barriers per token\n", (double)s->n_pool_runs * per,
                (double)s->n_pool_barriers * per);
    const int ranks = dsv_parallel_size();
    if (ranks > 1)
        fprintf(b->table, "        %d ranks: %.3f ms/tok communicating (%.1f sums and gathers, %.1f KB summed, "
                "%.1f KB of logits gathered per token)\n", ranks, s->ns[DSV_PHASE_COMM] * ms, (double)s->n_comm * per,
                (double)s->comm_sum_bytes * per / 1e3, (double)s->comm_gather_bytes * per / 1e3);
    fflush(b->table);
    if (!b->json) return;
    /* The model's name is a path: through the JSON string writer. */
    char *name = dsv_json_quote(b->name, strlen(b->name), NULL);
    printf("{\"model\":%s,\"dtype\":\"%s\",\"weight_types\":\"%s\",\"kernels\":\"%s\",\"threads\":%ld,\"phase\":\"%s\",\"mode\":\"%s\","
           "\"topk\":%d,\"fill\":\"%s\",\"depth\":%d,\"tokens\":%d,\"seconds\":%.6g,\"tok_s\":%.6g,\"ms_per_tok\":%.6g,"
           "\"attn_ms\":%.6g,\"indexer_ms\":%.6g,\"topk_ms\":%.6g,\"attention_ms\":%.6g,\"linear_ms\":%.6g,"
           "\"moe_ms\":%.6g,\"other_ms\":%.6g,\"weight_bytes_per_tok\":%.0f,\"gbs\":%.6g,\"mem_gbs\":%.6g,"
           "\"bound_tok_s\":%.6g,\"kv_bytes_per_tok\":%llu,\"kv_read_bytes_per_tok\":%.0f,\"keys_per_tok\":%.6g,"
           "\"linear_tflops\":%.6g,\"pool_runs_per_tok\":%.6g,\"pool_barriers_per_tok\":%.6g,\"amx_tflops\":",
           name ? name : "null", b->wlabel, b->wmix, dsv_context_kernels(b->ctx[mode == MODE_DENSE]),
           b->threads, phase,
           mode_name(mode),
           mode == MODE_DENSE ? 0 : largest_topk(b), b->fill_random ? "random" : "real",
           depth, n, secs, n / secs, 1e3 * secs * per, attn_ms, s->ns[DSV_PHASE_INDEXER] * ms,
           s->ns[DSV_PHASE_TOPK] * ms, s->ns[DSV_PHASE_ATTN] * ms, s->ns[DSV_PHASE_LINEAR] * ms,
           s->ns[DSV_PHASE_MOE] * ms, s->ns[DSV_PHASE_OTHER] * ms, wbytes, gbs, b->mem_gbs,
           wbytes > 0 ? b->mem_gbs * 1e9 / wbytes : 0, (unsigned long long)s->kv_token_bytes, kv_read, keys, lin_tf,
           (double)s->n_pool_runs * per, (double)s->n_pool_barriers * per);
    if (b->amx_tflops > 0) printf("%.6g", b->amx_tflops);
    else printf("null");
    /* The level's peak, and each unit's (null where the CPU lacks it). */
    static const char *const unit_keys[ROOFLINE_UNITS] = {"avx2_fma", "avx512_fma", "avx512_bf16", "avx512_vnni_int8",
                                                          "amx_bf16"};
    if (pk > 0) printf(",\"peak_tflops\":%.6g,\"pct_peak\":%.6g", pk, 100 * lin_tf / pk);
    else printf(",\"peak_tflops\":null,\"pct_peak\":null");
    printf(",\"peaks\":{");
    for (int u = 0; u < ROOFLINE_UNITS; u++) {
        printf("%s\"%s\":", u ? "," : "", unit_keys[u]);
        if (b->peak[u] > 0) printf("%.6g", b->peak[u]);
        else printf("null");
    }
    printf("}");
    printf(",\"ranks\":%d,\"comm_ms\":%.6g,\"comm_sum_bytes_per_tok\":%.0f,\"peak_rss_mb\":%llu", ranks,
           s->ns[DSV_PHASE_COMM] * ms, (double)s->comm_sum_bytes * per, (unsigned long long)rss);
    if (lat) printf(",\"p50_ms\":%.6g,\"p90_ms\":%.6g,\"p99_ms\":%.6g,\"max_ms\":%.6g}\n", pct[0], pct[1], pct[2], pct[3]);
    else printf("}\n");
    fflush(stdout);
    free(name);
}

/* The peak of the unit a kernel level runs its bf16 and fp8 linears on:
 * AMX tiles, AVX512_BF16's pair dot product, AVX2's fp32 FMA; none for the
 * scalar reference. */
static double level_peak(const struct bench *b, const char *level) {
    if (!strcmp(level, "amx")) return b->peak[ROOFLINE_AMX_BF16];
    if (!strcmp(level, "avx512")) return b->peak[ROOFLINE_AVX512_BF16];
    if (!strcmp(level, "avx2")) return b->peak[ROOFLINE_AVX2_FMA];
    return 0;
}

/* Resets the sequence and brings it to `depth` tokens. */
static int reach(struct bench *b, dsv_context *ctx, int depth, int32_t *t) {
    if (dsv_seq_reset(ctx, 0)) return 1;
    if (b->fill_random) return dsv_seq_fill_random(ctx, 0, depth, b->seed) != DSV_OK;
    make_tokens(t, depth, b->c->vocab_size, b->seed);
    return prefill(b, ctx, t, depth, 0);
}

static int measure(struct bench *b, int mode, int depth) {
    dsv_context *ctx = b->ctx[mode == MODE_DENSE];
    dsv_context_stats s;
    int32_t *t = b->toks;
    if (!b->warm) {
        /* One untimed token maps the weights it reads and warms the caches. */
        int32_t w = 1;
        dsv_batch_entry e = {0, 1, &w, DSV_LOGITS_LAST};
        if (dsv_seq_reset(ctx, 0) || dsv_forward(ctx, &e, 1, b->logits)) return 1;
        b->warm = 1;
    }
    if (reach(b, ctx, depth, t)) return 1;
    if (b->prefill > 0) {
        make_tokens(t, (int)b->prefill, b->c->vocab_size, b->seed + (uint64_t)depth + 1);
        dsv_context_reset_stats(ctx);
        double t0 = dsv_time();
        if (prefill(b, ctx, t, (int)b->prefill, 1)) return 1;
        double secs = dsv_time() - t0;
        dsv_context_get_stats(ctx, &s);
        report(b, "prefill", mode, depth, (int)b->prefill, secs, &s, NULL);
        if (dsv_seq_truncate(ctx, 0, depth)) return 1;
    }
    if (b->decode > 0) {
        int32_t tok = (int32_t)(b->seed % (uint64_t)b->c->vocab_size);
        for (long k = 0; k < b->warmup; k++) { /* untimed, then cut back to the depth */
            dsv_batch_entry e = {0, 1, &tok, DSV_LOGITS_LAST};
            if (dsv_forward(ctx, &e, 1, b->logits)) return 1;
        }
        if (b->warmup > 0 && dsv_seq_truncate(ctx, 0, depth)) return 1;
        dsv_context_reset_stats(ctx);
        double t0 = dsv_time(), tk = t0;
        for (long k = 0; k < b->decode; k++) {
            dsv_batch_entry e = {0, 1, &tok, DSV_LOGITS_LAST};
            if (dsv_forward(ctx, &e, 1, b->logits)) return 1;
            tok = argmax(b->logits, b->c->vocab_size);
            const double t1 = dsv_time();
            b->lat[k] = t1 - tk;
            tk = t1;
        }
        double secs = dsv_time() - t0;
        dsv_context_get_stats(ctx, &s);
        report(b, "decode", mode, depth, (int)b->decode, secs, &s, b->lat);
    }
    return 0;
}

/* Progress of dsv_model_touch on a terminal. */
static void touch_progress(uint64_t done, uint64_t total, void *user) {
    (void)user;
    if (isatty(2)) fprintf(stderr, "\rreading weights into memory: %.2f of %.2f GB", done / 1e9, total / 1e9);
}

static int run(struct bench *b) {
    const char *cmd = b->cmd;
    dsv_model_params mp = dsv_model_default_params();
    mp.act_quant = b->act_quant;
    if (dsv_model_open(&b->m, b->model_dir, &mp)) return cli_fail(cmd, "%s", dsv_errmsg());
    b->c = dsv_model_config(b->m);
    dsv_model_weight_types(b->m, b->wlabel, sizeof b->wlabel, b->wmix, sizeof b->wmix);
    int max_depth = 0;
    for (int i = 0; i < b->n_depths; i++) max_depth = b->depths[i] > max_depth ? b->depths[i] : max_depth;
    long extra = b->prefill > b->decode + b->warmup ? b->prefill : b->decode + b->warmup;
    if ((long)max_depth + extra + 1 > (1L << 28)) return cli_fail(cmd, "depth + tokens too large");
    long n_tok = b->fill_random ? b->prefill : (max_depth > b->prefill ? max_depth : b->prefill);
    b->logits = malloc((size_t)b->c->vocab_size * sizeof *b->logits);
    b->toks = malloc((size_t)(n_tok > 1 ? n_tok : 1) * sizeof *b->toks);
    b->lat = malloc((size_t)(b->decode > 0 ? b->decode : 1) * sizeof *b->lat);
    if (!b->logits || !b->toks || !b->lat) return cli_fail(cmd, "out of memory");

    dsv_context_params cp = dsv_context_default_params();
    cp.n_ctx = max_depth + (int)extra + 1;
    /* With random fill only the timed prefill needs a batch: a smaller one
     * keeps dense mode's per-token position lists small at 128K. */
    cp.n_batch = (int)(b->fill_random ? (b->prefill < b->batch ? (b->prefill > 0 ? b->prefill : 1) : b->batch)
                                      : b->batch);
    cp.n_threads = (int)b->threads;
    cp.topk = (int)b->topk;
    if (b->topk_file && cli_topk_file(cmd, b->topk_file, b->c->n_layers, b->layer_topk)) return 1;
    memcpy(cp.layer_topk, b->layer_topk, sizeof cp.layer_topk);
    for (int k = 0; k < 2; k++) {
        if (!(b->modes & (k ? MODE_DENSE : MODE_SPARSE))) continue;
        cp.attn = k ? DSV_ATTN_DENSE : DSV_ATTN_SPARSE;
        if (dsv_context_open(&b->ctx[k], b->m, &cp)) return cli_fail(cmd, "%s", dsv_errmsg());
        b->threads = dsv_context_get_params(b->ctx[k])->n_threads;
    }

    /* Every weight page read before timing: from disk if the page cache
     * lost it (a model just written or copied may not be in it), and into
     * this process's page tables. The untimed tokens below reach only the
     * experts they route to. */
    if (!b->no_touch) {
        double t0 = dsv_time();
        uint64_t n = dsv_model_touch(b->m, touch_progress, NULL);
        if (isatty(2)) fputc('\n', stderr);
        fprintf(b->table, "weights: %.2f GB read into memory in %.2f s before timing\n", n / 1e9, dsv_time() - t0);
    }
    b->mem_gbs = roofline_read_gbs((int)b->threads, (size_t)b->bw_mib, 5);
    b->amx_tflops = roofline_amx_bf16_tflops((int)b->threads, 3, &b->amx_why);
    for (int u = 0; u < ROOFLINE_UNITS; u++) {
        const char *why;
        b->peak[u] = u == ROOFLINE_AMX_BF16 ? b->amx_tflops : roofline_unit_tflops(u, (int)b->threads, 5, &why);
    }
    for (int k = 0; k < 2; k++) b->level_peak[k] = b->ctx[k] ? level_peak(b, dsv_context_kernels(b->ctx[k])) : 0;
    fprintf(b->table, "model: %s (%s: %s; %d layers, %.2f GB of weights), kernels %s, %ld threads, fill %s\n", b->name,
            b->wlabel, b->wmix, b->c->n_layers, dsv_model_weight_bytes(b->m) / 1e9,
            dsv_context_kernels(b->ctx[b->ctx[0] ? 0 : 1]),
            b->threads, b->fill_random ? "random" : "real");
    fprintf(b->table, "machine: read bandwidth %.2f GB/s (%ld MiB buffer); ", b->mem_gbs, b->bw_mib);
    if (b->amx_tflops > 0) fprintf(b->table, "AMX BF16 peak %.3f TFLOPS\n", b->amx_tflops);
    else fprintf(b->table, "AMX BF16 peak unavailable: %s\n", b->amx_why);
    fprintf(b->table, "compute peaks (TFLOPS; int8: TOPS):");
    static const char *const unit_names[ROOFLINE_UNITS] = {"AVX2 FMA", "AVX-512 FMA", "AVX512_BF16", "AVX512_VNNI int8",
                                                           "AMX BF16"};
    for (int u = 0; u < ROOFLINE_UNITS; u++)
        if (b->peak[u] > 0) fprintf(b->table, " %s %.3f", unit_names[u], b->peak[u]);
    fprintf(b->table, "\n");
    fprintf(b->table, "(times in ms per token; %%bw: weight GB/s over read bandwidth; linTF: linear-layer TFLOPS; pkTF: the "
            "peak of the unit this kernel level's linears run on; %%pk: linTF over pkTF)\n");
    print_header(b);
    for (int i = 0; i < b->n_depths; i++)
        for (int k = 0; k < 2; k++)
            if ((b->modes & (k ? MODE_DENSE : MODE_SPARSE)) && measure(b, k ? MODE_DENSE : MODE_SPARSE, b->depths[i]))
                return cli_fail(cmd, "depth %d: %s", b->depths[i], dsv_errmsg());
    return 0;
}

int cmd_bench(int argc, char **argv) {
    struct bench b = {.cmd = "bench", .prefill = 512, .decode = 32, .warmup = 2, .batch = 512, .bw_mib = 1024, .modes = MODE_SPARSE};
    const char *cmd = b.cmd, *v, *depths = "0,4096";
    int attn_set = 0;
    cli_engine e = cli_engine_init(CLI_E_MODEL | CLI_E_THREADS | CLI_E_BATCH | CLI_E_DENSE | CLI_E_TOPK | CLI_E_TOPK_FILE |
                                   CLI_E_ACT_QUANT);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int r = cli_engine_opt(cmd, &e, argc, argv, &i);
        if (r < 0) return 1;
        if (r) continue;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { fputs(usage, stdout); return 0; }
        else if (!strcmp(a, "--json")) b.json = 1;
        else if (!strcmp(a, "--no-touch")) b.no_touch = 1;
        else if (!strcmp(a, "--depth")) { if (!(depths = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "--prefill")) {
            if (!(v = cli_value(cmd, argc, argv, &i)) || cli_int(cmd, a, v, 0, 1L << 24, &b.prefill)) return 1;
        } else if (!strcmp(a, "--decode")) {
            if (!(v = cli_value(cmd, argc, argv, &i)) || cli_int(cmd, a, v, 0, 1L << 24, &b.decode)) return 1;
        } else if (!strcmp(a, "--warmup")) {
            if (!(v = cli_value(cmd, argc, argv, &i)) || cli_int(cmd, a, v, 0, 1L << 20, &b.warmup)) return 1;
        } else if (!strcmp(a, "--bw-mib")) {
            if (!(v = cli_value(cmd, argc, argv, &i)) || cli_int(cmd, a, v, 1, 1L << 20, &b.bw_mib)) return 1;
        } else if (!strcmp(a, "--seed")) {
            char *end;
            if (!(v = cli_value(cmd, argc, argv, &i))) return 1;
            b.seed = strtoull(v, &end, 10);
            if (!*v || *end || *v == '-') return cli_fail(cmd, "--seed: '%s' is not a non-negative integer", v);
        } else if (!strcmp(a, "--fill")) {
            if (!(v = cli_value(cmd, argc, argv, &i))) return 1;
            if (!strcmp(v, "random")) b.fill_random = 1;
            else if (strcmp(v, "real")) return cli_fail(cmd, "--fill: expected real or random, got '%s'", v);
        } else if (!strcmp(a, "--attn")) {
            if (!(v = cli_value(cmd, argc, argv, &i))) return 1;
            attn_set = 1;
            if (!strcmp(v, "sparse")) b.modes = MODE_SPARSE;
            else if (!strcmp(v, "dense")) b.modes = MODE_DENSE;
            else if (!strcmp(v, "both")) b.modes = MODE_SPARSE | MODE_DENSE;
            else return cli_fail(cmd, "--attn: expected sparse, dense or both, got '%s'", v);
        } else return cli_fail(cmd, "unknown option '%s' (see dsv32 bench --help)", a);
    }
    if (cli_engine_check(cmd, &e)) return 1;
    /* The roofline probes run one thread per member of a team of at most 256. */
    if (e.threads > 256) return cli_fail(cmd, "-t: '%d' is not an integer in [1, 256]", e.threads);
    const int dense = e.dense;
    b.model_dir = e.model;
    b.topk = e.topk;
    b.topk_file = e.topk_file;
    b.act_quant = e.act_quant;
    if (e.threads) b.threads = e.threads;
    if (e.n_batch) b.batch = e.n_batch;
    if (dense && attn_set) return cli_fail(cmd, "--dense and --attn exclude each other");
    if (dense) b.modes = MODE_DENSE;
    if (b.topk && !(b.modes & MODE_SPARSE)) return cli_fail(cmd, "--topk needs sparse attention");
    if (!b.prefill && !b.decode) return cli_fail(cmd, "nothing to measure: --prefill and --decode are both 0");
    if (parse_depths(&b, depths)) {
        free(b.depths);
        return 1;
    }
    const char *slash = strrchr(b.model_dir, '/');
    b.name = slash && slash[1] ? slash + 1 : b.model_dir;
    b.table = b.json ? stderr : stdout;
    int rc = run(&b);
    for (int k = 0; k < 2; k++) dsv_context_close(b.ctx[k]);
    dsv_model_close(b.m);
    free(b.depths);
    free(b.logits);
    free(b.toks);
    free(b.lat);
    return rc;
}
