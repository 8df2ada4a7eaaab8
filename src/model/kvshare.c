/* kvshare.c: the prefix-sharing API of include/dsv32.h (page tables, page
 * references, pool statistics) over the context's paged KV cache.
 *
 * Nothing here computes: a sequence attached to shared pages reads them
 * exactly as if it had written them itself, which is why a prefix cache on
 * top of this API gives the same results as recomputing the prefix. What it
 * does not do is decide which pages to share or keep; that is the caller's
 * policy (the server's prefix cache). */
#include "context.h"
#include "dist/parallel.h"
#include "base/util.h"

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

int dsv_seq_pages(const dsv_context *ctx, int seq, const int32_t **pages, int *n_pages) {
    int st = check_seq(ctx, seq);
    if (st) return st;
    if (!pages || !n_pages) return dsv_error(DSV_ERR_ARG, "dsv_seq_pages: NULL output");
    const dsv_seq *s = &ctx->seqs[seq];
    *pages = s->pages;
    *n_pages = (s->len + DSV_PAGE - 1) / DSV_PAGE;
    return DSV_OK;
}

int dsv_seq_attach(dsv_context *ctx, int seq, const int32_t *pages, int n_pages) {
    int st = check_seq(ctx, seq);
    if (st) return st;
    dsv_seq *s = &ctx->seqs[seq];
    if (s->len != 0 || s->n_pages != 0)
        return dsv_error(DSV_ERR_ARG, "dsv_seq_attach: sequence %d is not empty (%d tokens)", seq, s->len);
    if (n_pages < 0 || n_pages > ctx->max_pages || (n_pages > 0 && !pages))
        return dsv_error(DSV_ERR_ARG, "dsv_seq_attach: %d pages for a context of %d", n_pages, ctx->max_pages);
    for (int i = 0; i < n_pages; i++)
        if ((st = check_page(ctx, pages[i]))) return st;
    for (int i = 0; i < n_pages; i++) {
        dsv_kv_ref(&ctx->kv, pages[i]);
        s->pages[i] = pages[i];
    }
    s->n_pages = n_pages;
    s->len = n_pages * DSV_PAGE;
    dsv_par_send_op(ctx, DSV_PAR_ATTACH, seq, n_pages, 0, pages, n_pages);
    return DSV_OK;
}

int dsv_kv_page_ref(dsv_context *ctx, int32_t page) {
    int st = check_page(ctx, page);
    if (!st) dsv_kv_ref(&ctx->kv, page);
    if (!st) dsv_par_send_op(ctx, DSV_PAR_PAGE_REF, page, 0, 0, NULL, 0);
    return st;
}

int dsv_kv_page_unref(dsv_context *ctx, int32_t page) {
    int st = check_page(ctx, page);
    if (!st) dsv_kv_unref(&ctx->kv, page);
    if (!st) dsv_par_send_op(ctx, DSV_PAR_PAGE_UNREF, page, 0, 0, NULL, 0);
    return st;
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
