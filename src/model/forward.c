/* forward.c: a context's memory, and the forward pass (model.py
 * Transformer.forward). The public calls that reach these are in context.c.
 *
 * embed -> for each layer: (x_n, residual) = attn_norm(x, residual);
 * x = MLA(x_n); (x_n, residual) = ffn_norm(x, residual); x = FFN(x_n) ->
 * final norm (fused with the last residual add) -> fp32 head on the rows
 * that want logits. The residual stream is bf16, re-rounded after each add.
 *
 * Every buffer is carved out of one arena in dsv_ctx_create; the forward
 * pass allocates nothing. A call takes several sequences at once (each a run of
 * new tokens at that sequence's next positions): the dense parts see all
 * rows together, attention runs per sequence, and no row's result depends
 * on the other rows. */
#include <math.h>
#include <sched.h>
#include <string.h>
#include <unistd.h>

#include "context.h"
#include "coll.h"
#include "rope.h"
#include "base/util.h"

dsv_context_params dsv_context_default_params(void) {
    dsv_context_params p = {0};
    p.n_seq = 1;
    p.n_batch = 512;
    return p;
}

/* Bump allocator over one arena: first pass measures, second carves. */
typedef struct { char *base; size_t off; } carver;
static void *carve(carver *cv, size_t bytes) {
    size_t off = (cv->off + 63) & ~(size_t)63;
    cv->off = off + bytes;
    return cv->base ? cv->base + off : NULL;
}
#define CARVE(cv, ptr, n) ((ptr) = carve(cv, (size_t)(n) * sizeof *(ptr)))

static void layout(dsv_context *ctx, carver *cv) {
    const dsv_config *c = ctx->c;
    const size_t T = (size_t)ctx->p.n_batch, H = (size_t)ctx->m->n_local_heads;
    const size_t N = (size_t)c->qk_nope_head_dim, R = (size_t)c->qk_rope_head_dim, V = (size_t)c->v_head_dim;
    const size_t C = (size_t)c->kv_lora_rank, Q = (size_t)c->q_lora_rank, D = (size_t)c->dim;
    const size_t Hi = (size_t)c->index_n_heads, E = (size_t)c->n_routed_experts;
    const size_t K = (size_t)c->n_activated_experts, KN = (size_t)ctx->n_keys_max;
    /* The widest hidden layer this rank computes: its part of the dense
     * MLP and of the shared experts, or a whole routed expert. */
    const dsv_shard *sh = &ctx->m->sh;
    size_t inter = (size_t)DSV_MAX(DSV_MAX(sh->inter1 - sh->inter0, sh->shared1 - sh->shared0), c->moe_inter_dim);
    size_t kmax = D;
    if (Q > kmax) kmax = Q;
    if (C > kmax) kmax = C;
    if (H * V > kmax) kmax = H * V;
    if (inter > kmax) kmax = inter;
    size_t rows = T > (size_t)ctx->mha_keys ? T : (size_t)ctx->mha_keys;
    size_t xfw = D;
    if (E > xfw) xfw = E;
    if ((size_t)ctx->topk > xfw) xfw = (size_t)ctx->topk;
    if (Hi > xfw) xfw = Hi;

    CARVE(cv, ctx->layer_topk, c->n_layers);
    CARVE(cv, ctx->tok_pos, T);
    CARVE(cv, ctx->tok_seq, T);
    CARVE(cv, ctx->ent_row, ctx->p.n_seq);
    CARVE(cv, ctx->ent_len, ctx->p.n_seq);
    CARVE(cv, ctx->ent_seq, ctx->p.n_seq);
    CARVE(cv, ctx->x, T * D);
    CARVE(cv, ctx->res, T * D);
    CARVE(cv, ctx->xn, T * D);
    CARVE(cv, ctx->qa, T * Q);
    CARVE(cv, ctx->qr, T * Q);
    CARVE(cv, ctx->q, T * H * (N + R));
    CARVE(cv, ctx->kvf, T * (C + R));
    CARVE(cv, ctx->kvn, T * C);
    CARVE(cv, ctx->o, T * H * V);
    CARVE(cv, ctx->iq, T * Hi * 128);
    CARVE(cv, ctx->ik, T * 128);
    CARVE(cv, ctx->iq8, T * Hi * 128);
    CARVE(cv, ctx->iqs, T * Hi);
    ctx->iqp_bytes = dsv_index_q_bytes((int)Hi);
    CARVE(cv, ctx->iqp, T * ctx->iqp_bytes);
    CARVE(cv, ctx->iw, T * Hi);
    CARVE(cv, ctx->sel, T * KN);
    CARVE(cv, ctx->sel_pos, T * KN);
    CARVE(cv, ctx->n_sel, T);
    CARVE(cv, ctx->xf, T * xfw);
    CARVE(cv, ctx->gate_logits, T * (E ? E : 1));
    CARVE(cv, ctx->gate_w, T * (K ? K : 1));
    CARVE(cv, ctx->gate_i, T * (K ? K : 1));
    CARVE(cv, ctx->moe_y, T * D);
    CARVE(cv, ctx->ex_rows, T);
    CARVE(cv, ctx->ex_wts, T);
    CARVE(cv, ctx->ex_x, T * D);
    CARVE(cv, ctx->ex_h1, T * inter);
    CARVE(cv, ctx->ex_h3, T * inter);
    CARVE(cv, ctx->ex_o, T * D);
    const size_t wave = DSV_MOE_WAVE * (size_t)DSV_LIN_SMALL;
    const size_t ew = (size_t)c->moe_inter_dim * (size_t)DSV_MAX(1, c->n_shared_experts);
    CARVE(cv, ctx->mw_x, wave * D);
    CARVE(cv, ctx->mw_o, wave * D);
    CARVE(cv, ctx->mw_h1, wave * ew);
    CARVE(cv, ctx->mw_h3, wave * ew);
    CARVE(cv, ctx->mw_rows, wave);
    CARVE(cv, ctx->mw_wts, wave);
    CARVE(cv, ctx->aq, rows * kmax);
    CARVE(cv, ctx->as, rows * (kmax / DSV_QBLOCK + 1));
    ctx->xp_slot = (dsv_lin_pack_bytes(DSV_LIN_SMALL, (int)kmax) + 63) & ~(size_t)63;
    ctx->xp = carve(cv, DSV_MAX(dsv_lin_pack_bytes((int)rows, (int)kmax), DSV_LIN_SLOTS * ctx->xp_slot));
    CARVE(cv, ctx->mha_lat, (size_t)ctx->mha_keys * C);
    CARVE(cv, ctx->mha_pe, (size_t)ctx->mha_keys * R);
    CARVE(cv, ctx->mha_kvb, (size_t)ctx->mha_keys * H * (N + V));
    CARVE(cv, ctx->g_lat, KN * C);
    CARVE(cv, ctx->g_pe, KN * R);
    CARVE(cv, ctx->q_abs, H * C);
    CARVE(cv, ctx->q_pe, H * R);
    CARVE(cv, ctx->o_lat, H * C);
    const size_t KNp = (size_t)dsv_mqa_keys_padded((int)KN);
    CARVE(cv, ctx->mqa_s, H * KNp);
    CARVE(cv, ctx->mqa_p, ((H + 15) & ~(size_t)15) * KNp);
    ctx->mqa_kvp = carve(cv, dsv_mqa_kvp_bytes((int)KN, (int)C));
    CARVE(cv, ctx->coll_f, dsv_coll_sum_floats(ctx));
    CARVE(cv, ctx->coll_scratch, dsv_coll_scratch_floats(ctx));
    CARVE(cv, ctx->coll_logits, dsv_coll_logit_floats(ctx));
    /* A forward call packed for the followers (context.c). */
    CARVE(cv, ctx->op_buf, ctx->m->sh.size > 1 ? 1 + 3 * (size_t)ctx->p.n_seq + (size_t)ctx->p.n_batch : 0);
    CARVE(cv, ctx->ts, ctx->nth);
    size_t att = DSV_MAX(dsv_attn_scratch((int)KN, (int)C, (int)R),
                         dsv_mha_scratch(ctx->mha_keys, (int)(N + R), (int)V));
    for (int i = 0; i < ctx->nth; i++) {
        dsv_tscratch *ts = cv->base ? &ctx->ts[i] : &(dsv_tscratch){0};
        CARVE(cv, ts->att, att);
        CARVE(cv, ts->scores, (size_t)DSV_IDX_CHUNK * ctx->p.n_ctx);
        CARVE(cv, ts->sel, dsv_topk_scratch(ctx->p.n_ctx));
        CARVE(cv, ts->acc, C);
        ts->lin = carve(cv, DSV_LIN_SCRATCH);
    }
    float *rc, *rs;
    CARVE(cv, rc, (size_t)ctx->p.n_ctx * (R / 2));
    CARVE(cv, rs, (size_t)ctx->p.n_ctx * (R / 2));
    ctx->rope_cos = rc;
    ctx->rope_sin = rs;
    CARVE(cv, ctx->seqs, ctx->p.n_seq);
    for (int i = 0; i < ctx->p.n_seq; i++) {
        dsv_seq *s = cv->base ? &ctx->seqs[i] : &(dsv_seq){0};
        CARVE(cv, s->pages, (size_t)ctx->max_pages);
    }
}

/* Layer l's top-k: the context's per-layer value, its uniform override,
 * the config's per-layer list, the config's index_topk, in that order. */
static int layer_k(const dsv_context_params *p, const dsv_config *c, int l) {
    if (l < DSV_MAX_TOPK_LAYERS && p->layer_topk[l] > 0) return p->layer_topk[l];
    if (p->topk > 0) return p->topk;
    if (l < DSV_MAX_TOPK_LAYERS && c->index_topk_layer[l] > 0) return c->index_topk_layer[l];
    return c->index_topk;
}

/* Sizes and allocates everything (p: checked, with defaults resolved). */
static int context_init(dsv_context *ctx, dsv_model *m, dsv_context_params p) {
    const dsv_config *c = &m->cfg;
    ctx->m = m;
    ctx->c = c;
    ctx->nth = p.n_threads;
    ctx->topk = 0;
    for (int l = 0; l < c->n_layers; l++) {
        const int k = layer_k(&p, c, l);
        if (k > ctx->topk) ctx->topk = k;
    }
    if (m->no_indexer) p.attn = DSV_ATTN_DENSE; /* a model without an indexer is dense MLA */
    ctx->max_pages = (p.n_ctx + DSV_PAGE - 1) / DSV_PAGE;
    p.n_ctx = ctx->max_pages * DSV_PAGE; /* whole pages */
    if (p.n_pages <= 0) p.n_pages = (int64_t)p.n_seq * ctx->max_pages;
    ctx->p = p;
    ctx->n_keys_max = p.attn == DSV_ATTN_DENSE ? p.n_ctx : DSV_MIN(ctx->topk, p.n_ctx);
    ctx->mha_keys = DSV_MIN(p.mha_max_keys, p.n_ctx);

    carver cv = {0};
    layout(ctx, &cv);
    ctx->arena = aligned_alloc(64, (cv.off + 63) & ~(size_t)63);
    if (!ctx->arena)
        return dsv_error(DSV_ERR_NOMEM, "context: cannot allocate %.1f MiB of scratch", cv.off / 1048576.0);
    cv = (carver){ctx->arena, 0};
    layout(ctx, &cv);
    dsv_rope_tables(ctx->c, ctx->p.n_ctx, ctx->rope_cos, ctx->rope_sin);
    for (int l = 0; l < c->n_layers; l++) ctx->layer_topk[l] = layer_k(&p, c, l);
    int st = dsv_kv_init(&ctx->kv, c->n_layers, c->kv_lora_rank, c->qk_rope_head_dim, 128, p.n_pages);
    if (!st) st = dsv_pool_init(&ctx->pool, p.n_threads);
    if (st) return st;
    for (int i = 0; i < p.n_seq; i++) ctx->seqs[i].len = ctx->seqs[i].n_pages = 0;
    return DSV_OK;
}

static void context_free(dsv_context *ctx) {
    if (!ctx) return;
    dsv_pool_free(ctx->pool);
    dsv_kv_free(&ctx->kv);
    free(ctx->arena);
    free(ctx);
}

int dsv_ctx_create(dsv_context **out, dsv_model *m, const dsv_context_params *given) {
    dsv_context_params p = *given;
    const dsv_config *c = &m->cfg;
    if (p.n_ctx <= 0) p.n_ctx = c->max_position_embeddings > 0 && c->max_position_embeddings < 4096
                                    ? c->max_position_embeddings : 4096;
    if (p.n_seq <= 0) p.n_seq = 1;
    if (p.n_batch <= 0) p.n_batch = 512;
    if (p.n_threads <= 0) {
        /* The CPUs this process may run on (taskset, cgroups), not all online
         * ones: more threads than CPUs would make every barrier wait for a
         * descheduled thread. */
        cpu_set_t cpus;
        long n = sched_getaffinity(0, sizeof cpus, &cpus) == 0 ? CPU_COUNT(&cpus) : sysconf(_SC_NPROCESSORS_ONLN);
        p.n_threads = n > 0 ? (int)n : 1;
    }
    if (p.mha_max_keys <= 0) p.mha_max_keys = 4096;
    if (p.topk < 0) return dsv_error(DSV_ERR_ARG, "top-k must be >= 0 (0: the model's %d)", c->index_topk);
    for (int l = 0; l < DSV_MAX_TOPK_LAYERS; l++)
        if (p.layer_topk[l] < 0 || p.layer_topk[l] > (1 << 30) || (l >= c->n_layers && p.layer_topk[l]))
            return dsv_error(DSV_ERR_ARG, "layer_topk[%d] = %d: must be in [0, 2^30], and 0 past the %d layers", l,
                             p.layer_topk[l], c->n_layers);
    if (p.attn != DSV_ATTN_SPARSE && p.attn != DSV_ATTN_DENSE)
        return dsv_error(DSV_ERR_ARG, "attention mode must be DSV_ATTN_SPARSE or DSV_ATTN_DENSE");
    if (p.n_ctx > (1 << 28) || p.n_batch > (1 << 24) || p.n_seq > (1 << 20) || p.n_threads > 1024)
        return dsv_error(DSV_ERR_ARG, "context parameters out of range");

    /* In a split model every rank opens the context, and all agree on the
     * outcome and on one kernel set. */
    dsv_context *ctx = NULL;
    const dsv_kernels *kern = NULL;
    int st = memchr(p.kernels, 0, sizeof p.kernels) ? DSV_OK
                                                    : dsv_error(DSV_ERR_ARG, "kernel level name is not terminated");
    if (!st) st = dsv_kernels_choose(&kern, p.kernels);
    if (!st && !(ctx = calloc(1, sizeof *ctx))) st = dsv_error(DSV_ERR_NOMEM, "out of memory");
    if (!st) {
        ctx->kern = kern;
        st = context_init(ctx, m, p);
    }
    st = m->coll->agree(st);
    /* Every rank has the level it chose, so the lowest is one all have. */
    if (!st && m->sh.size > 1) ctx->kern = dsv_kernels_at(m->coll->agree_min(dsv_kernels_level_of(ctx->kern)));
    if (st) {
        dsv_ctx_destroy(ctx);
        return st;
    }
    *out = ctx;
    return DSV_OK;
}

void dsv_ctx_destroy(dsv_context *ctx) { context_free(ctx); }

static int check_seq(const dsv_context *ctx, int seq) {
    if (seq < 0 || seq >= ctx->p.n_seq)
        return dsv_error(DSV_ERR_ARG, "sequence %d out of range [0, %d)", seq, ctx->p.n_seq);
    return DSV_OK;
}

int dsv_batch_logit_rows(const dsv_batch_entry *entries, int n_entries) {
    int rows = 0;
    for (int i = 0; i < n_entries; i++)
        rows += entries[i].logits == DSV_LOGITS_ALL ? entries[i].n_tokens : entries[i].logits == DSV_LOGITS_LAST;
    return rows;
}

int dsv_forward_check(dsv_context *ctx, const dsv_batch_entry *en, int n) {
    const dsv_config *c = ctx->c;
    if (n < 0 || (n > 0 && !en)) return dsv_error(DSV_ERR_ARG, "dsv_forward: bad entry list");
    if (n > ctx->p.n_seq) return dsv_error(DSV_ERR_ARG, "dsv_forward: %d entries for %d sequences", n, ctx->p.n_seq);
    long total = 0, pages = 0;
    for (int i = 0; i < n; i++) {
        int st = check_seq(ctx, en[i].seq);
        if (st) return st;
        for (int j = 0; j < i; j++)
            if (en[j].seq == en[i].seq)
                return dsv_error(DSV_ERR_ARG, "dsv_forward: sequence %d appears twice in one call", en[i].seq);
        if (en[i].n_tokens < 1 || !en[i].tokens)
            return dsv_error(DSV_ERR_ARG, "dsv_forward: entry %d has no tokens", i);
        if (en[i].logits < DSV_LOGITS_NONE || en[i].logits > DSV_LOGITS_ALL)
            return dsv_error(DSV_ERR_ARG, "dsv_forward: entry %d: bad logits mode %d", i, en[i].logits);
        for (int j = 0; j < en[i].n_tokens; j++)
            if (en[i].tokens[j] < 0 || en[i].tokens[j] >= c->vocab_size)
                return dsv_error(DSV_ERR_ARG, "token id %d out of range [0, %d)", en[i].tokens[j], c->vocab_size);
        const dsv_seq *s = &ctx->seqs[en[i].seq];
        if ((long)s->len + en[i].n_tokens > ctx->p.n_ctx)
            return dsv_error(DSV_ERR_FULL, "sequence %d: %d + %d tokens exceed the context size %d", en[i].seq,
                             s->len, en[i].n_tokens, ctx->p.n_ctx);
        total += en[i].n_tokens;
        pages += dsv_kv_pages_needed(s, s->len + en[i].n_tokens);
    }
    if (total > ctx->p.n_batch)
        return dsv_error(DSV_ERR_ARG, "dsv_forward: %ld tokens exceed the batch size %d", total, ctx->p.n_batch);
    if (pages > ctx->kv.n_free)
        return dsv_error(DSV_ERR_FULL, "KV cache full: %ld more pages needed, %lld free", pages,
                         (long long)ctx->kv.n_free);
    return DSV_OK;
}

struct fwd_args {
    const dsv_layer *ly;
    const int32_t *tokens; /* flattened token ids */
    int32_t *rows;         /* rows that want logits */
};

static void embed_rows(dsv_context *ctx, void *a, long i0, long i1, int ith) {
    (void)ith;
    struct fwd_args *p = a;
    const dsv_model *m = ctx->m;
    const int D = ctx->c->dim;
    dsv_linear e = {.dtype = m->embed_dtype, .w = m->embed};
    for (long t = i0; t < i1; t++) {
        /* A split model holds the rows [vocab0, vocab1); others are zeros
         * here and come from their rank's sum (model.py ParallelEmbedding). */
        long row = (long)p->tokens[t] - m->sh.vocab0, base = row * D;
        dsv_bf16 *x = ctx->x + t * D;
        if (row < 0 || p->tokens[t] >= m->sh.vocab1) { memset(x, 0, (size_t)D * 2); continue; }
        if (m->embed_dtype == DSV_DT_BF16) memcpy(x, (const dsv_bf16 *)m->embed + base, (size_t)D * 2);
        else for (int d = 0; d < D; d++) x[d] = dsv_f32_to_bf16(dsv_weight_at(&e, base + d, 1));
    }
}

static void attn_norm_rows(dsv_context *ctx, void *a, long i0, long i1, int ith) {
    (void)ith;
    struct fwd_args *p = a;
    const int D = ctx->c->dim;
    for (long t = i0; t < i1; t++) {
        if (p->ly == ctx->m->layers) {
            /* Layer 0: x_n = norm(h), residual = h. */
            memcpy(ctx->res + t * D, ctx->x + t * D, (size_t)D * 2);
            ctx->kern->rmsnorm(ctx->xn + t * D, ctx->x + t * D, p->ly->attn_norm, D, ctx->c->rms_norm_eps);
        } else {
            ctx->kern->rmsnorm_residual(ctx->xn + t * D, ctx->res + t * D, ctx->x + t * D, p->ly->attn_norm, D,
                                 ctx->c->rms_norm_eps);
        }
    }
}

static void ffn_norm_rows(dsv_context *ctx, void *a, long i0, long i1, int ith) {
    (void)ith;
    struct fwd_args *p = a;
    const int D = ctx->c->dim;
    for (long t = i0; t < i1; t++)
        ctx->kern->rmsnorm_residual(ctx->xn + t * D, ctx->res + t * D, ctx->x + t * D, p->ly->ffn_norm, D,
                             ctx->c->rms_norm_eps);
}

/* Final norm of the rows that want logits, widened to fp32 for the head. */
static void final_rows(dsv_context *ctx, void *a, long i0, long i1, int ith) {
    (void)ith;
    struct fwd_args *p = a;
    const int D = ctx->c->dim;
    for (long i = i0; i < i1; i++) {
        long t = p->rows[i];
        dsv_bf16 *y = ctx->xn + i * D, *r = ctx->ex_x + i * D;
        memcpy(r, ctx->res + t * D, (size_t)D * 2); /* the residual of the last add is not kept */
        ctx->kern->rmsnorm_residual(y, r, ctx->x + t * D, ctx->m->norm, D, ctx->c->rms_norm_eps);
        for (int d = 0; d < D; d++) ctx->xf[i * D + d] = dsv_bf16_to_f32(y[d]);
    }
}

static void attn_out_f32(dsv_context *ctx, void *a, long i0, long i1, int ith) {
    (void)ith; (void)a;
    for (long i = i0; i < i1; i++) ctx->xf[i] = dsv_bf16_to_f32(ctx->x[i]);
}

void dsv_forward_start(dsv_context *ctx) {
    ctx->phase = DSV_PHASE_OTHER;
    ctx->phase_t0 = dsv_now_ns();
}

int dsv_forward_run(dsv_context *ctx, const dsv_batch_entry *en, int n, float *logits) {
    const dsv_config *c = ctx->c;
    const int D = c->dim;
    int st;

    /* Token table; pages for the new positions (cannot fail after validate). */
    int T = 0;
    int32_t *toks = ctx->ex_rows; /* the ids, flattened (ex_rows is free until the MoE) */
    for (int i = 0; i < n; i++) {
        dsv_seq *s = &ctx->seqs[en[i].seq];
        st = dsv_kv_reserve(&ctx->kv, s, s->len + en[i].n_tokens, ctx->max_pages);
        DSV_ASSERT(st == DSV_OK);
        ctx->ent_row[i] = T;
        ctx->ent_len[i] = en[i].n_tokens;
        ctx->ent_seq[i] = en[i].seq;
        for (int j = 0; j < en[i].n_tokens; j++, T++) {
            ctx->tok_pos[T] = s->len + j;
            ctx->tok_seq[T] = en[i].seq;
            toks[T] = en[i].tokens[j];
        }
    }
    ctx->n_tok = T;
    ctx->n_ent = n;
    if (T == 0) return DSV_OK;

    struct fwd_args a = {.tokens = toks};
    dsv_ctx_for(ctx, T, embed_rows, &a);
    dsv_ctx_sum_bf16(ctx, ctx->x, T);
    ctx->stats.weight_bytes += (uint64_t)T * D * dsv_dtype_size(ctx->m->embed_dtype);
    for (int il = 0; il < c->n_layers; il++) {
        const dsv_layer *ly = &ctx->m->layers[il];
        a.ly = ly;
        dsv_ctx_for(ctx, T, attn_norm_rows, &a);
        dsv_dump_bf16(ctx, "attn_norm", il, T, D, ctx->xn);
        dsv_mla_forward(ctx, il, ctx->x, ctx->xn);
        for (int t = 0; t < T; t++) {
            /* Dense mode scores nothing: every visible position is attended. */
            ctx->stats.n_keys += (uint64_t)ctx->n_sel[t];
            if (ctx->p.attn == DSV_ATTN_SPARSE) ctx->stats.n_index_keys += (uint64_t)ctx->tok_pos[t] + 1;
        }
        if (ctx->dump) {
            dsv_ctx_for(ctx, (long)T * D, attn_out_f32, NULL);
            dsv_dump_f32(ctx, "attn_out", il, T, D, ctx->xf);
        }
        dsv_ctx_for(ctx, T, ffn_norm_rows, &a);
        if (ly->is_moe) dsv_moe_forward(ctx, il, ctx->x, ctx->xn);
        else {
            dsv_mlp_forward(ctx, &ly->mlp, ly->mlp.w1.n_out, ctx->x, ctx->xn, T);
            dsv_ctx_sum_bf16(ctx, ctx->x, T); /* the dense MLP's down_proj is row-parallel */
        }
    }

    /* Logits, in entry order. */
    int rows = 0;
    int32_t *rsel = ctx->ex_rows;
    for (int i = 0; i < n; i++) {
        if (en[i].logits == DSV_LOGITS_ALL)
            for (int j = 0; j < en[i].n_tokens; j++) rsel[rows++] = ctx->ent_row[i] + j;
        else if (en[i].logits == DSV_LOGITS_LAST)
            rsel[rows++] = ctx->ent_row[i] + en[i].n_tokens - 1;
    }
    if (rows > 0) {
        a.rows = rsel;
        dsv_ctx_for(ctx, rows, final_rows, &a);
        dsv_ctx_head(ctx, logits, rows);
    }
    for (int i = 0; i < n; i++) ctx->seqs[en[i].seq].len += en[i].n_tokens;
    dsv_phase(ctx, DSV_PHASE_OTHER);
    ctx->stats.n_calls++;
    ctx->stats.n_tokens += (uint64_t)T;
    return DSV_OK;
}

void dsv_context_get_stats(const dsv_context *ctx, dsv_context_stats *out) {
    *out = ctx->stats;
    /* Per query: its latent records and the indexer keys and scales it scored. */
    out->kv_read_bytes = ctx->stats.n_keys * ctx->kv.lat_bytes + ctx->stats.n_index_keys * (ctx->kv.idx_dim + 4u);
    out->kv_token_bytes = ctx->kv.page_bytes / DSV_PAGE;
    unsigned long long runs, bars;
    dsv_pool_counts(ctx->pool, &runs, &bars);
    out->n_pool_runs = runs - ctx->pool_runs0;
    out->n_pool_barriers = bars - ctx->pool_barriers0;
}

void dsv_context_reset_stats(dsv_context *ctx) {
    memset(&ctx->stats, 0, sizeof ctx->stats);
    dsv_pool_counts(ctx->pool, &ctx->pool_runs0, &ctx->pool_barriers0);
}
