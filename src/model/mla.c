/* mla.c: Multi-head Latent Attention with DeepSeek Sparse Attention
 * (model.py MLA.forward).
 *
 * Projections and the latent KV: q = wq_b(q_norm(wq_a(x))) with interleaved
 * RoPE on each head's last `rope` dims; [latent | k_pe] = wkv_a(x), latent
 * RMS-normalized, k_pe roped; the latent goes through act_quant (fp8 e4m3,
 * 128-wide groups) and is cached as codes + scales, as production does; the
 * reference caches the same values dequantized to bf16.
 *
 * Attention runs over exactly the positions the lightning indexer selected
 * (gathered, never masked), in one of the reference's two forms:
 *  - MHA (its prefill path): k_nope and v come from wkv_b applied to the
 *    cached latent rows; used for multi-token calls whose sequence spans at
 *    most mha_keys positions (the reference's own prefill starts at 0 and
 *    up-projects the whole chunk; we also allow a later start, reading the
 *    earlier rows from the cache, so a chunked prefill computes what one call
 *    would);
 *  - MQA (its decode path): the query is absorbed into the latent space
 *    through wkv_b's key half, attention runs over the latent rows, and the
 *    value half maps the result back; its cost per token does not grow with
 *    the context, so it serves single tokens and long contexts. A GGUF's
 *    block-quantized attn_k_b / attn_v_b are multiplied as the file holds
 *    them (float activations, dsv_q_absorb) instead of the bf16 wkv_b.
 * Selected positions are visited in ascending order, so a top-k that keeps
 * every position computes bit for bit what dense attention computes.
 * In a model split across processes a rank computes its own heads
 * (n_local_heads) and o_proj sums the ranks' parts (format/shard.h). */
#include <string.h>

#include "context.h"
#include "coll.h"
#include "kernels/quant.h"
#include "base/util.h"

struct mla_args {
    dsv_context *ctx;
    const dsv_layer *ly;
    int il;
    const dsv_bf16 *xn;
    int row0, n_rows, seq, n_keys; /* current entry / token */
};

static void q_rows(dsv_context *ctx, void *a, long i0, long i1, int ith) {
    (void)ith;
    struct mla_args *p = a;
    const dsv_config *c = ctx->c;
    const int Q = c->q_lora_rank;
    for (long t = i0; t < i1; t++)
        ctx->kern->rmsnorm(ctx->qr + t * Q, ctx->qa + t * Q, p->ly->q_norm, Q, c->rms_norm_eps);
}

static void q_rope_rows(dsv_context *ctx, void *a, long i0, long i1, int ith) {
    (void)ith; (void)a;
    const dsv_config *c = ctx->c;
    const int H = ctx->m->n_local_heads, N = c->qk_nope_head_dim, R = c->qk_rope_head_dim;
    for (long t = i0; t < i1; t++) {
        const float *cs = ctx->rope_cos + (size_t)ctx->tok_pos[t] * (R / 2);
        const float *sn = ctx->rope_sin + (size_t)ctx->tok_pos[t] * (R / 2);
        for (int h = 0; h < H; h++) ctx->kern->rope(ctx->q + ((size_t)t * H + h) * (N + R) + N, cs, sn, R / 2, 1);
    }
}

/* Latent: norm, RoPE on k_pe, act_quant round trip, cache write. */
static void kv_rows(dsv_context *ctx, void *a, long i0, long i1, int ith) {
    (void)ith;
    struct mla_args *p = a;
    const dsv_config *c = ctx->c;
    const int C = c->kv_lora_rank, R = c->qk_rope_head_dim;
    for (long t = i0; t < i1; t++) {
        dsv_bf16 *kvf = ctx->kvf + t * (C + R), *kvn = ctx->kvn + t * C;
        const int pos = ctx->tok_pos[t];
        ctx->kern->rmsnorm(kvn, kvf, p->ly->kv_norm, C, c->rms_norm_eps);
        ctx->kern->rope(kvf + C, ctx->rope_cos + (size_t)pos * (R / 2), ctx->rope_sin + (size_t)pos * (R / 2), R / 2, 1);
        uint8_t *codes = ctx->aq + t * C;
        float *scales = ctx->as + t * (C / DSV_QBLOCK);
        ctx->kern->act_quant(codes, scales, kvn, C, c->scale_fmt);
        const dsv_seq *s = &ctx->seqs[ctx->tok_seq[t]];
        dsv_kv_put_latent(&ctx->kv, dsv_kv_latent(&ctx->kv, s, p->il, pos), codes, scales, kvf + C);
    }
}

/* Reads latent rows back (as bf16 values) for the MHA path: positions [i0, i1). */
static void mha_load(dsv_context *ctx, void *a, long i0, long i1, int ith) {
    (void)ith;
    struct mla_args *p = a;
    const dsv_config *c = ctx->c;
    const int C = c->kv_lora_rank, R = c->qk_rope_head_dim;
    const dsv_seq *s = &ctx->seqs[p->seq];
    for (long j = i0; j < i1; j++)
        dsv_kv_get_latent(ctx->kern, &ctx->kv, dsv_kv_latent(&ctx->kv, s, p->il, (int)j), ctx->mha_lat + j * C,
                          ctx->mha_pe + j * R);
}

/* Heads [h0, h1) of every token of the entry (a head's keys are its own). */
static void mha_heads(dsv_context *ctx, void *a, long h0, long h1, int ith) {
    struct mla_args *p = a;
    const dsv_config *c = ctx->c;
    const int H = ctx->m->n_local_heads, N = c->qk_nope_head_dim, R = c->qk_rope_head_dim, V = c->v_head_dim;
    const int t = p->row0;
    ctx->kern->mha_attn(ctx->o + (size_t)t * H * V, ctx->q + (size_t)t * H * (N + R), p->n_rows,
                       ctx->sel_pos + (size_t)t * ctx->n_keys_max, ctx->n_keys_max, ctx->n_sel + t, ctx->mha_kvb,
                       ctx->mha_pe, p->n_keys, H, N, R, V, c->softmax_scale, (int)h0, (int)h1, ctx->ts[ith].att);
}

static void mha_entry(dsv_context *ctx, struct mla_args *p, int e) {
    const dsv_config *c = ctx->c;
    const int H = ctx->m->n_local_heads, N = c->qk_nope_head_dim, V = c->v_head_dim;
    p->row0 = ctx->ent_row[e];
    p->n_rows = ctx->ent_len[e];
    p->seq = ctx->ent_seq[e];
    int E = ctx->tok_pos[p->row0 + p->n_rows - 1] + 1;
    dsv_ctx_for(ctx, E, mha_load, p);
    /* model.py: kv = self.wkv_b(kv), on the dequantized latent. */
    dsv_lin(ctx, ctx->mha_kvb, H * (N + V), ctx->mha_lat, &p->ly->wkv_b, E);
    p->n_keys = E;
    dsv_ctx_for(ctx, H, mha_heads, p);
}

/* Absorbed attention of one token, every thread on it at once, in steps
 * split their own way (a barrier between): (1) heads: absorb the queries;
 * (2) keys, in blocks of MQA_BLOCK: gather the selected latent rows
 * (dequantized), lay them out for the values and take the scores of all
 * heads while the block is still in cache; (3) heads: softmax; (4) latent
 * columns: the weighted sums; (5) heads: the output absorption. Every
 * element's arithmetic is fixed by its head, key or column alone, so the
 * thread count and the blocking change nothing. */
/* An attached analysis's row: keys [j0, j1) of S [H][lds] summed over
 * heads (in double, head order), at their positions idx[j]. */
static void probe_sum_heads(float *row, const float *S, int lds, int H, const int32_t *idx, int j0, int j1) {
    for (int j = j0; j < j1; j++) {
        double s = 0;
        for (int h = 0; h < H; h++) s += S[(size_t)h * lds + j];
        row[idx[j]] = (float)s;
    }
}

/* At 16384 positions the gathered records come from DRAM, 11 lines each,
 * scattered: a gather that waits for them is bound by the memory's latency.
 * So the records of a thread's next block of keys are asked for (into L2)
 * while the scores of the current block keep the core busy (mqa_scores
 * spreads the prefetches over its keys), and only the first block's are
 * asked for from the gather loop itself, GATHER_AHEAD rows ahead. Into L2
 * (prefetcht1), not L1: hints for the L1 held its few miss buffers and
 * stalled (one token's gather at depth 16384, -t 1, perf: 1.58 -> 1.10 ms
 * of CPU per token against 4 rows ahead into L1). */
#define GATHER_AHEAD 8
#define MQA_BLOCK 128 /* keys: 128 KB of gathered bf16 rows, within L2 */
static void mqa_task(void *arg, int ith, int nth) {
    struct mla_args *p = arg;
    dsv_context *ctx = p->ctx;
    const dsv_config *c = ctx->c;
    const dsv_kernels *k = ctx->kern;
    const int H = ctx->m->n_local_heads, N = c->qk_nope_head_dim, R = c->qk_rope_head_dim, V = c->v_head_dim;
    const int C = c->kv_lora_rank, t = p->row0, n = p->n_keys, np = dsv_mqa_keys_padded(n);
    const dsv_linear *wkv_b = &p->ly->wkv_b;
    dsv_tscratch *ts = &ctx->ts[ith];
    long h0, h1, b0, b1;
    dsv_split(H, ith, nth, &h0, &h1);
    dsv_split((n + 31) / 32, ith, nth, &b0, &b1);
    const int j0 = (int)b0 * 32, j1 = (int)DSV_MIN(b1 * 32, n);

    const dsv_layer *ly = p->ly;
    const int level = dsv_kernels_level_of(k);
    if (ly->k_b.gtype && h0 < h1)
        dsv_q_absorb_for(level, ly->k_b.gtype)(ly->k_b.gtype, ly->k_b.w, dsv_ggml_row_size(ly->k_b.gtype, N), C, N, ctx->q + (size_t)t * H * (N + R),
             (size_t)(N + R), ctx->q_abs, (int)h0, (int)h1);
    for (long h = h0; h < h1; h++) {
        const dsv_bf16 *qh = ctx->q + ((size_t)t * H + h) * (N + R);
        if (!ly->k_b.gtype) k->absorb_q(ctx->q_abs + h * C, qh, wkv_b, (int)h * (N + V), N, ts->acc);
        memcpy(ctx->q_pe + h * R, qh + N, (size_t)R * sizeof(dsv_bf16));
    }
    dsv_pool_barrier(ctx->pool);

    const dsv_seq *s = &ctx->seqs[p->seq];
    const int32_t *idx = ctx->sel_pos + (size_t)t * ctx->n_keys_max;
    const void *next_rows[MQA_BLOCK];
    for (int jb = j0; jb < j1; jb += MQA_BLOCK) {
        const int je = DSV_MIN(jb + MQA_BLOCK, j1), jn = DSV_MIN(je + MQA_BLOCK, j1);
        for (int j = jb; j < je; j++) {
            /* The records are scattered over the cache: the first block's
             * are asked for a few rows ahead, the others' were asked for
             * while the previous block was scored. */
            if (jb == j0 && j + GATHER_AHEAD < je) {
                const char *r = (const char *)dsv_kv_latent(&ctx->kv, s, p->il, idx[j + GATHER_AHEAD]);
                for (size_t o = 0; o < ctx->kv.lat_bytes; o += 64) __builtin_prefetch(r + o, 0, 2);
            }
            dsv_kv_get_latent(ctx->kern, &ctx->kv, dsv_kv_latent(&ctx->kv, s, p->il, idx[j]), ctx->g_lat + (size_t)j * C,
                              ctx->g_pe + (size_t)j * R);
        }
        for (int j = je; j < jn; j++) next_rows[j - je] = dsv_kv_latent(&ctx->kv, s, p->il, idx[j]);
        const dsv_prefetch pf = {next_rows, jn - je, (int)ctx->kv.lat_bytes};
        if (k->mqa_pack) k->mqa_pack(ctx->mqa_kvp, ctx->g_lat, n, C, jb, je);
        k->mqa_scores(ctx->mqa_s, np, ctx->q_abs, ctx->q_pe, ctx->g_lat, ctx->g_pe, H, C, R, c->softmax_scale, jb, je,
                      jn > je ? &pf : NULL, ts->att);
    }
    dsv_pool_barrier(ctx->pool);
    dsv_probe *pr = ctx->probe;
    if (pr && pr->oracle) {
        /* Tests: the positions' logits summed over heads stand in for the
         * indexer's scores (taken before the softmax overwrites them). */
        probe_sum_heads(pr->scores + (size_t)t * ctx->p.n_ctx, ctx->mqa_s, np, H, idx, j0, j1);
        dsv_pool_barrier(ctx->pool);
    }

    for (long h = h0; h < h1; h++) {
        float *sr = ctx->mqa_s + (size_t)h * np;
        dsv_bf16 *pb = ctx->mqa_p + (size_t)h * np;
        k->softmax_bf16(sr, n);
        for (int j = 0; j < n; j++) pb[j] = (dsv_bf16)(dsv_f32_bits(sr[j]) >> 16); /* bf16 values */
        memset(pb + n, 0, (size_t)(np - n) * sizeof(dsv_bf16));
    }
    dsv_pool_barrier(ctx->pool);
    /* The weights stay in mqa_s (mqa_pv reads the bf16 copy). */
    if (pr) probe_sum_heads(pr->attn + (size_t)t * ctx->p.n_ctx, ctx->mqa_s, np, H, idx, j0, j1);

    long g0, g1;
    dsv_split((C + 15) / 16, ith, nth, &g0, &g1);
    if (g0 < g1)
        k->mqa_pv(ctx->o_lat, ctx->mqa_p, np, ctx->g_lat, ctx->mqa_kvp, n, H, C, (int)g0 * 16,
                  (int)DSV_MIN(g1 * 16, C), ts->att);
    dsv_pool_barrier(ctx->pool);

    if (ly->v_b.gtype) {
        if (h0 < h1)
            dsv_q_absorb_for(level, ly->v_b.gtype)(ly->v_b.gtype, ly->v_b.w, dsv_ggml_row_size(ly->v_b.gtype, C), V, C, ctx->o_lat, (size_t)C,
                 ctx->o + (size_t)t * H * V, (int)h0, (int)h1);
    } else {
        for (long h = h0; h < h1; h++)
            k->absorb_o(ctx->o + ((size_t)t * H + h) * V, ctx->o_lat + h * C, wkv_b, (int)h * (N + V) + N, V);
    }
}

static void mqa_token(dsv_context *ctx, struct mla_args *p, int t, int seq) {
    p->row0 = t;
    p->seq = seq;
    p->n_keys = ctx->n_sel[t];
    /* absorb_q / absorb_o read wkv_b's key and value halves, or the
     * file's blocks of attn_k_b / attn_v_b in their place */
    const dsv_layer *ly = p->ly;
    const uint64_t all = dsv_linear_bytes(&ly->wkv_b), N = (uint64_t)ctx->c->qk_nope_head_dim;
    const uint64_t V = (uint64_t)ctx->c->v_head_dim;
    if (!ly->k_b.gtype && !ly->v_b.gtype) ctx->stats.weight_bytes += all;
    else { /* beside blocks, wkv_b is a GGUF's bf16 copy: its halves split exactly */
        ctx->stats.weight_bytes += ly->k_b.gtype ? dsv_linear_bytes(&ly->k_b) : all / (N + V) * N;
        ctx->stats.weight_bytes += ly->v_b.gtype ? dsv_linear_bytes(&ly->v_b) : all / (N + V) * V;
    }
    dsv_pool_run(ctx->pool, mqa_task, p);
}

void dsv_mla_forward(dsv_context *ctx, int il, dsv_bf16 *out, const dsv_bf16 *xn) {
    const dsv_config *c = ctx->c;
    const dsv_layer *ly = &ctx->m->layers[il];
    const int T = ctx->n_tok, H = ctx->m->n_local_heads, N = c->qk_nope_head_dim, R = c->qk_rope_head_dim;
    const int C = c->kv_lora_rank, Q = c->q_lora_rank;
    struct mla_args a = {.ctx = ctx, .ly = ly, .il = il, .xn = xn};

    /* The projections of x_n, then those of q_r, each set in one group. */
    dsv_lin_job jobs[4] = {{.w = &ly->wq_a, .m = T, .y = ctx->qa, .ldy = Q, .x = xn},
                           {.w = &ly->wkv_a, .m = T, .y = ctx->kvf, .ldy = C + R, .x = xn}};
    dsv_indexer_project(ctx, il, xn, jobs + 2);
    dsv_lin_group(ctx, jobs, 4);
    dsv_ctx_for(ctx, T, q_rows, &a);
    dsv_dump_bf16(ctx, "qr", il, T, Q, ctx->qr);
    jobs[0] = (dsv_lin_job){.w = &ly->wq_b, .m = T, .y = ctx->q, .ldy = H * (N + R), .x = ctx->qr};
    jobs[1] = dsv_indexer_project_q(ctx, il, ctx->qr);
    dsv_lin_group(ctx, jobs, 2);
    dsv_ctx_for(ctx, T, q_rope_rows, &a);
    dsv_ctx_for(ctx, T, kv_rows, &a);

    dsv_indexer_forward(ctx, il);

    int prev = dsv_phase(ctx, DSV_PHASE_ATTN);
    for (int e = 0; e < ctx->n_ent; e++) {
        int S = ctx->ent_len[e], last = ctx->tok_pos[ctx->ent_row[e] + S - 1];
        /* An analysis reads each token's weights from the absorbed path. */
        if (S > 1 && last + 1 <= ctx->mha_keys && !ctx->probe) {
            mha_entry(ctx, &a, e);
        } else {
            for (int i = 0; i < S; i++) mqa_token(ctx, &a, ctx->ent_row[e] + i, ctx->ent_seq[e]);
        }
    }
    dsv_phase(ctx, prev);
    if (ctx->probe) ctx->probe->layer_done(ctx, il);
    dsv_lin_reduce(ctx, out, c->dim, ctx->o, &ly->wo, T); /* o_proj is row-parallel */
}
