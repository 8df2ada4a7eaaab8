/* gen.c: generation shared by `dsv32 generate` and `dsv32 chat`. */
#include "gen.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "cli.h"
#include "dsv32_util.h"

void gen_default_opts(gen_opts *o) {
    memset(o, 0, sizeof *o);
    o->n_ctx = 0; /* the model's: min(max_position_embeddings, 4096) */
    o->n_batch = 512;
    o->attn = DSV_ATTN_SPARSE;
    o->n_predict = 200;
    o->scale_fmt = -1;
    o->sp = dsv_sampler_default_params();
    o->sp.temperature = 0.6f;
}

const char gen_opts_help[] =
    "  -m DIR             model directory (config.json, *.safetensors, tokenizer.json)\n"
    "  -n N               most tokens to generate per answer (default 200)\n"
    "  --temp T           temperature, 0 = greedy (default 0.6)\n"
    "  --top-p P          nucleus sampling, 1 = off (default 1)\n"
    "  --top-k K          keep the K most likely tokens, 0 = off (default 0)\n"
    "  --min-p P          drop tokens below P x the top probability, 0 = off (default 0)\n"
    "  --repeat-penalty R penalize tokens already seen, 1 = off (default 1)\n"
    "  --seed S           random seed (default: a different one each run)\n"
    "  --stop STR         stop when STR is generated (repeatable, up to 16)\n"
    "  --ctx N            context size in tokens (default: the model's\n"
    "                     max_position_embeddings, at most 4096)\n"
    "  --batch N          most tokens per forward call, for prefill (default 512)\n"
    "  --dense            attend to every position instead of the indexer's top-k\n"
    "  --topk K           keep K positions per query (default: the model's index_topk)\n"
    "  -t N               threads (default: all online CPUs)\n";

int gen_parse_opt(const char *cmd, gen_opts *o, int argc, char **argv, int *i) {
    const char *a = argv[*i], *v;
    long n;
    char *end;
    /* The engine options: the shared parser, one option at a time. */
    cli_engine e = cli_engine_init(CLI_E_MODEL | CLI_E_THREADS | CLI_E_CTX | CLI_E_BATCH | CLI_E_DENSE | CLI_E_TOPK);
    int r = cli_engine_opt(cmd, &e, argc, argv, i);
    if (r > 0) {
        if (e.n_ctx && e.n_ctx < 16) { cli_fail(cmd, "--ctx: '%d' is not an integer in [16, %d]", e.n_ctx, 1 << 24); return -1; }
        if (e.model) o->model = e.model;
        if (e.threads) o->threads = e.threads;
        if (e.n_ctx) o->n_ctx = e.n_ctx;
        if (e.n_batch) o->n_batch = e.n_batch;
        if (e.dense) o->attn = DSV_ATTN_DENSE;
        if (e.topk) o->topk = e.topk;
    }
    if (r) return r;
    if (!strcmp(a, "--stop")) {
        if (!(v = cli_value(cmd, argc, argv, i))) return -1;
        if (o->n_stops == GEN_MAX_STOPS) { cli_fail(cmd, "at most %d --stop strings", GEN_MAX_STOPS); return -1; }
        o->stops[o->n_stops++] = v;
        return 1;
    }
    struct { const char *name; int *dst; long lo, hi; } ints[] = {
        {"-n", &o->n_predict, 0, 1 << 24}, {"--top-k", &o->sp.top_k, 0, 1 << 30}};
    for (size_t k = 0; k < sizeof ints / sizeof ints[0]; k++)
        if (!strcmp(a, ints[k].name)) {
            if (!(v = cli_value(cmd, argc, argv, i)) || cli_int(cmd, a, v, ints[k].lo, ints[k].hi, &n)) return -1;
            *ints[k].dst = (int)n;
            return 1;
        }
    struct { const char *name; float *dst; float lo, hi; } fls[] = {
        {"--temp", &o->sp.temperature, 0, 100}, {"--top-p", &o->sp.top_p, 0, 1}, {"--min-p", &o->sp.min_p, 0, 1},
        {"--repeat-penalty", &o->sp.repetition_penalty, 0.01f, 100}};
    for (size_t k = 0; k < sizeof fls / sizeof fls[0]; k++)
        if (!strcmp(a, fls[k].name)) {
            if (!(v = cli_value(cmd, argc, argv, i))) return -1;
            double d = strtod(v, &end);
            if (*end || end == v || !(d >= fls[k].lo && d <= fls[k].hi)) {
                cli_fail(cmd, "%s: '%s' is not a number in [%g, %g]", a, v, fls[k].lo, fls[k].hi);
                return -1;
            }
            *fls[k].dst = (float)d;
            return 1;
        }
    if (!strcmp(a, "--seed")) {
        if (!(v = cli_value(cmd, argc, argv, i))) return -1;
        unsigned long long s = strtoull(v, &end, 10);
        if (*end || end == v || *v == '-') { cli_fail(cmd, "--seed: '%s' is not a non-negative integer", v); return -1; }
        o->sp.seed = (uint64_t)s;
        return 1;
    }
    return 0;
}

static void progress(uint64_t done, uint64_t total, void *user) {
    const char *model = user;
    fprintf(stderr, "\rloading %s: %3d%% (%.2f of %.2f GB)", model, total ? (int)(100 * done / total) : 100,
            done / 1e9, total / 1e9);
    if (done >= total) fputc('\n', stderr);
}

int gen_open(gen *g, const char *cmd, const gen_opts *o, int n_seq) {
    memset(g, 0, sizeof *g);
    g->cmd = cmd;
    g->o = *o;
    g->n_seq = n_seq;
    if (!o->model) return cli_fail(cmd, "missing -m MODEL_DIR (see dsv32 %s --help)", cmd);
    dsv_model_params mp = dsv_model_default_params();
    mp.scale_fmt = o->scale_fmt;
    if (isatty(2)) { mp.progress = progress; mp.progress_user = (void *)o->model; }
    if (dsv_model_open(&g->m, o->model, &mp)) return cli_fail(cmd, "%s", dsv_errmsg());
    g->c = dsv_model_config(g->m);
    if (dsv_tokenizer_open(&g->tok, o->model)) {
        cli_fail(cmd, "%s", dsv_errmsg());
        gen_close(g);
        return 1;
    }
    dsv_context_params cp = dsv_context_default_params();
    cp.n_ctx = o->n_ctx;
    cp.n_seq = n_seq;
    cp.n_batch = o->n_batch;
    cp.n_threads = o->threads;
    cp.attn = o->attn;
    cp.topk = o->topk;
    g->logits = malloc((size_t)n_seq * g->c->vocab_size * sizeof *g->logits);
    if (!g->logits || dsv_context_open(&g->ctx, g->m, &cp)) {
        cli_fail(cmd, "%s", g->logits ? dsv_errmsg() : "out of memory");
        gen_close(g);
        return 1;
    }
    g->o.n_batch = dsv_context_get_params(g->ctx)->n_batch;
    g->o.n_ctx = dsv_context_get_params(g->ctx)->n_ctx;
    int32_t eos = dsv_tokenizer_eos(g->tok);
    g->eos = eos >= 0 ? eos : g->c->eos_id;
    return 0;
}

void gen_close(gen *g) {
    dsv_context_close(g->ctx);
    dsv_tokenizer_close(g->tok);
    dsv_model_close(g->m);
    free(g->logits);
    memset(g, 0, sizeof *g);
}

int gen_feed(gen *g, int n, const int *seqs, int32_t *const *toks, const int *n_toks, int prefill) {
    const int V = g->c->vocab_size;
    int done[256] = {0};
    dsv_batch_entry en[256];
    float *out = malloc((size_t)n * V * sizeof *out);
    if (n > 256 || !out) { free(out); return cli_fail(g->cmd, "too many sequences"); }
    double t0 = dsv_time();
    long fed = 0;
    for (;;) {
        int ne = 0, budget = g->o.n_batch, idx[256];
        for (int i = 0; i < n && budget > 0; i++) {
            int left = n_toks[i] - done[i];
            if (left <= 0) continue;
            int take = left < budget ? left : budget;
            en[ne] = (dsv_batch_entry){seqs[i], take, toks[i] + done[i],
                                       take == left ? DSV_LOGITS_LAST : DSV_LOGITS_NONE};
            idx[ne++] = i;
            budget -= take;
        }
        if (!ne) break;
        if (dsv_forward(g->ctx, en, ne, out)) { free(out); return cli_fail(g->cmd, "%s", dsv_errmsg()); }
        for (int k = 0, row = 0; k < ne; k++) {
            int i = idx[k];
            done[i] += en[k].n_tokens;
            fed += en[k].n_tokens;
            if (en[k].logits == DSV_LOGITS_LAST) memcpy(g->logits + (size_t)seqs[i] * V, out + (size_t)row++ * V, (size_t)V * sizeof *out);
        }
    }
    free(out);
    double dt = dsv_time() - t0;
    if (prefill) { g->prefill_s += dt; g->prefill_tok += fed; }
    else { g->decode_s += dt; g->decode_tok += fed; }
    return 0;
}

int gen_encode(gen *g, const char *text, int32_t **ids, int *n) {
    size_t len = strlen(text), got;
    *ids = malloc((len + 2) * sizeof **ids);
    if (!*ids) return cli_fail(g->cmd, "out of memory");
    if (dsv_tokenize(g->tok, text, len, *ids, len + 1, &got)) {
        free(*ids);
        return cli_fail(g->cmd, "%s", dsv_errmsg());
    }
    *n = (int)got;
    return 0;
}

int gen_stream_init(gen *g, gen_stream *s, const int32_t *prompt, int n_prompt) {
    memset(s, 0, sizeof *s);
    if (dsv_sampler_init(&s->smp, g->c->vocab_size, &g->o.sp) ||
        dsv_stop_init(&s->stop, g->o.stops, g->o.n_stops, NULL, 0) ||
        !(s->piece = malloc(dsv_detok_bound(g->tok)))) {
        gen_stream_free(s);
        return cli_fail(g->cmd, "%s", dsv_errmsg());
    }
    dsv_sampler_accept_prompt(s->smp, prompt, (size_t)n_prompt);
    dsv_detok_init(&s->dt, g->tok, 0);
    return 0;
}

void gen_stream_free(gen_stream *s) {
    dsv_sampler_free(s->smp);
    dsv_stop_free(s->stop);
    free(s->piece);
    memset(s, 0, sizeof *s);
}

static void finish(gen *g, gen_stream *s, const char *why, void (*emit)(void *, const char *, size_t), void *user) {
    size_t len;
    const char *e;
    s->done = 1;
    s->why = why;
    if (!dsv_detok_flush(&s->dt, s->piece, dsv_detok_bound(g->tok), &len) && len && !dsv_stop_matched(s->stop)) {
        if (dsv_stop_feed(s->stop, s->piece, len, &e, &len) >= 0 && len) emit(user, e, len);
    }
    if (!dsv_stop_matched(s->stop)) {
        dsv_stop_flush(s->stop, &e, &len);
        if (len) emit(user, e, len);
    }
}

int32_t gen_stream_next(gen *g, gen_stream *s, int seq, void (*emit)(void *, const char *, size_t), void *user) {
    int32_t id;
    if (s->done) return -1;
    if (s->n_gen >= g->o.n_predict) { finish(g, s, "length", emit, user); return -1; }
    if (dsv_sampler_sample(s->smp, g->logits + (size_t)seq * g->c->vocab_size, &id)) {
        cli_fail(g->cmd, "%s", dsv_errmsg());
        finish(g, s, "error", emit, user);
        return -1;
    }
    dsv_sampler_accept(s->smp, id);
    s->n_gen++;
    if (id == g->eos) { finish(g, s, "eos", emit, user); return -1; }
    size_t len = 0;
    const char *e;
    /* Ids past the tokenizer's vocabulary (padding rows of the embedding)
     * have no text. */
    if (dsv_detok_push(&s->dt, id, s->piece, dsv_detok_bound(g->tok), &len) == DSV_OK && len) {
        int matched = dsv_stop_feed(s->stop, s->piece, len, &e, &len);
        if (len) emit(user, e, len);
        if (matched > 0) { s->done = 1; s->why = "stop"; return -1; }
    }
    return id;
}

int gen_decode(gen *g, int n, gen_stream *st, void (*emit)(void *, const char *, size_t), void **users) {
    int32_t *next = malloc((size_t)n * sizeof *next), **one = malloc((size_t)n * sizeof *one);
    int *seqs = malloc((size_t)n * sizeof *seqs), *ones = malloc((size_t)n * sizeof *ones), rc = 0;
    if (!next || !one || !seqs || !ones) rc = cli_fail(g->cmd, "out of memory");
    while (!rc) {
        int live = 0;
        for (int i = 0; i < n; i++) {
            seqs[i] = i;
            next[i] = gen_stream_next(g, &st[i], i, emit, users ? users[i] : NULL);
            one[i] = &next[i];
            ones[i] = next[i] >= 0;
            live += ones[i];
        }
        if (!live) break;
        rc = gen_feed(g, n, seqs, one, ones, 0);
    }
    free(next);
    free(one);
    free(seqs);
    free(ones);
    return rc;
}

void gen_report(const gen *g) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    fprintf(stderr, "\nprompt tokens: %ld, prefill: %.1f tok/s, decode: %.1f tok/s (%ld tokens), peak memory: %.0f MiB, "
            "kernels: %s\n",
            g->prefill_tok, g->prefill_s > 0 ? g->prefill_tok / g->prefill_s : 0.0,
            g->decode_s > 0 ? g->decode_tok / g->decode_s : 0.0, g->decode_tok, ru.ru_maxrss / 1024.0,
            dsv_kernels_name());
}
