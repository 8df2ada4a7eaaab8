/* cmd_analyze.c: `dsv32 analyze`, what the lightning indexer keeps of the
 * dense attention on the user's text, and what sparse attention costs.
 *
 * The text is cut into windows as `dsv32 ppl` cuts it (each a fresh
 * sequence: BOS when the tokenizer adds one, then the next tokens, every
 * token predicted once). Each window runs through several contexts in step,
 * chunk by chunk: a dense one with an analysis attached (dsv32_analyze.h:
 * per layer and k, the dense attention mass the indexer's top-k keeps, its
 * recall of the dense top-k, by distance), and one sparse context per k
 * (plus one for --topk-file). The dense logits are the reference: each
 * sparse run gets its mean KL(dense || sparse) per predicted token and its
 * perplexity. All contexts take the absorbed attention path (the
 * reference's decode maths) so that only the selection differs.
 *
 * --suggest KL then searches a per-layer top-k list: starting from the
 * largest k of the list on every layer, each round measures, in one pass,
 * every layer lowered to its next smaller k, and keeps the change with the
 * smallest KL if it is within the bound; it stops when no change is. The
 * list it prints was measured on the text, so it keeps the bound there. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "commands.h"
#include "dsv32.h"
#include "dsv32_analyze.h"
#include "dsv32_tokenizer.h"
#include "dsv32_util.h"

static const char *usage =
    "usage: dsv32 analyze -m MODEL_DIR -f TEXT [options]\n"
    "\n"
    "What the lightning indexer keeps on a text: per layer and top-k, the share of the dense attention\n"
    "mass (all heads) inside the indexer's top-k, its recall of the dense top-k and the same by distance;\n"
    "for the whole model, the KL divergence of sparse from dense next-token distributions and the\n"
    "perplexity at each k and dense.\n"
    "\n"
    "  -m DIR             model directory (config.json, *.safetensors, tokenizer.json)\n"
    "  -f FILE            text to analyse\n"
    "  --ctx N            window size in tokens (default: max_position_embeddings, at most 4096)\n"
    "  --topk LIST        comma-separated k values (default: the model's k, k/2, k/4, k/8)\n"
    "  --topk-file FILE   also measure KL and perplexity with this per-layer top-k list\n"
    "  --suggest KL       search the smallest per-layer top-k list (from the --topk values) whose\n"
    "                     whole-model KL to dense stays within KL on this text, and print it\n"
    "  -o FILE            with --suggest: write the list there (for --topk-file)\n"
    "  --json             one JSON object per line instead of the tables\n"
    "  --plot FILE.svg    plot the attention mass kept against k, one line per layer\n"
    "  -t N               threads (default: all online CPUs)\n"
    "  -h, --help         this help\n";

#define MAX_K 16
#define TEXT_MAX_BYTES ((size_t)1 << 32)

/* One configuration run over the text: dense (the reference) or sparse
 * with a top-k per layer. */
typedef struct run {
    int dense;
    int layer_topk[DSV_MAX_TOPK_LAYERS];
    dsv_context *cx;
    float *logits;  /* [chunk][vocab] */
    double nll, kl; /* sums over the predicted tokens */
} run;

typedef struct an_state {
    const char *cmd;
    dsv_model *m;
    const dsv_config *c;
    const int32_t *ids;
    size_t n;
    int bos, ctx, chunk, threads, progress;
    long scored;     /* tokens predicted in one pass */
    int longest;     /* the longest window */
} an_state;

/* log Σ exp(row) in double. */
static double log_sum_exp(const float *row, int n) {
    float mx = -INFINITY;
    for (int i = 0; i < n; i++) mx = row[i] > mx ? row[i] : mx;
    double s = 0;
    for (int i = 0; i < n; i++) s += exp((double)(row[i] - mx));
    return mx + log(s);
}

/* KL(p || q) of two rows of logits, each normalized here. */
static double kl_rows(const float *p, const float *q, int n) {
    const double lp = log_sum_exp(p, n), lq = log_sum_exp(q, n);
    double kl = 0;
    for (int i = 0; i < n; i++) {
        const double a = p[i] - lp;
        kl += exp(a) * (a - (q[i] - lq));
    }
    return kl > 0 ? kl : 0; /* rounding can leave -1e-17 for equal rows */
}

/* Runs the text through every run in step (runs[0] dense); an, when not
 * NULL, is attached to runs[0]. Sums each run's nll and KL to runs[0]. */
static int text_pass(an_state *s, run *runs, int n_runs, const int *ks, int n_k, dsv_analysis **an,
                     const char *what) {
    const int V = s->c->vocab_size;
    int rc = 0;
    for (int r = 0; r < n_runs; r++) {
        runs[r].cx = NULL;
        runs[r].logits = NULL;
        runs[r].nll = runs[r].kl = 0;
    }
    for (int r = 0; r < n_runs && !rc; r++) {
        dsv_context_params cp = dsv_context_default_params();
        cp.n_ctx = s->ctx;
        cp.n_batch = s->chunk;
        cp.n_threads = s->threads;
        cp.mha_max_keys = 1; /* the absorbed path everywhere, as the analysis takes */
        cp.attn = runs[r].dense ? DSV_ATTN_DENSE : DSV_ATTN_SPARSE;
        if (!runs[r].dense) memcpy(cp.layer_topk, runs[r].layer_topk, sizeof cp.layer_topk);
        if (dsv_context_open(&runs[r].cx, s->m, &cp)) rc = cli_fail(s->cmd, "%s", dsv_errmsg());
        else if (!(runs[r].logits = malloc((size_t)s->chunk * V * sizeof(float)))) rc = cli_fail(s->cmd, "out of memory");
    }
    if (!rc && an && dsv_analysis_open(an, runs[0].cx, ks, n_k, 0)) rc = cli_fail(s->cmd, "%s", dsv_errmsg());
    int32_t *win = malloc((size_t)s->ctx * sizeof *win);
    if (!rc && !win) rc = cli_fail(s->cmd, "out of memory");
    const size_t step = s->bos >= 0 ? (size_t)s->ctx - 1 : (size_t)s->ctx;
    const size_t n_win = s->bos >= 0 ? (s->n + step - 1) / step : (s->n - 1 + step - 2) / (step - 1);
    long scored = 0;
    size_t at = 0;
    for (size_t w = 0; !rc && at < s->n; w++) {
        int k = 0;
        if (s->bos >= 0) win[k++] = s->bos;
        size_t take = s->n - at < (size_t)s->ctx - k ? s->n - at : (size_t)s->ctx - k;
        memcpy(win + k, s->ids + at, take * sizeof *win);
        const int wl = k + (int)take;
        if (wl < 2) break;
        if (wl > s->longest) s->longest = wl;
        for (int r = 0; r < n_runs; r++) dsv_seq_reset(runs[r].cx, 0);
        for (int p = 0; p < wl && !rc; p += s->chunk) {
            const int cl = wl - p < s->chunk ? wl - p : s->chunk;
            dsv_batch_entry e = {.seq = 0, .n_tokens = cl, .tokens = win + p, .logits = DSV_LOGITS_ALL};
            for (int r = 0; r < n_runs && !rc; r++)
                if (dsv_forward(runs[r].cx, &e, 1, runs[r].logits)) rc = cli_fail(s->cmd, "%s", dsv_errmsg());
            for (int j = 0; !rc && j < cl && p + j + 1 < wl; j++) {
                const int target = win[p + j + 1];
                const float *ref = runs[0].logits + (size_t)j * V;
                for (int r = 0; r < n_runs; r++) {
                    const float *row = runs[r].logits + (size_t)j * V;
                    runs[r].nll -= row[target] - log_sum_exp(row, V);
                    if (r) runs[r].kl += kl_rows(ref, row, V);
                }
                scored++;
            }
        }
        /* Without BOS the next window starts at the last scored token. */
        at += s->bos >= 0 ? take : take - 1;
        if (s->bos < 0 && at + 1 >= s->n) at = s->n;
        if (s->progress) fprintf(stderr, "\ranalyze: %s: window %zu/%zu ", what, w + 1, n_win);
    }
    if (s->progress) fprintf(stderr, "\r%*s\r", 60, "");
    s->scored = scored;
    if (!rc && !scored) rc = cli_fail(s->cmd, "the text has fewer than 2 tokens");
    free(win);
    for (int r = 0; r < n_runs; r++) {
        free(runs[r].logits);
        runs[r].logits = NULL;
    }
    return rc;
}

static void close_runs(run *runs, int n_runs) {
    for (int r = 0; r < n_runs; r++) {
        dsv_context_close(runs[r].cx);
        runs[r].cx = NULL;
    }
}

static const int bucket_edges[DSV_ANALYZE_BUCKETS] = DSV_ANALYZE_BUCKET_EDGES;

/* Buckets that windows of `longest` tokens can reach. */
static int n_buckets(int longest) {
    int b = 1;
    while (b < DSV_ANALYZE_BUCKETS && bucket_edges[b] < longest) b++;
    return b;
}

static void bucket_name(char *buf, size_t n, int b) {
    static const char *names[DSV_ANALYZE_BUCKETS] = {"<128", "128-1K", "1K-8K", ">=8K"};
    snprintf(buf, n, "%s", names[b]);
}

static const char *palette[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};

/* Attention mass kept against k (log scale), one line per layer. */
static int write_plot(const char *cmd, const char *path, const char *title, const double *mass, int n_layers,
                      const int *ks, int n_k) {
    FILE *f = fopen(path, "w");
    if (!f) return cli_fail(cmd, "--plot %s: cannot write (%s)", path, strerror(errno));
    const double W = 720, H = 440, x0 = 70, x1 = 600, y0 = 390, y1 = 50;
    int kmin = ks[0], kmax = ks[0];
    for (int i = 1; i < n_k; i++) {
        if (ks[i] < kmin) kmin = ks[i];
        if (ks[i] > kmax) kmax = ks[i];
    }
    const double lmin = log2((double)kmin), lmax = log2((double)kmax), span = lmax > lmin ? lmax - lmin : 1;
#define PX(k) (lmax > lmin ? x0 + (log2((double)(k)) - lmin) / span * (x1 - x0) : (x0 + x1) / 2)
#define PY(v) (y0 - (v) * (y0 - y1))
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
               "font-family=\"sans-serif\" font-size=\"12\">\n", W, H);
    fprintf(f, "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n");
    fprintf(f, "<text x=\"%.0f\" y=\"25\" font-size=\"14\">", x0);
    for (const char *p = title; *p; p++) {
        if (*p == '<') fputs("&lt;", f);
        else if (*p == '>') fputs("&gt;", f);
        else if (*p == '&') fputs("&amp;", f);
        else fputc(*p, f);
    }
    fprintf(f, "</text>\n");
    for (int i = 0; i <= 10; i++) {
        const double v = i / 10.0;
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", x0, PY(v), x1, PY(v));
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%.1f</text>\n", x0 - 6, PY(v) + 4, v);
    }
    for (int i = 0; i < n_k; i++) {
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", PX(ks[i]), y0,
                PX(ks[i]), y1);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%d</text>\n", PX(ks[i]), y0 + 18, ks[i]);
    }
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">top-k (log scale)</text>\n", (x0 + x1) / 2,
            y0 + 40);
    fprintf(f, "<text transform=\"translate(20 %.1f) rotate(-90)\" text-anchor=\"middle\">dense attention mass "
               "kept</text>\n", (y0 + y1) / 2);
    fprintf(f, "<rect x=\"%.0f\" y=\"%.0f\" width=\"%.0f\" height=\"%.0f\" fill=\"none\" stroke=\"black\"/>\n", x0,
            y1, x1 - x0, y0 - y1);
    /* Points in increasing k. */
    int order[MAX_K];
    for (int i = 0; i < n_k; i++) order[i] = i;
    for (int i = 1; i < n_k; i++)
        for (int j = i; j > 0 && ks[order[j]] < ks[order[j - 1]]; j--) {
            int t = order[j];
            order[j] = order[j - 1];
            order[j - 1] = t;
        }
    for (int l = 0; l < n_layers; l++) {
        const char *col = palette[l % 10];
        fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\" points=\"", col);
        for (int i = 0; i < n_k; i++)
            fprintf(f, "%s%.1f,%.1f", i ? " " : "", PX(ks[order[i]]), PY(mass[(size_t)l * n_k + order[i]]));
        fprintf(f, "\"/>\n");
        for (int i = 0; i < n_k; i++)
            fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>\n", PX(ks[order[i]]),
                    PY(mass[(size_t)l * n_k + order[i]]), col);
        if (l < 40) {
            const double ly = y1 + 10 + l * 16;
            fprintf(f, "<line x1=\"%.0f\" y1=\"%.1f\" x2=\"%.0f\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"2\"/>\n",
                    x1 + 15, ly, x1 + 35, ly, col);
            fprintf(f, "<text x=\"%.0f\" y=\"%.1f\">layer %d</text>\n", x1 + 40, ly + 4, l);
        }
    }
    fprintf(f, "</svg>\n");
#undef PX
#undef PY
    if (fclose(f)) return cli_fail(cmd, "--plot %s: write failed", path);
    return 0;
}

/* Parses "128,64,32" into ks (distinct values, each in [1, 2^30]). */
static int parse_ks(const char *cmd, const char *s, int *ks, int *n_k) {
    int n = 0;
    const char *p = s;
    while (*p) {
        char *end;
        errno = 0;
        long x = strtol(p, &end, 10);
        if (errno || end == p || x < 1 || x > (1L << 30) || (*end && *end != ',') || n == MAX_K)
            return cli_fail(cmd, "--topk: expected up to %d comma-separated values in [1, 2^30], got '%s'", MAX_K, s);
        for (int i = 0; i < n; i++)
            if (ks[i] == x) return cli_fail(cmd, "--topk: %ld appears twice", x);
        ks[n++] = (int)x;
        p = *end ? end + 1 : end;
    }
    if (!n) return cli_fail(cmd, "--topk: no values given");
    *n_k = n;
    return 0;
}

static void print_list(FILE *f, const int *v, int n, const char *sep) {
    for (int i = 0; i < n; i++) fprintf(f, "%s%d", i ? sep : "", v[i]);
}

/* --suggest: the greedy search described at the top. ks sorted descending. */
static int suggest(an_state *s, const int *ks, int n_k, double bound, double kl_top, const char *out, int json) {
    const int L = s->c->n_layers;
    int level[DSV_MAX_TOPK_LAYERS] = {0}; /* index into ks, per layer */
    run *runs = calloc((size_t)L + 1, sizeof *runs);
    if (!runs) return cli_fail(s->cmd, "out of memory");
    double kl = kl_top, ppl = NAN;
    int rc = 0, round = 0;
    if (kl_top > bound) {
        free(runs);
        return cli_fail(s->cmd, "--suggest: even top-%d on every layer gives KL %.6g > %g on this text", ks[0],
                        kl_top, bound);
    }
    for (;;) {
        /* One run per layer that can go lower. */
        int who[DSV_MAX_TOPK_LAYERS], n = 0;
        runs[0] = (run){.dense = 1};
        for (int l = 0; l < L; l++) {
            if (level[l] + 1 >= n_k) continue;
            run *r = &runs[1 + n];
            memset(r, 0, sizeof *r);
            for (int j = 0; j < L; j++) r->layer_topk[j] = ks[level[j] + (j == l)];
            who[n++] = l;
        }
        if (!n) break;
        char what[64];
        snprintf(what, sizeof what, "suggest round %d", ++round);
        rc = text_pass(s, runs, n + 1, NULL, 0, NULL, what);
        close_runs(runs, n + 1);
        if (rc) break;
        int best = -1;
        for (int i = 0; i < n; i++) {
            const double k = runs[1 + i].kl / s->scored;
            if (k <= bound && (best < 0 || k < runs[1 + best].kl / s->scored)) best = i;
        }
        if (best < 0) break;
        level[who[best]]++;
        kl = runs[1 + best].kl / s->scored;
        ppl = exp(runs[1 + best].nll / s->scored);
        if (s->progress)
            fprintf(stderr, "analyze: --suggest: layer %d to top-%d (KL %.6g)\n", who[best], ks[level[who[best]]], kl);
    }
    free(runs);
    if (rc) return rc;
    int list[DSV_MAX_TOPK_LAYERS];
    for (int l = 0; l < L; l++) list[l] = ks[level[l]];
    if (json) {
        printf("{\"suggest\": [");
        print_list(stdout, list, L, ", ");
        printf("], \"bound\": %.9g, \"kl\": %.9g", bound, kl);
        if (!isnan(ppl)) printf(", \"ppl\": %.6f", ppl);
        printf("}\n");
    } else {
        printf("\nsuggested per-layer top-k (KL to dense <= %g on this text): ", bound);
        print_list(stdout, list, L, ",");
        printf("\n  KL %.6g", kl);
        if (!isnan(ppl)) printf(", ppl %.4f", ppl);
        printf("\n");
    }
    if (out) {
        FILE *f = fopen(out, "w");
        if (!f) return cli_fail(s->cmd, "-o %s: cannot write (%s)", out, strerror(errno));
        fprintf(f, "# per-layer top-k from dsv32 analyze --suggest %g (KL %.6g on the analysed text)\n", bound, kl);
        print_list(f, list, L, " ");
        fprintf(f, "\n");
        if (fclose(f)) return cli_fail(s->cmd, "-o %s: write failed", out);
    }
    return 0;
}

int cmd_analyze(int argc, char **argv) {
    const char *cmd = "analyze", *model = NULL, *file = NULL, *plot = NULL, *topk_file = NULL, *out = NULL, *v;
    long ctx = 0, threads = 0;
    int json = 0, ks[MAX_K], n_k = 0;
    double bound = -1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { fputs(usage, stdout); return 0; }
        else if (!strcmp(a, "--json")) json = 1;
        else if (!strcmp(a, "-m")) { if (!(model = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "-f")) { if (!(file = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "-o")) { if (!(out = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "--plot")) { if (!(plot = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "--topk-file")) { if (!(topk_file = cli_value(cmd, argc, argv, &i))) return 1; }
        else if (!strcmp(a, "--ctx")) {
            if (!(v = cli_value(cmd, argc, argv, &i)) || cli_int(cmd, a, v, 2, 1L << 20, &ctx)) return 1;
        } else if (!strcmp(a, "--topk")) {
            if (!(v = cli_value(cmd, argc, argv, &i)) || parse_ks(cmd, v, ks, &n_k)) return 1;
        } else if (!strcmp(a, "--suggest")) {
            if (!(v = cli_value(cmd, argc, argv, &i))) return 1;
            char *end;
            errno = 0;
            bound = strtod(v, &end);
            if (errno || end == v || *end || !(bound >= 0) || bound > 1e6)
                return cli_fail(cmd, "--suggest: expected a KL bound in [0, 1e6], got '%s'", v);
        } else if (!strcmp(a, "-t")) {
            if (!(v = cli_value(cmd, argc, argv, &i)) || cli_int(cmd, a, v, 1, 1024, &threads)) return 1;
        } else return cli_fail(cmd, "unknown option '%s' (see dsv32 analyze --help)", a);
    }
    if (!model) return cli_fail(cmd, "missing -m MODEL_DIR (see dsv32 analyze --help)");
    if (!file) return cli_fail(cmd, "missing -f TEXT");
    if (out && bound < 0) return cli_fail(cmd, "-o goes with --suggest");
    if (dsv_parallel_size() > 1) return cli_fail(cmd, "runs in one process (each rank would see only its heads)");

    dsv_model_params mp = dsv_model_default_params();
    dsv_model *m;
    if (dsv_model_open(&m, model, &mp)) {
        /* config.c refuses every architecture but DeepSeek-V3.2's, and a
         * V3.2 config without its index_* fields: both lack the indexer. */
        const char *e = dsv_errmsg();
        if (strstr(e, "architecture") || strstr(e, "'index_"))
            return cli_fail(cmd, "%s: no lightning indexer to analyse (%s)", model, e);
        return cli_fail(cmd, "%s", e);
    }
    const dsv_config *c = dsv_model_config(m);
    if (!n_k) {
        /* The model's k, k/2, k/4, k/8 (distinct, >= 1). */
        for (int d = 1; d <= 8; d *= 2)
            if (c->index_topk / d >= 1 && (!n_k || ks[n_k - 1] != c->index_topk / d)) ks[n_k++] = c->index_topk / d;
    }
    int file_topk[DSV_MAX_TOPK_LAYERS] = {0};
    if (topk_file && cli_topk_file(cmd, topk_file, c->n_layers, file_topk)) { dsv_model_close(m); return 1; }
    if (c->n_layers > DSV_MAX_TOPK_LAYERS) {
        dsv_model_close(m);
        return cli_fail(cmd, "%d layers: at most %d supported", c->n_layers, DSV_MAX_TOPK_LAYERS);
    }

    dsv_tokenizer *tok;
    if (dsv_tokenizer_open(&tok, model)) { dsv_model_close(m); return cli_fail(cmd, "%s", dsv_errmsg()); }
    size_t len = 0;
    char *text = NULL;
    int rc = 0;
    if (dsv_read_file(file, TEXT_MAX_BYTES, &text, &len)) rc = cli_fail(cmd, "%s", dsv_errmsg());
    int32_t *ids = rc ? NULL : malloc((len + 1) * sizeof *ids);
    size_t n = 0;
    if (!rc && !ids) rc = cli_fail(cmd, "out of memory");
    else if (!rc && dsv_tokenize(tok, text, len, ids, len + 1, &n)) rc = cli_fail(cmd, "%s: %s", file, dsv_errmsg());
    const int bos = dsv_tokenizer_add_bos(tok) ? dsv_tokenizer_bos(tok) : -1;
    dsv_tokenizer_close(tok);
    free(text);
    if (!rc && n < 2) rc = cli_fail(cmd, "%s: fewer than 2 tokens", file);
    for (size_t i = 0; i < n && !rc; i++)
        if (ids[i] >= c->vocab_size) rc = cli_fail(cmd, "token id %d exceeds the model's vocabulary (%d)", ids[i], c->vocab_size);
    if (!ctx) ctx = c->max_position_embeddings > 0 && c->max_position_embeddings < 4096 ? c->max_position_embeddings : 4096;

    an_state s = {.cmd = cmd, .m = m, .c = c, .ids = ids, .n = n, .bos = bos, .ctx = (int)ctx,
                  .threads = (int)threads, .progress = isatty(2)};
    /* Chunks of at most 256 tokens, fewer when every run's logits would
     * pass 256 MiB. */
    const int n_runs = 1 + n_k + (topk_file != NULL);
    long chunk = 256;
    while (chunk > 1 && (double)chunk * c->vocab_size * 4.0 * n_runs > 256.0 * 1048576) chunk /= 2;
    s.chunk = (int)(chunk < ctx ? chunk : ctx);

    run *runs = rc ? NULL : calloc((size_t)n_runs, sizeof *runs);
    if (!rc && !runs) rc = cli_fail(cmd, "out of memory");
    dsv_analysis *an = NULL;
    if (!rc) {
        runs[0].dense = 1;
        for (int i = 0; i < n_k; i++)
            for (int l = 0; l < c->n_layers; l++) runs[1 + i].layer_topk[l] = ks[i];
        if (topk_file) memcpy(runs[1 + n_k].layer_topk, file_topk, sizeof file_topk);
        rc = text_pass(&s, runs, n_runs, ks, n_k, &an, "analysis");
    }
    double *mass = rc ? NULL : malloc((size_t)c->n_layers * n_k * sizeof *mass);
    if (!rc && !mass) rc = cli_fail(cmd, "out of memory");
    const int nb = n_buckets(s.longest);
    if (!rc && !json) {
        printf("%s on %s: %ld tokens predicted, windows of up to %d tokens\n", model, file, s.scored, s.longest);
        printf("dense attention mass (all heads) inside the indexer's top-k, per query, mean over queries:\n");
        printf("%-6s %7s %8s %8s %8s %9s", "layer", "k", "mass", "best", "recall", "past k");
        for (int b = 0; b < nb; b++) {
            char name[32];
            bucket_name(name, sizeof name, b);
            printf(" %8s", name);
        }
        printf("\n");
    }
    for (int l = 0; !rc && l < c->n_layers; l++)
        for (int i = 0; i < n_k; i++) {
            dsv_analysis_stats st;
            dsv_analysis_get(an, l, i, &st);
            mass[(size_t)l * n_k + i] = st.mass;
            if (json) {
                printf("{\"layer\": %d, \"k\": %d, \"mass\": %.6f, \"recall\": %.6f, \"mass_by_distance\": [", l, ks[i],
                       st.mass, st.recall);
                for (int b = 0; b < nb; b++) {
                    if (st.bucket_mass[b] > 0) printf("%s%.6f", b ? ", " : "", st.bucket_kept[b] / st.bucket_mass[b]);
                    else printf("%snull", b ? ", " : "");
                }
                printf("], \"dense_by_distance\": [");
                for (int b = 0; b < nb; b++)
                    printf("%s%.6f", b ? ", " : "", st.n_queries ? st.bucket_mass[b] / st.n_queries : 0.0);
                printf("], \"best\": %.6f, \"mass_past_k\": %.6f, \"indexer_kl\": %.6f, \"queries\": %ld, "
                       "\"queries_past_k\": %ld}\n", st.best, st.mass_past, st.indexer_kl, st.n_queries, st.n_past);
            } else {
                printf("%-6d %7d %8.4f %8.4f %8.4f %9.4f", l, ks[i], st.mass, st.best, st.recall, st.mass_past);
                for (int b = 0; b < nb; b++) {
                    if (st.bucket_mass[b] > 0) printf(" %8.4f", st.bucket_kept[b] / st.bucket_mass[b]);
                    else printf(" %8s", "-");
                }
                printf("\n");
            }
        }
    if (!rc && !json) {
        printf("(best: the k positions of most mass; past k: mass over the queries that see more than k positions;\n"
               " by distance: the share of the dense mass at that distance that the top-k keeps)\n");
        printf("indexer KL(target || softmax(scores)) per query, its warm-up loss:");
        for (int l = 0; l < c->n_layers; l++) {
            dsv_analysis_stats st;
            dsv_analysis_get(an, l, 0, &st);
            printf(" L%d %.4f", l, st.indexer_kl);
        }
        printf("\n\n");
        printf("%-10s %12s %12s\n", "top-k", "KL(dense||k)", "ppl");
        printf("%-10s %12s %12.4f\n", "dense", "0", exp(runs[0].nll / s.scored));
        for (int i = 0; i < n_k; i++)
            printf("%-10d %12.6f %12.4f\n", ks[i], runs[1 + i].kl / s.scored, exp(runs[1 + i].nll / s.scored));
        if (topk_file)
            printf("%-10s %12.6f %12.4f\n", "file", runs[1 + n_k].kl / s.scored, exp(runs[1 + n_k].nll / s.scored));
    } else if (!rc) {
        for (int i = 0; i < n_k; i++)
            printf("{\"k\": %d, \"kl\": %.9g, \"ppl\": %.6f}\n", ks[i], runs[1 + i].kl / s.scored,
                   exp(runs[1 + i].nll / s.scored));
        if (topk_file) {
            printf("{\"k\": \"file\", \"topk\": [");
            print_list(stdout, file_topk, c->n_layers, ", ");
            printf("], \"kl\": %.9g, \"ppl\": %.6f}\n", runs[1 + n_k].kl / s.scored, exp(runs[1 + n_k].nll / s.scored));
        }
        printf("{\"k\": \"dense\", \"ppl\": %.6f}\n", exp(runs[0].nll / s.scored));
    }
    fflush(stdout);
    if (!rc && plot) {
        char title[512];
        const char *base = strrchr(file, '/');
        snprintf(title, sizeof title, "dense attention mass kept by the indexer's top-k: %s on %s", model,
                 base ? base + 1 : file);
        rc = write_plot(cmd, plot, title, mass, c->n_layers, ks, n_k);
    }
    if (!rc && bound >= 0) {
        /* Candidates: the --topk values, largest first. */
        int sorted[MAX_K], top = 0;
        memcpy(sorted, ks, sizeof ks);
        for (int i = 1; i < n_k; i++)
            for (int j = i; j > 0 && sorted[j] > sorted[j - 1]; j--) {
                int t = sorted[j];
                sorted[j] = sorted[j - 1];
                sorted[j - 1] = t;
            }
        for (int i = 0; i < n_k; i++)
            if (ks[i] == sorted[0]) top = i;
        dsv_analysis_close(an);
        an = NULL;
        close_runs(runs, n_runs);
        rc = suggest(&s, sorted, n_k, bound, runs[1 + top].kl / s.scored, out, json);
    }
    dsv_analysis_close(an);
    if (runs) close_runs(runs, n_runs);
    free(runs);
    free(mass);
    free(ids);
    dsv_model_close(m);
    return rc;
}
