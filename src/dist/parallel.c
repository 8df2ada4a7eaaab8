/* parallel.c: a model split across processes: the forward pass's sums and
 * gathers between ranks, and the leader's calls replayed by the followers
 * (see parallel.h for the split, comm.h for the transport).
 *
 * Leader and followers. Rank 0 runs the program; each model and context
 * call of it that changes what a forward call computes is sent to the other
 * ranks as a fixed-size command (plus a payload when it does not fit) and
 * replayed there by the same public function. Opens and forward calls are
 * sent before the leader runs them (the ranks then run them together,
 * meeting in the collectives inside); sequence and page operations after
 * they succeeded on the leader, so a refused call is never replayed. The
 * replay is exact because the state it acts on is: every rank starts empty
 * and sees the same calls in the same order, so page ids, sequence lengths
 * and the cache contents (all computed from replicated values: the latent
 * from wkv_a, the indexer keys) agree on every rank.
 *
 * Opens are collective: each rank loads its part, then all agree on the
 * outcome (the first failing rank's status and message win), so a missing
 * shard on one machine fails every rank at once with one clear message
 * instead of leaving the others waiting. */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "comm.h"
#include "model/context.h"
#include "parallel.h"
#include "base/util.h"

/* What a rank cannot recover from without leaving the others waiting ends
 * the whole job. */
static _Noreturn void die(const char *why) {
    fprintf(stderr, "dsv32: rank %d of %d: %s\n", dsv_comm_rank(), dsv_comm_size(), why);
    dsv_comm_finalize(1, 1);
    abort();
}

/* ---- the forward pass ---------------------------------------------------- */

static void begin_comm(dsv_context *ctx, int *prev) { *prev = dsv_phase(ctx, DSV_PHASE_COMM); }
static void end_comm(dsv_context *ctx, int prev) {
    dsv_phase(ctx, prev);
    ctx->stats.n_comm++;
}

void dsv_par_sum_f32(dsv_context *ctx, float *x, size_t n) {
    if (ctx->m->sh.size == 1) return;
    int prev;
    begin_comm(ctx, &prev);
    dsv_comm_sum_f32(x, n, ctx->par_scratch);
    ctx->stats.comm_sum_bytes += n * sizeof(float);
    end_comm(ctx, prev);
}

void dsv_par_sum_bf16(dsv_context *ctx, dsv_bf16 *x, int rows) {
    if (ctx->m->sh.size == 1) return;
    const size_t n = (size_t)rows * (size_t)ctx->c->dim;
    int prev;
    begin_comm(ctx, &prev);
    /* model.py RowParallelLinear: y = y.float(); all_reduce(y); y.type_as(x). */
    for (size_t i = 0; i < n; i++) ctx->par_f[i] = dsv_bf16_to_f32(x[i]);
    dsv_comm_sum_f32(ctx->par_f, n, ctx->par_scratch);
    for (size_t i = 0; i < n; i++) x[i] = dsv_f32_to_bf16(ctx->par_f[i]);
    ctx->stats.comm_sum_bytes += n * sizeof(float);
    end_comm(ctx, prev);
}

void dsv_lin_reduce(dsv_context *ctx, dsv_bf16 *y, int ldy, const dsv_bf16 *x, const dsv_linear *w, int m) {
    DSV_ASSERT(ldy == ctx->c->dim);
    if (w->n_in > 0) dsv_lin(ctx, y, ldy, x, w, m);
    else memset(y, 0, (size_t)m * (size_t)ldy * sizeof *y); /* this rank holds none of its columns */
    dsv_par_sum_bf16(ctx, y, m);
}

/* Rows of logits computed and gathered at a time (par_logits' height). */
#define DSV_PAR_HEAD_ROWS 16

void dsv_par_head(dsv_context *ctx, float *logits, int rows) {
    const dsv_model *m = ctx->m;
    if (m->sh.size == 1) {
        dsv_lin_f32(ctx, logits, ctx->xf, &m->head, rows);
        return;
    }
    const int D = ctx->c->dim, V = ctx->c->vocab_size, size = m->sh.size;
    for (int r0 = 0; r0 < rows; r0 += DSV_PAR_HEAD_ROWS) {
        const int n = DSV_MIN(DSV_PAR_HEAD_ROWS, rows - r0);
        if (m->head.n_out > 0) dsv_lin_f32(ctx, ctx->par_logits, ctx->xf + (size_t)r0 * D, &m->head, n);
        int prev;
        begin_comm(ctx, &prev);
        dsv_comm_gather_cols(logits ? logits + (size_t)r0 * V : NULL, V, ctx->par_logits, n, m->par_vocab,
                             m->par_vocab + size);
        ctx->stats.comm_gather_bytes += (uint64_t)n * (uint64_t)m->head.n_out * sizeof(float);
        end_comm(ctx, prev);
    }
}

/* Sizes of the buffers above, for dsv_context_open's layout (forward.c). */
size_t dsv_par_sum_floats(const dsv_context *ctx) {
    return ctx->m->sh.size > 1 ? (size_t)ctx->p.n_batch * (size_t)ctx->c->dim : 0;
}
size_t dsv_par_scratch_floats(const dsv_context *ctx) {
    return dsv_comm_sum_scratch(dsv_par_sum_floats(ctx), ctx->m->sh.size);
}
size_t dsv_par_logit_floats(const dsv_context *ctx) {
    return ctx->m->sh.size > 1 ? (size_t)DSV_PAR_HEAD_ROWS * (size_t)ctx->m->head.n_out : 0;
}
size_t dsv_par_buf_ints(const dsv_context *ctx) {
    return ctx->m->sh.size > 1 ? 1 + 3 * (size_t)ctx->p.n_seq + (size_t)ctx->p.n_batch : 0;
}

/* ---- agreement ----------------------------------------------------------- */

int dsv_par_agree(int status) {
    const int size = dsv_comm_size();
    if (size == 1) return status;
    int *all = malloc((size_t)size * sizeof *all);
    if (!all) die("out of memory");
    dsv_comm_allgather_int(status, all);
    int bad = -1;
    for (int r = 0; r < size && bad < 0; r++)
        if (all[r]) bad = r;
    int st = bad < 0 ? DSV_OK : all[bad];
    free(all);
    if (bad < 0) return DSV_OK;
    char msg[1024] = "";
    if (dsv_comm_rank() == bad) snprintf(msg, sizeof msg, "%s", dsv_errmsg());
    dsv_comm_bcast(bad, msg, sizeof msg);
    msg[sizeof msg - 1] = 0;
    return dsv_error(st, "rank %d of %d: %s", bad, size, msg);
}

int dsv_par_agree_kernels(void) {
    const int size = dsv_comm_size();
    if (size == 1) return DSV_OK;
    const char *mine = dsv_kernels_name();
    int lv = 0;
    for (int i = 0; dsv_kernels_level(i); i++)
        if (!strcmp(mine, dsv_kernels_level(i))) lv = i;
    int *all = malloc((size_t)size * sizeof *all);
    if (!all) die("out of memory");
    dsv_comm_allgather_int(lv, all);
    int lo = lv;
    for (int r = 0; r < size; r++) lo = DSV_MIN(lo, all[r]);
    free(all);
    /* Every rank has the level it reported, so forcing one no higher than
     * its own cannot fail. */
    return lo < lv ? dsv_kernels_force(dsv_kernels_level(lo)) : DSV_OK;
}

/* ---- commands -------------------------------------------------------------- */

enum {
    OP_QUIT = 100, OP_MODEL_OPEN, OP_MODEL_CLOSE, OP_CTX_OPEN, OP_CTX_CLOSE, OP_FORWARD,
};

typedef struct par_cmd {
    int32_t op, id;            /* what, and the model or context it is for */
    int64_t a, b;
    uint64_t c;
    uint32_t bytes;            /* payload: in data when it fits, else broadcast next */
    uint32_t pad;
    uint8_t data[DSV_COMM_CMD - 40];
} par_cmd;
_Static_assert(sizeof(par_cmd) == DSV_COMM_CMD, "a command is DSV_COMM_CMD bytes");

/* Ids of the objects opened so far (every rank counts the same opens). */
static atomic_int model_ids, context_ids;

int dsv_par_leading(void) { return dsv_comm_size() > 1 && dsv_comm_rank() == 0; }
int dsv_par_next_model_id(void) { return atomic_fetch_add(&model_ids, 1); }
int dsv_par_next_context_id(void) { return atomic_fetch_add(&context_ids, 1); }

static void send(par_cmd *cmd, const void *payload, size_t bytes) {
    DSV_ASSERT(bytes <= UINT32_MAX);
    cmd->bytes = (uint32_t)bytes;
    if (bytes <= sizeof cmd->data && bytes) memcpy(cmd->data, payload, bytes);
    dsv_comm_cmd_send(cmd);
    if (bytes > sizeof cmd->data) dsv_comm_bcast(0, (void *)payload, bytes);
}

/* The follower's side of send(): the payload into dst (cmd->bytes bytes). */
static void receive_payload(const par_cmd *cmd, void *dst) {
    if (cmd->bytes <= sizeof cmd->data) memcpy(dst, cmd->data, cmd->bytes);
    else dsv_comm_bcast(0, dst, cmd->bytes);
}

void dsv_par_send_model_open(const char *dir, const dsv_model_params *p, int id) {
    if (!dsv_par_leading()) return;
    par_cmd cmd = {.op = OP_MODEL_OPEN, .id = id, .a = p->scale_fmt};
    send(&cmd, dir, strlen(dir) + 1);
}

void dsv_par_send_model_close(const dsv_model *m) {
    if (!dsv_par_leading() || m->sh.size == 1) return;
    par_cmd cmd = {.op = OP_MODEL_CLOSE, .id = m->par_id};
    send(&cmd, NULL, 0);
}

void dsv_par_send_context_open(const dsv_model *m, int id, const dsv_context_params *p) {
    if (!dsv_par_leading() || m->sh.size == 1) return;
    par_cmd cmd = {.op = OP_CTX_OPEN, .id = id, .a = m->par_id};
    send(&cmd, p, sizeof *p);
}

static int mirrored(const dsv_context *ctx) { return ctx->m->sh.size > 1 && dsv_comm_rank() == 0; }

void dsv_par_send_context_close(const dsv_context *ctx) {
    if (!mirrored(ctx)) return;
    par_cmd cmd = {.op = OP_CTX_CLOSE, .id = ctx->par_id};
    send(&cmd, NULL, 0);
}

void dsv_par_send_forward(dsv_context *ctx, const dsv_batch_entry *en, int n) {
    if (!mirrored(ctx)) return;
    /* [n][seq, n_tokens, logits], then every entry's tokens. */
    int32_t *b = ctx->par_buf;
    size_t k = 0;
    b[k++] = n;
    for (int i = 0; i < n; i++) {
        b[k++] = en[i].seq;
        b[k++] = en[i].n_tokens;
        b[k++] = en[i].logits;
    }
    for (int i = 0; i < n; i++) {
        memcpy(b + k, en[i].tokens, (size_t)en[i].n_tokens * sizeof *b);
        k += (size_t)en[i].n_tokens;
    }
    par_cmd cmd = {.op = OP_FORWARD, .id = ctx->par_id};
    int prev;
    begin_comm(ctx, &prev);
    send(&cmd, b, k * sizeof *b);
    end_comm(ctx, prev);
}

void dsv_par_send_op(dsv_context *ctx, int op, int64_t a, int64_t b, uint64_t c, const int32_t *data, int n) {
    if (!mirrored(ctx)) return;
    par_cmd cmd = {.op = op, .id = ctx->par_id, .a = a, .b = b, .c = c};
    send(&cmd, data, (size_t)n * sizeof *data);
}

/* ---- the follower ---------------------------------------------------------- */

typedef struct follower {
    dsv_model **models;
    dsv_context **ctxs;
    int n_models, n_ctxs;
    void *buf;                 /* payloads */
    size_t buf_bytes;
} follower;

static void *grow(void *p, int *n, int need, size_t elem) {
    if (need < *n) return p;
    int cap = DSV_MAX(need + 1, *n * 2);
    char *q = realloc(p, (size_t)cap * elem);
    if (!q) die("out of memory");
    memset(q + (size_t)*n * elem, 0, (size_t)(cap - *n) * elem);
    *n = cap;
    return q;
}

static void *payload(follower *f, const par_cmd *cmd) {
    if (cmd->bytes + 1 > f->buf_bytes) {
        free(f->buf);
        f->buf_bytes = (size_t)cmd->bytes + 1;
        if (!(f->buf = malloc(f->buf_bytes))) die("out of memory");
    }
    receive_payload(cmd, f->buf);
    ((char *)f->buf)[cmd->bytes] = 0;
    return f->buf;
}

static dsv_context *ctx_of(follower *f, const par_cmd *cmd) {
    DSV_ASSERT(cmd->id >= 0 && cmd->id < f->n_ctxs && f->ctxs[cmd->id]);
    return f->ctxs[cmd->id];
}

/* A replayed call must succeed: the leader's did, on the same state. */
static void replayed(int st) {
    if (st) {
        char why[1200];
        snprintf(why, sizeof why, "a replayed call failed where the leader's succeeded: %s", dsv_errmsg());
        die(why);
    }
}

static void replay_forward(follower *f, const par_cmd *cmd) {
    dsv_context *ctx = ctx_of(f, cmd);
    int32_t *b = payload(f, cmd);
    const int n = b[0];
    dsv_batch_entry *en = malloc((size_t)(n > 0 ? n : 1) * sizeof *en);
    if (!en) die("out of memory");
    const int32_t *tok = b + 1 + 3 * (size_t)n;
    for (int i = 0; i < n; i++) {
        en[i] = (dsv_batch_entry){.seq = b[1 + 3 * i], .n_tokens = b[2 + 3 * i], .tokens = tok, .logits = b[3 + 3 * i]};
        tok += en[i].n_tokens;
    }
    replayed(dsv_forward(ctx, en, n, NULL));
    free(en);
}

int dsv_parallel_follow(void) {
    if (dsv_comm_size() == 1 || dsv_comm_rank() == 0) return 0;
    follower f = {0};
    par_cmd cmd;
    for (;;) {
        dsv_comm_cmd_recv(&cmd);
        switch (cmd.op) {
        case OP_MODEL_OPEN: {
            dsv_model_params p = dsv_model_default_params();
            p.scale_fmt = (int)cmd.a;
            const char *dir = payload(&f, &cmd);
            f.models = grow(f.models, &f.n_models, cmd.id, sizeof *f.models);
            dsv_model *m = NULL;
            if (dsv_model_open(&m, dir, &p) == DSV_OK) f.models[cmd.id] = m; /* failures: the leader reports */
            break;
        }
        case OP_MODEL_CLOSE:
            DSV_ASSERT(cmd.id >= 0 && cmd.id < f.n_models);
            dsv_model_close(f.models[cmd.id]);
            f.models[cmd.id] = NULL;
            break;
        case OP_CTX_OPEN: {
            dsv_context_params p;
            DSV_ASSERT(cmd.bytes == sizeof p && cmd.a >= 0 && cmd.a < f.n_models && f.models[cmd.a]);
            memcpy(&p, payload(&f, &cmd), sizeof p);
            f.ctxs = grow(f.ctxs, &f.n_ctxs, cmd.id, sizeof *f.ctxs);
            dsv_context *c = NULL;
            if (dsv_context_open(&c, f.models[cmd.a], &p) == DSV_OK) f.ctxs[cmd.id] = c;
            break;
        }
        case OP_CTX_CLOSE:
            dsv_context_close(ctx_of(&f, &cmd));
            f.ctxs[cmd.id] = NULL;
            break;
        case OP_FORWARD:
            replay_forward(&f, &cmd);
            break;
        case DSV_PAR_TRUNCATE:
            replayed(dsv_seq_truncate(ctx_of(&f, &cmd), (int)cmd.a, (int)cmd.b));
            break;
        case DSV_PAR_ATTACH: {
            dsv_context *ctx = ctx_of(&f, &cmd);
            replayed(dsv_seq_attach(ctx, (int)cmd.a, payload(&f, &cmd), (int)cmd.b));
            break;
        }
        case DSV_PAR_PAGE_REF:
            replayed(dsv_kv_page_ref(ctx_of(&f, &cmd), (int32_t)cmd.a));
            break;
        case DSV_PAR_PAGE_UNREF:
            replayed(dsv_kv_page_unref(ctx_of(&f, &cmd), (int32_t)cmd.a));
            break;
        case DSV_PAR_FILL:
            replayed(dsv_seq_fill_random(ctx_of(&f, &cmd), (int)cmd.a, (int)cmd.b, cmd.c));
            break;
        case OP_QUIT:
            for (int i = 0; i < f.n_ctxs; i++) dsv_context_close(f.ctxs[i]);
            for (int i = 0; i < f.n_models; i++) dsv_model_close(f.models[i]);
            free(f.ctxs);
            free(f.models);
            free(f.buf);
            return (int)cmd.a;
        default:
            die("unknown command from the leader");
        }
    }
}

/* ---- the public API -------------------------------------------------------- */

int dsv_parallel_init(int *argc, char ***argv) { return dsv_comm_init(argc, argv); }
int dsv_parallel_rank(void) { return dsv_comm_rank(); }
int dsv_parallel_size(void) { return dsv_comm_size(); }
int dsv_parallel_available(void) { return dsv_comm_available(); }

void dsv_parallel_finalize(int status) {
    if (dsv_par_leading()) {
        par_cmd cmd = {.op = OP_QUIT, .a = status};
        send(&cmd, NULL, 0);
    }
    dsv_comm_finalize(0, status);
}
