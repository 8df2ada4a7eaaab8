/* kvcache.c: page pool and the latent record codec (see kvcache.h). */
#include "kvcache.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "kernels/ops.h"
#include "base/util.h"

static size_t latent_bytes(int kv_lora, int rope) {
    size_t b = (size_t)kv_lora + 4 * (size_t)(kv_lora / DSV_QBLOCK) + 2 * (size_t)rope;
    /* Keep records 4-byte aligned for the fp32 scales inside them. */
    return (b + 3) & ~(size_t)3;
}

size_t dsv_kv_page_size(int n_layers, int kv_lora, int rope, int idx_dim) {
    return (size_t)n_layers * DSV_PAGE * (latent_bytes(kv_lora, rope) + (size_t)idx_dim + 4);
}

int dsv_kv_init(dsv_kv *kv, int n_layers, int kv_lora, int rope, int idx_dim, int64_t n_pages) {
    memset(kv, 0, sizeof *kv);
    kv->n_layers = n_layers;
    kv->kv_lora = kv_lora;
    kv->rope = rope;
    kv->idx_dim = idx_dim;
    kv->lat_bytes = latent_bytes(kv_lora, rope);
    kv->layer_bytes = DSV_PAGE * (kv->lat_bytes + (size_t)idx_dim + 4);
    kv->page_bytes = (size_t)n_layers * kv->layer_bytes;
    kv->n_pages = n_pages;
    size_t total = (size_t)n_pages * kv->page_bytes;
    /* Anonymous mapping: untouched pages cost no memory until first written. */
    void *mem = mmap(NULL, total ? total : 1, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED)
        return dsv_error(DSV_ERR_NOMEM, "KV cache: cannot reserve %.1f MiB for %lld pages",
                         total / 1048576.0, (long long)n_pages);
#ifdef MADV_HUGEPAGE
    /* Decoding reads a few hundred bytes at each of thousands of scattered
     * positions per layer: with 4 KB pages nearly every read also misses the
     * TLB. Huge pages where the system allows them (advice only). */
    (void)madvise(mem, total ? total : 1, MADV_HUGEPAGE);
#endif
    kv->mem = mem;
    kv->map_bytes = total ? total : 1;
    kv->free_list = malloc((size_t)(n_pages ? n_pages : 1) * sizeof *kv->free_list);
    kv->refs = calloc((size_t)(n_pages ? n_pages : 1), sizeof *kv->refs);
    if (!kv->free_list || !kv->refs) {
        dsv_kv_free(kv);
        return dsv_error(DSV_ERR_NOMEM, "KV cache: out of memory");
    }
    /* Hand out low page ids first. */
    for (int64_t i = 0; i < n_pages; i++) kv->free_list[i] = (int32_t)(n_pages - 1 - i);
    kv->n_free = n_pages;
    return DSV_OK;
}

void dsv_kv_free(dsv_kv *kv) {
    if (kv->mem) munmap(kv->mem, kv->map_bytes);
    free(kv->free_list);
    free(kv->refs);
    memset(kv, 0, sizeof *kv);
}

int dsv_kv_pages_needed(const dsv_seq *seq, int len) {
    int want = (len + DSV_PAGE - 1) / DSV_PAGE;
    return want > seq->n_pages ? want - seq->n_pages : 0;
}

int dsv_kv_reserve(dsv_kv *kv, dsv_seq *seq, int len, int max_pages) {
    int need = dsv_kv_pages_needed(seq, len);
    if (seq->n_pages + need > max_pages)
        return dsv_error(DSV_ERR_FULL, "sequence of %d tokens exceeds the context size (%d tokens)", len,
                         max_pages * DSV_PAGE);
    if (need > kv->n_free)
        return dsv_error(DSV_ERR_FULL, "KV cache full: %d more pages needed, %lld free", need,
                         (long long)kv->n_free);
    for (int i = 0; i < need; i++) {
        int32_t p = kv->free_list[--kv->n_free];
        kv->refs[p] = 1;
        seq->pages[seq->n_pages++] = p;
    }
    return DSV_OK;
}

void dsv_kv_shrink(dsv_kv *kv, dsv_seq *seq, int len) {
    int keep = (len + DSV_PAGE - 1) / DSV_PAGE;
    while (seq->n_pages > keep) dsv_kv_unref(kv, seq->pages[--seq->n_pages]);
}

void dsv_kv_ref(dsv_kv *kv, int32_t p) {
    DSV_ASSERT(p >= 0 && p < kv->n_pages && kv->refs[p] > 0);
    kv->refs[p]++;
}

void dsv_kv_unref(dsv_kv *kv, int32_t p) {
    DSV_ASSERT(p >= 0 && p < kv->n_pages && kv->refs[p] > 0);
    if (--kv->refs[p] == 0) kv->free_list[kv->n_free++] = p;
}

int dsv_kv_unshare(dsv_kv *kv, dsv_seq *seq, int pos) {
    int i = pos / DSV_PAGE;
    if (i >= seq->n_pages || kv->refs[seq->pages[i]] == 1) return DSV_OK;
    if (kv->n_free == 0) return dsv_error(DSV_ERR_FULL, "KV cache full: no page for a copy of a shared page");
    int32_t old = seq->pages[i], p = kv->free_list[--kv->n_free];
    kv->refs[p] = 1;
    memcpy(kv->mem + (size_t)p * kv->page_bytes, kv->mem + (size_t)old * kv->page_bytes, kv->page_bytes);
    seq->pages[i] = p;
    dsv_kv_unref(kv, old);
    return DSV_OK;
}

void dsv_kv_put_latent(const dsv_kv *kv, uint8_t *rec, const uint8_t *codes, const float *scales,
                       const dsv_bf16 *k_pe) {
    memcpy(rec, codes, (size_t)kv->kv_lora);
    memcpy(rec + kv->kv_lora, scales, 4 * (size_t)(kv->kv_lora / DSV_QBLOCK));
    memcpy(rec + kv->kv_lora + 4 * (kv->kv_lora / DSV_QBLOCK), k_pe, 2 * (size_t)kv->rope);
}

void dsv_kv_get_latent(const dsv_kernels *k, const dsv_kv *kv, const uint8_t *rec, dsv_bf16 *latent,
                       dsv_bf16 *k_pe) {
    /* model.py: (kv_fp8.float() * kv_scale).to(bf16) */
    k->dequant(latent, rec, (const float *)(rec + kv->kv_lora), kv->kv_lora);
    if (k_pe) memcpy(k_pe, rec + kv->kv_lora + 4 * (kv->kv_lora / DSV_QBLOCK), 2 * (size_t)kv->rope);
}
