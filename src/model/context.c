/* context.c: the public calls that change what a forward call computes:
 * model and context open/close, dsv_forward, the dsv_seq_* and
 * dsv_kv_page_* calls that change state, each an entry of ONE table of
 * operations. An entry says what the call acts on, when the leader of a
 * split model sends it to the followers, and how it is checked, packed,
 * unpacked and applied. The leader's calls go through run() and the
 * followers' replay (dsv_replay_op, driven by src/dist/) through the same
 * entries, so an operation added to the table is mirrored, and one that is
 * not in it cannot be sent: the ranks cannot silently drift apart.
 *
 * When to send: operations that the ranks run together (opens, which agree
 * on their outcome; forward calls and random fills, which meet in the
 * collectives or take time worth overlapping) are sent first, after the
 * leader's checks passed; the others are sent only after they succeeded on
 * the leader, so a refused call is never replayed. The replay is exact
 * because the state it acts on is: every rank starts empty and sees the
 * same calls in the same order, so page ids, sequence lengths and the
 * cache contents (computed from replicated values) agree on every rank.
 * The calls that only look (sequence lengths, page tables, reference
 * counts, pool statistics) are here too, at the end. */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "coll.h"
#include "context.h"
#include "base/util.h"

/* ---- the operations -------------------------------------------------------- */

enum { ON_NOTHING, ON_MODEL, ON_CONTEXT }; /* what an op's id names */

typedef struct op_def {
    const char *name;
    int on;
    int send_first;            /* sent before it runs (after check), else after it succeeded */
    int agreed;                /* its outcome is agreed by all ranks (opens): a follower's failure is no fault */
    int timed;                 /* the send counts as the context's communication */
    /* Leader and follower: refuses a call before anything changes (NULL: none). */
    int (*check)(void *obj, dsv_op *op);
    /* Leader, when mirrored: the payload from op->local (NULL: a, b, c and data as given). */
    void (*pack)(void *obj, dsv_op *op);
    /* Follower: op->local from the payload (NULL: none needed). */
    int (*unpack)(dsv_replay *r, void *obj, dsv_op *op);
    /* Does it; an open leaves the new object in op->local. */
    int (*apply)(void *obj, dsv_op *op);
} op_def;

static atomic_int model_ids, context_ids; /* every rank counts the same opens */

static int check_seq(const dsv_context *ctx, int seq) {
    if (!ctx) return dsv_error(DSV_ERR_ARG, "NULL context");
    if (seq < 0 || seq >= ctx->p.n_seq)
        return dsv_error(DSV_ERR_ARG, "sequence %d out of range [0, %d)", seq, ctx->p.n_seq);
    return DSV_OK;
}

static int check_page(const dsv_context *ctx, int32_t page) {
    if (!ctx) return dsv_error(DSV_ERR_ARG, "NULL context");
    if (page < 0 || page >= ctx->kv.n_pages)
        return dsv_error(DSV_ERR_ARG, "KV page %d out of range [0, %lld)", (int)page, (long long)ctx->kv.n_pages);
    if (ctx->kv.refs[page] == 0) return dsv_error(DSV_ERR_ARG, "KV page %d is free", (int)page);
    return DSV_OK;
}

/* Model open: data the directory, a the scale format; local the leader's
 * parameters in, the model out. All ranks agree on the outcome. */
static int model_open_unpack(dsv_replay *r, void *obj, dsv_op *op);
static int model_open_apply(void *obj, dsv_op *op) {
    (void)obj;
    const dsv_model_params *p = op->local;
    dsv_model *m = NULL;
    int st = dsv_model_load(&m, op->data, p); /* agreed by every rank */
    if (st) {
        dsv_model_free(m);
        return st;
    }
    m->par_id = (int)op->c;
    op->local = m;
    return DSV_OK;
}

static int model_close_apply(void *obj, dsv_op *op) {
    (void)op;
    dsv_model_free(obj);
    return DSV_OK;
}

/* Context open: data the parameters as given (each rank resolves its own
 * thread count), c the new context's id; local the context out. */
static int context_open_apply(void *obj, dsv_op *op) {
    dsv_context_params p;
    DSV_ASSERT(op->bytes == sizeof p);
    memcpy(&p, op->data, sizeof p);
    dsv_context *ctx = NULL;
    int st = dsv_ctx_create(&ctx, obj, &p);
    if (st) return st;
    ctx->par_id = (int)op->c;
    op->local = ctx;
    return DSV_OK;
}

static int context_close_apply(void *obj, dsv_op *op) {
    (void)op;
    dsv_ctx_destroy(obj);
    return DSV_OK;
}

/* Forward: local the call ({entries, n, logits}); the payload packs
 * [n][seq, n_tokens, logits], then every entry's tokens. */
typedef struct fwd_call {
    const dsv_batch_entry *en;
    int n;
    float *logits;
} fwd_call;
static int forward_check(void *obj, dsv_op *op) {
    const fwd_call *f = op->local;
    int st = dsv_forward_check(obj, f->en, f->n);
    if (!st) dsv_forward_start(obj);
    return st;
}
static void forward_pack(void *obj, dsv_op *op) {
    dsv_context *ctx = obj;
    const fwd_call *f = op->local;
    int32_t *b = ctx->op_buf;
    size_t k = 0;
    b[k++] = f->n;
    for (int i = 0; i < f->n; i++) {
        b[k++] = f->en[i].seq;
        b[k++] = f->en[i].n_tokens;
        b[k++] = f->en[i].logits;
    }
    for (int i = 0; i < f->n; i++) {
        memcpy(b + k, f->en[i].tokens, (size_t)f->en[i].n_tokens * sizeof *b);
        k += (size_t)f->en[i].n_tokens;
    }
    op->data = b;
    op->bytes = k * sizeof *b;
}
static int forward_unpack(dsv_replay *r, void *obj, dsv_op *op);
static int forward_apply(void *obj, dsv_op *op) {
    const fwd_call *f = op->local;
    return dsv_forward_run(obj, f->en, f->n, f->logits);
}

/* Truncate: a the sequence, b the length. */
static int truncate_apply(void *obj, dsv_op *op) {
    dsv_context *ctx = obj;
    const int seq = (int)op->a;
    int st = check_seq(ctx, seq);
    if (st) return st;
    dsv_seq *s = &ctx->seqs[seq];
    if (op->b < 0 || op->b > s->len)
        return dsv_error(DSV_ERR_ARG, "cannot truncate a sequence of %d tokens to %lld", s->len, (long long)op->b);
    const int n = (int)op->b;
    /* The next append writes into the page holding position n: it must not
     * be a page that other sequences (or prefix-cache references) share. */
    if (n % DSV_PAGE && (st = dsv_kv_unshare(&ctx->kv, s, n))) return st;
    s->len = n;
    dsv_kv_shrink(&ctx->kv, s, n);
    return DSV_OK;
}

/* Attach: a the sequence, b the page count, data the pages. Nothing is
 * computed: a sequence attached to shared pages reads them exactly as if it
 * had written them itself, which is why a prefix cache on top of this API
 * gives the same results as recomputing the prefix. Which pages to share
 * or keep is the caller's policy (the server's prefix cache). */
static int attach_apply(void *obj, dsv_op *op) {
    dsv_context *ctx = obj;
    const int seq = (int)op->a;
    const int32_t *pages = op->data;
    int st = check_seq(ctx, seq);
    if (st) return st;
    dsv_seq *s = &ctx->seqs[seq];
    if (s->len != 0 || s->n_pages != 0)
        return dsv_error(DSV_ERR_ARG, "dsv_seq_attach: sequence %d is not empty (%d tokens)", seq, s->len);
    if (op->b < 0 || op->b > ctx->max_pages || (op->b > 0 && !pages))
        return dsv_error(DSV_ERR_ARG, "dsv_seq_attach: %lld pages for a context of %d", (long long)op->b,
                         ctx->max_pages);
    const int n_pages = (int)op->b;
    for (int i = 0; i < n_pages; i++)
        if ((st = check_page(ctx, pages[i]))) return st;
    for (int i = 0; i < n_pages; i++) {
        dsv_kv_ref(&ctx->kv, pages[i]);
        s->pages[i] = pages[i];
    }
    s->n_pages = n_pages;
    s->len = n_pages * DSV_PAGE;
    return DSV_OK;
}

/* Page ref / unref: a the page. */
static int page_ref_apply(void *obj, dsv_op *op) {
    dsv_context *ctx = obj;
    if (op->a < 0 || op->a > INT32_MAX) return dsv_error(DSV_ERR_ARG, "KV page %lld out of range", (long long)op->a);
    int st = check_page(ctx, (int32_t)op->a);
    if (!st) dsv_kv_ref(&ctx->kv, (int32_t)op->a);
    return st;
}
static int page_unref_apply(void *obj, dsv_op *op) {
    dsv_context *ctx = obj;
    if (op->a < 0 || op->a > INT32_MAX) return dsv_error(DSV_ERR_ARG, "KV page %lld out of range", (long long)op->a);
    int st = check_page(ctx, (int32_t)op->a);
    if (!st) dsv_kv_unref(&ctx->kv, (int32_t)op->a);
    return st;
}

/* Random fill: a the sequence, b the tokens, c the seed. Sent after the
 * checks (which reserve the pages), so the ranks fill at the same time. */
static int fill_check(void *obj, dsv_op *op) {
    if (op->b < 0 || op->b > INT32_MAX) return dsv_error(DSV_ERR_ARG, "dsv_seq_fill_random: %lld tokens", (long long)op->b);
    if (op->a < INT32_MIN || op->a > INT32_MAX) return check_seq(obj, -1);
    return dsv_kv_fill_check(obj, (int)op->a, (int)op->b);
}
static int fill_apply(void *obj, dsv_op *op) {
    dsv_kv_fill(obj, (int)op->a, (int)op->b, op->c);
    return DSV_OK;
}

static const op_def ops[DSV_OP_COUNT] = {
    [DSV_OP_MODEL_OPEN] = {"model open", ON_NOTHING, 1, 1, 0, NULL, NULL, model_open_unpack, model_open_apply},
    [DSV_OP_MODEL_CLOSE] = {"model close", ON_MODEL, 1, 0, 0, NULL, NULL, NULL, model_close_apply},
    [DSV_OP_CONTEXT_OPEN] = {"context open", ON_MODEL, 1, 1, 0, NULL, NULL, NULL, context_open_apply},
    [DSV_OP_CONTEXT_CLOSE] = {"context close", ON_CONTEXT, 1, 0, 0, NULL, NULL, NULL, context_close_apply},
    [DSV_OP_FORWARD] = {"forward", ON_CONTEXT, 1, 0, 1, forward_check, forward_pack, forward_unpack, forward_apply},
    [DSV_OP_TRUNCATE] = {"sequence truncate", ON_CONTEXT, 0, 0, 0, NULL, NULL, NULL, truncate_apply},
    [DSV_OP_ATTACH] = {"sequence attach", ON_CONTEXT, 0, 0, 0, NULL, NULL, NULL, attach_apply},
    [DSV_OP_PAGE_REF] = {"page ref", ON_CONTEXT, 0, 0, 0, NULL, NULL, NULL, page_ref_apply},
    [DSV_OP_PAGE_UNREF] = {"page unref", ON_CONTEXT, 0, 0, 0, NULL, NULL, NULL, page_unref_apply},
    [DSV_OP_FILL] = {"random fill", ON_CONTEXT, 1, 0, 0, fill_check, NULL, NULL, fill_apply},
};

/* ---- the leader (and every process that is alone) -------------------------- */

/* Whether the op goes to followers: this is the leader of a group, and the
 * object it acts on is split across it. */
static int mirrored(const op_def *d, const void *obj) {
    const dsv_coll *cl = dsv_coll_get();
    if (cl->size == 1 || cl->rank != 0) return 0;
    if (d->on == ON_MODEL) return ((const dsv_model *)obj)->sh.size > 1;
    if (d->on == ON_CONTEXT) return ((const dsv_context *)obj)->m->sh.size > 1;
    return 1;
}

static void send(const op_def *d, void *obj, dsv_op *op) {
    if (d->pack) d->pack(obj, op);
    if (d->on == ON_MODEL) op->id = ((dsv_model *)obj)->par_id;
    if (d->on == ON_CONTEXT) op->id = ((dsv_context *)obj)->par_id;
    if (!d->timed) {
        dsv_coll_get()->send(op);
        return;
    }
    dsv_context *ctx = obj;
    const int prev = dsv_phase(ctx, DSV_PHASE_COMM);
    dsv_coll_get()->send(op);
    dsv_phase(ctx, prev);
    ctx->stats.n_comm++;
}

static int run(int code, void *obj, dsv_op *op) {
    const op_def *d = &ops[code];
    op->code = code;
    int st = d->check ? d->check(obj, op) : DSV_OK;
    if (st) return st;
    const int mirror = mirrored(d, obj);
    if (mirror && d->send_first) send(d, obj, op);
    void *local = op->local;
    st = d->apply(obj, op);
    if (mirror && !d->send_first && !st) {
        op->local = local;
        send(d, obj, op);
    }
    return st;
}

int dsv_model_open(dsv_model **out, const char *dir, const dsv_model_params *params) {
    dsv_model_params defaults = dsv_model_default_params();
    if (!params) params = &defaults;
    if (!out || !dir) return dsv_error(DSV_ERR_ARG, "dsv_model_open: NULL argument");
    /* In a group of several, every rank loads its part and all agree on
     * the outcome, so a rank that cannot load fails every rank. */
    dsv_op op = {.a = params->scale_fmt, .b = params->act_quant, .c = (uint64_t)atomic_fetch_add(&model_ids, 1), .data = dir,
                 .bytes = strlen(dir) + 1, .local = (void *)params};
    int st = run(DSV_OP_MODEL_OPEN, NULL, &op);
    if (!st) *out = op.local;
    return st;
}

void dsv_model_close(dsv_model *m) {
    if (!m) return;
    dsv_op op = {0};
    (void)run(DSV_OP_MODEL_CLOSE, m, &op);
}

int dsv_context_open(dsv_context **out, dsv_model *m, const dsv_context_params *params) {
    if (!out || !m) return dsv_error(DSV_ERR_ARG, "dsv_context_open: NULL argument");
    const dsv_context_params given = params ? *params : dsv_context_default_params();
    dsv_op op = {.c = (uint64_t)atomic_fetch_add(&context_ids, 1), .data = &given, .bytes = sizeof given};
    int st = run(DSV_OP_CONTEXT_OPEN, m, &op);
    if (!st) *out = op.local;
    return st;
}

void dsv_context_close(dsv_context *ctx) {
    if (!ctx) return;
    dsv_op op = {0};
    (void)run(DSV_OP_CONTEXT_CLOSE, ctx, &op);
}

const dsv_context_params *dsv_context_get_params(const dsv_context *ctx) { return &ctx->p; }
const char *dsv_context_kernels(const dsv_context *ctx) { return ctx->kern->name; }

int dsv_forward(dsv_context *ctx, const dsv_batch_entry *en, int n, float *logits) {
    if (!ctx) return dsv_error(DSV_ERR_ARG, "dsv_forward: NULL context");
    /* Only the caller's own call lands here (a split model's other ranks
     * replay it without logits through forward_apply). */
    if (!logits && n > 0 && en && dsv_batch_logit_rows(en, n) > 0)
        return dsv_error(DSV_ERR_ARG, "dsv_forward: logits is NULL but %d rows of logits were asked for",
                         dsv_batch_logit_rows(en, n));
    fwd_call f = {en, n, logits};
    dsv_op op = {.local = &f};
    return run(DSV_OP_FORWARD, ctx, &op);
}

int dsv_seq_len(const dsv_context *ctx, int seq) { return check_seq(ctx, seq) ? -1 : ctx->seqs[seq].len; }

int dsv_seq_reset(dsv_context *ctx, int seq) { return dsv_seq_truncate(ctx, seq, 0); }

int dsv_seq_truncate(dsv_context *ctx, int seq, int n) {
    int st = check_seq(ctx, seq);
    if (st) return st;
    dsv_op op = {.a = seq, .b = n};
    return run(DSV_OP_TRUNCATE, ctx, &op);
}

int dsv_seq_attach(dsv_context *ctx, int seq, const int32_t *pages, int n_pages) {
    int st = check_seq(ctx, seq);
    if (st) return st;
    dsv_op op = {.a = seq, .b = n_pages, .data = pages,
                 .bytes = n_pages > 0 && pages ? (size_t)n_pages * sizeof *pages : 0};
    return run(DSV_OP_ATTACH, ctx, &op);
}

int dsv_kv_page_ref(dsv_context *ctx, int32_t page) {
    int st = check_page(ctx, page);
    if (st) return st;
    dsv_op op = {.a = page};
    return run(DSV_OP_PAGE_REF, ctx, &op);
}

int dsv_kv_page_unref(dsv_context *ctx, int32_t page) {
    int st = check_page(ctx, page);
    if (st) return st;
    dsv_op op = {.a = page};
    return run(DSV_OP_PAGE_UNREF, ctx, &op);
}

int dsv_seq_fill_random(dsv_context *ctx, int seq, int n_tokens, uint64_t seed) {
    if (!ctx) return dsv_error(DSV_ERR_ARG, "dsv_seq_fill_random: NULL context");
    dsv_op op = {.a = seq, .b = n_tokens, .c = seed};
    return run(DSV_OP_FILL, ctx, &op);
}

/* ---- queries (they change nothing, so they are not operations) ----------- */

int dsv_seq_pages(const dsv_context *ctx, int seq, const int32_t **pages, int *n_pages) {
    int st = check_seq(ctx, seq);
    if (st) return st;
    if (!pages || !n_pages) return dsv_error(DSV_ERR_ARG, "dsv_seq_pages: NULL output");
    const dsv_seq *s = &ctx->seqs[seq];
    *pages = s->pages;
    *n_pages = (s->len + DSV_PAGE - 1) / DSV_PAGE;
    return DSV_OK;
}

int dsv_kv_page_refs(const dsv_context *ctx, int32_t page) {
    if (!ctx || page < 0 || page >= ctx->kv.n_pages) return -1;
    return ctx->kv.refs[page];
}

void dsv_kv_stats(const dsv_context *ctx, int64_t *used, int64_t *free_pages) {
    if (used) *used = ctx->kv.n_pages - ctx->kv.n_free;
    if (free_pages) *free_pages = ctx->kv.n_free;
}

uint64_t dsv_kv_page_bytes(const dsv_config *cfg) {
    return dsv_kv_page_size(cfg->n_layers, cfg->kv_lora_rank, cfg->qk_rope_head_dim, 128);
}

/* ---- the followers ------------------------------------------------------- */

struct dsv_replay {
    dsv_model **models;
    dsv_context **ctxs;
    int n_models, n_ctxs;
    dsv_model_params mp;       /* a replayed model open's parameters */
    dsv_batch_entry *en;       /* a replayed forward call's entries */
    int n_en;
    fwd_call fwd;
};

static int grow(void **p, int *n, int need, size_t elem) {
    if (need < *n) return DSV_OK;
    int cap = DSV_MAX(need + 1, *n * 2);
    char *q = realloc(*p, (size_t)cap * elem);
    if (!q) return dsv_error(DSV_ERR_NOMEM, "out of memory");
    memset(q + (size_t)*n * elem, 0, (size_t)(cap - *n) * elem);
    *p = q;
    *n = cap;
    return DSV_OK;
}

static int model_open_unpack(dsv_replay *r, void *obj, dsv_op *op) {
    (void)obj;
    if (!op->bytes || ((const char *)op->data)[op->bytes - 1]) return dsv_error(DSV_ERR_ARG, "model open: bad directory");
    r->mp = dsv_model_default_params();
    r->mp.scale_fmt = (int)op->a;
    r->mp.act_quant = op->b == DSV_ACT_QUANT_NONE || op->b == DSV_ACT_QUANT_FP8 ? (int)op->b : -1;
    op->local = &r->mp;
    return DSV_OK;
}

static int forward_unpack(dsv_replay *r, void *obj, dsv_op *op) {
    (void)obj;
    const int32_t *b = op->data;
    const size_t words = op->bytes / sizeof *b;
    if (words < 1 || b[0] < 0 || (size_t)b[0] > (words - 1) / 3) return dsv_error(DSV_ERR_ARG, "forward: bad call");
    const int n = b[0];
    int st = grow((void **)&r->en, &r->n_en, n, sizeof *r->en);
    if (st) return st;
    const int32_t *tok = b + 1 + 3 * (size_t)n, *end = b + words;
    for (int i = 0; i < n; i++) {
        const int len = b[2 + 3 * i];
        if (len < 0 || len > end - tok) return dsv_error(DSV_ERR_ARG, "forward: bad call");
        r->en[i] = (dsv_batch_entry){.seq = b[1 + 3 * i], .n_tokens = len, .tokens = tok, .logits = b[3 + 3 * i]};
        tok += len;
    }
    r->fwd = (fwd_call){r->en, n, NULL};
    op->local = &r->fwd;
    return DSV_OK;
}

dsv_replay *dsv_replay_new(void) { return calloc(1, sizeof(dsv_replay)); }

int dsv_replay_op(dsv_replay *r, dsv_op *op) {
    if (op->code < 0 || op->code >= DSV_OP_COUNT) return dsv_error(DSV_ERR_ARG, "unknown operation %d", (int)op->code);
    const op_def *d = &ops[op->code];
    void *obj = NULL;
    if (d->on == ON_MODEL) {
        if (op->id < 0 || op->id >= r->n_models || !r->models[op->id])
            return dsv_error(DSV_ERR_ARG, "%s: no model %d", d->name, (int)op->id);
        obj = r->models[op->id];
    } else if (d->on == ON_CONTEXT) {
        if (op->id < 0 || op->id >= r->n_ctxs || !r->ctxs[op->id])
            return dsv_error(DSV_ERR_ARG, "%s: no context %d", d->name, (int)op->id);
        obj = r->ctxs[op->id];
    }
    op->local = NULL;
    int st = d->unpack ? d->unpack(r, obj, op) : DSV_OK;
    if (!st && d->check) st = d->check(obj, op);
    if (!st) st = d->apply(obj, op);
    if (d->agreed) {
        /* Opens: the leader reports a failure, which every rank agreed on. */
        if (st) return DSV_OK;
        if (op->c > INT32_MAX) return dsv_error(DSV_ERR_ARG, "%s: id %llu", d->name, (unsigned long long)op->c);
        const int id = (int)op->c;
        if (op->code == DSV_OP_MODEL_OPEN) {
            if ((st = grow((void **)&r->models, &r->n_models, id, sizeof *r->models))) return st;
            r->models[id] = op->local;
        } else {
            if ((st = grow((void **)&r->ctxs, &r->n_ctxs, id, sizeof *r->ctxs))) return st;
            r->ctxs[id] = op->local;
        }
        return DSV_OK;
    }
    if (st) return dsv_error_prefix(st, "%s", d->name);
    if (op->code == DSV_OP_MODEL_CLOSE) r->models[op->id] = NULL;
    if (op->code == DSV_OP_CONTEXT_CLOSE) r->ctxs[op->id] = NULL;
    return DSV_OK;
}

void dsv_replay_free(dsv_replay *r) {
    if (!r) return;
    for (int i = 0; i < r->n_ctxs; i++) dsv_ctx_destroy(r->ctxs[i]);
    for (int i = 0; i < r->n_models; i++) dsv_model_free(r->models[i]);
    free(r->ctxs);
    free(r->models);
    free(r->en);
    free(r);
}
