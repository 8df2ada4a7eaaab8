/* kvshare.c: the prefix-sharing API of include/dsv32.h that only looks
 * (page tables, reference counts, pool statistics) over the context's paged
 * KV cache; the calls that change it (attach, page ref/unref) are
 * context.c's operations, mirrored in a split model.
 *
 * Nothing here computes: a sequence attached to shared pages reads them
 * exactly as if it had written them itself, which is why a prefix cache on
 * top of this API gives the same results as recomputing the prefix. What it
 * does not do is decide which pages to share or keep; that is the caller's
 * policy (the server's prefix cache). */
#include "context.h"
#include "base/util.h"

static int check_seq(const dsv_context *ctx, int seq) {
    if (!ctx) return dsv_error(DSV_ERR_ARG, "NULL context");
    if (seq < 0 || seq >= ctx->p.n_seq)
        return dsv_error(DSV_ERR_ARG, "sequence %d out of range [0, %d)", seq, ctx->p.n_seq);
    return DSV_OK;
}

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
