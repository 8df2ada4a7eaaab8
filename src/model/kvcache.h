/* kvcache.h: the paged KV cache of every sequence, in DeepSeek's production
 * layouts (FlashMLA's 656-byte latent record, DeepGEMM's indexer keys).
 *
 * Memory is a pool of pages of DSV_PAGE (64) tokens; a page holds those
 * tokens for every layer. Per layer a page is:
 *   latent records [64][lat_bytes]: kv_lora e4m3 codes, kv_lora/128 fp32
 *     scales, qk_rope bf16 k_pe values (512 + 16 + 128 = 656 bytes for the
 *     real model);
 *   indexer keys [64][128] e4m3, then their fp32 scales [64] (132 bytes a token).
 * These hold exactly what the reference caches: its kv_cache is the bf16
 * value bf16(e4m3 * scale) of the same act_quant round trip, recomputed here
 * on read (exact under ue8m0, and the same rounding under scale_fmt null);
 * its pe_cache is bf16; its indexer caches are these codes and scales.
 * A sequence owns a page table; pages are reference-counted so sequences can
 * share a prefix. */
#ifndef DSV_KVCACHE_H
#define DSV_KVCACHE_H

#include <stddef.h>
#include <stdint.h>

#include "dsv32.h"
#include "base/numeric.h"

typedef struct dsv_kv {
    int n_layers, kv_lora, rope, idx_dim;
    size_t lat_bytes;     /* per token: kv_lora + 4 * kv_lora/128 + 2 * rope */
    size_t layer_bytes;   /* per page and layer */
    size_t page_bytes;    /* per page, all layers */
    uint8_t *mem;         /* [n_pages][page_bytes] */
    size_t map_bytes;
    int64_t n_pages;
    int32_t *free_list;   /* stack of free page ids */
    int64_t n_free;
    int32_t *refs;        /* [n_pages] */
} dsv_kv;

typedef struct dsv_seq {
    int len;              /* tokens cached */
    int n_pages;          /* pages mapped (>= ceil(len / DSV_PAGE)) */
    int32_t *pages;       /* [max_pages] page ids */
} dsv_seq;

/* Bytes of one page (all layers) for these sizes. */
size_t dsv_kv_page_size(int n_layers, int kv_lora, int rope, int idx_dim);
int dsv_kv_init(dsv_kv *kv, int n_layers, int kv_lora, int rope, int idx_dim, int64_t n_pages);
void dsv_kv_free(dsv_kv *kv);
/* Maps pages so that seq can hold `len` tokens; all or nothing. */
int dsv_kv_reserve(dsv_kv *kv, dsv_seq *seq, int len, int max_pages);
/* Drops pages beyond what `len` tokens need. */
void dsv_kv_shrink(dsv_kv *kv, dsv_seq *seq, int len);
/* Pages a reserve to `len` tokens would take from the pool. */
int dsv_kv_pages_needed(const dsv_seq *seq, int len);
/* One more / one less reference to page p (which must be in use); the last
 * unref returns it to the pool. */
void dsv_kv_ref(dsv_kv *kv, int32_t p);
void dsv_kv_unref(dsv_kv *kv, int32_t p);
/* Copy-on-write: if the page holding position pos is shared (refs > 1),
 * gives seq a private copy of it. DSV_ERR_FULL (nothing changed) when the
 * pool has no page for the copy. */
int dsv_kv_unshare(dsv_kv *kv, dsv_seq *seq, int pos);

static inline uint8_t *dsv_kv_layer(const dsv_kv *kv, const dsv_seq *s, int layer, int pos) {
    return kv->mem + (size_t)s->pages[pos / DSV_PAGE] * kv->page_bytes + (size_t)layer * kv->layer_bytes;
}
/* The latent record of (layer, pos): e4m3 codes, then scales, then k_pe. */
static inline uint8_t *dsv_kv_latent(const dsv_kv *kv, const dsv_seq *s, int layer, int pos) {
    return dsv_kv_layer(kv, s, layer, pos) + (size_t)(pos % DSV_PAGE) * kv->lat_bytes;
}
/* The indexer key codes [n][128] of the page holding pos, from pos's slot. */
static inline uint8_t *dsv_kv_index_keys(const dsv_kv *kv, const dsv_seq *s, int layer, int pos) {
    return dsv_kv_layer(kv, s, layer, pos) + DSV_PAGE * kv->lat_bytes + (size_t)(pos % DSV_PAGE) * kv->idx_dim;
}
static inline float *dsv_kv_index_scales(const dsv_kv *kv, const dsv_seq *s, int layer, int pos) {
    return (float *)(dsv_kv_layer(kv, s, layer, pos) + DSV_PAGE * (kv->lat_bytes + kv->idx_dim)) +
           pos % DSV_PAGE;
}

/* Writes a token's latent (act_quant codes and scales) and k_pe. */
void dsv_kv_put_latent(const dsv_kv *kv, uint8_t *rec, const uint8_t *codes, const float *scales,
                       const dsv_bf16 *k_pe);
/* Reads a token's latent back as the reference's bf16 values, and its k_pe,
 * with the dequant kernel of the set k (the calling context's). */
struct dsv_kernels;
void dsv_kv_get_latent(const struct dsv_kernels *k, const dsv_kv *kv, const uint8_t *rec, dsv_bf16 *latent,
                       dsv_bf16 *k_pe);

#endif
