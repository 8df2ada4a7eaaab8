/* kvfill.c: random cache contents (dsv_seq_fill_random), so that decoding at
 * a depth of 128K tokens can be timed without a 128K-token prefill.
 *
 * Each position gets, in every layer, what a prefill would store there: the
 * act_quant codes and scales of a unit-size latent (kv_norm's output is of
 * unit size), a unit-size k_pe, and the act_quant codes and scale of a
 * unit-size indexer key (LayerNorm, then the orthonormal Hadamard transform).
 * The codes go through the same act_quant as real ones, under the model's
 * scale format, so every byte is one a real cache could hold. Work is split
 * by pages; each (position, layer) has its own random stream. */
#include <string.h>

#include "context.h"
#include "base/rng.h"
#include "base/util.h"

struct fill_args {
    const dsv_seq *s;
    int p0, p1;         /* positions [p0, p1) */
    uint64_t seed;
};

/* Uniform on [-sqrt(3), sqrt(3)]: unit RMS. */
#define UNIT_AMP 1.7320508f

static void fill_pages(dsv_context *ctx, void *a, long i0, long i1, int ith) {
    (void)ith;
    const struct fill_args *p = a;
    const dsv_kv *kv = &ctx->kv;
    const int C = kv->kv_lora, R = kv->rope, fmt = ctx->c->scale_fmt;
    float vals[DSV_QBLOCK];
    dsv_bf16 pe[DSV_QBLOCK];
    /* config.c: kv_lora is a multiple of 128; rope <= index_head_dim = 128. */
    DSV_ASSERT(C % DSV_QBLOCK == 0 && R <= DSV_QBLOCK && kv->idx_dim == DSV_QBLOCK);
    const int first_page = p->p0 / DSV_PAGE;
    for (long i = i0; i < i1; i++) {
        const int pg = first_page + (int)i;
        const int q0 = DSV_MAX(p->p0, pg * DSV_PAGE), q1 = DSV_MIN(p->p1, (pg + 1) * DSV_PAGE);
        for (int l = 0; l < kv->n_layers; l++)
            for (int pos = q0; pos < q1; pos++) {
                dsv_rng rng = dsv_rng_stream(p->seed, "kv", (uint64_t)pos * (uint64_t)kv->n_layers + (uint64_t)l);
                /* The record: codes [C], scales [C/128] (4-byte aligned, see
                 * kvcache.c), k_pe [R]. */
                uint8_t *rec = dsv_kv_latent(kv, p->s, l, pos);
                for (int g = 0; g < C; g += DSV_QBLOCK) {
                    dsv_rng_fill(&rng, vals, DSV_QBLOCK, UNIT_AMP);
                    dsv_act_quant(rec + g, (float *)(rec + C) + g / DSV_QBLOCK, vals, DSV_QBLOCK, fmt);
                }
                dsv_rng_fill(&rng, vals, R, UNIT_AMP);
                for (int j = 0; j < R; j++) pe[j] = dsv_f32_to_bf16(vals[j]);
                memcpy(rec + C + 4 * (C / DSV_QBLOCK), pe, 2 * (size_t)R);
                dsv_rng_fill(&rng, vals, DSV_QBLOCK, UNIT_AMP);
                dsv_act_quant(dsv_kv_index_keys(kv, p->s, l, pos), dsv_kv_index_scales(kv, p->s, l, pos), vals,
                              DSV_QBLOCK, fmt);
            }
    }
}

int dsv_kv_fill_check(dsv_context *ctx, int seq, int n_tokens) {
    if (seq < 0 || seq >= ctx->p.n_seq)
        return dsv_error(DSV_ERR_ARG, "sequence %d out of range [0, %d)", seq, ctx->p.n_seq);
    if (n_tokens < 0) return dsv_error(DSV_ERR_ARG, "dsv_seq_fill_random: %d tokens", n_tokens);
    dsv_seq *s = &ctx->seqs[seq];
    if ((long)s->len + n_tokens > ctx->p.n_ctx)
        return dsv_error(DSV_ERR_FULL, "sequence %d: %d + %d tokens exceed the context size %d", seq, s->len,
                         n_tokens, ctx->p.n_ctx);
    /* Reserving twice is harmless: the second finds the pages there. */
    return dsv_kv_reserve(&ctx->kv, s, s->len + n_tokens, ctx->max_pages);
}

void dsv_kv_fill(dsv_context *ctx, int seq, int n_tokens, uint64_t seed) {
    dsv_seq *s = &ctx->seqs[seq];
    struct fill_args a = {s, s->len, s->len + n_tokens, seed};
    if (n_tokens > 0) {
        long pages = (a.p1 - 1) / DSV_PAGE - a.p0 / DSV_PAGE + 1;
        dsv_ctx_for(ctx, pages, fill_pages, &a);
    }
    s->len += n_tokens;
}
