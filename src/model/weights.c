/* weights.c: what a loaded model's matrices are, for reports, and reading
 * every page of them before a measurement.
 *
 * Both walk the same set: every matrix the forward pass reads (each layer's
 * linears, routed and shared experts, the lm head) with its fp8 block scales,
 * and the embedding table. A model split across processes has only this
 * process's part here (the other ranks' experts and rows are not mapped).
 *
 * The type mix counts the bytes each matrix type takes, so a GGUF written
 * with a mixed policy (Q4_K_M: Q4_K experts, Q6_K down projections, Q8_0 or
 * BF16 attention) is described by what it streams rather than by one name.
 * The label of a GGUF is llama.cpp's own name for the file type
 * (general.file_type, as llama-quantize and the converter write it), else
 * the type holding the most bytes. */
#include <stdio.h>
#include <string.h>

#include "model.h"
#include "base/util.h"

/* A matrix kind: a ggml type (from a GGUF) or a dtype, as one index. */
enum { KIND_DT0 = DSV_GGML_NTYPES, N_KIND = DSV_GGML_NTYPES + DSV_DT_COUNT };

typedef struct walk {
    uint64_t bytes[N_KIND];
    /* For touching: progress over the total, and the running sum read so
     * the reads cannot be optimised away. */
    int touch;
    uint64_t done, total;
    void (*progress)(uint64_t done, uint64_t total, void *user);
    void *user;
    double last;
    unsigned sum;
} walk;

/* The smallest page size of x86 and arm64: a stride of it reaches every page. */
static size_t page_size(void) { return 4096; }

/* Where the touched bytes' sum goes, so the compiler keeps every read. */
static volatile unsigned touch_sink;

/* Reads one byte of every page of [p, p + n): from disk if the page cache
 * does not hold it, then into this process's page tables. */
static void touch(walk *w, const void *p, size_t n) {
    const volatile unsigned char *c = p;
    for (size_t o = 0; o < n; o += page_size()) {
        w->sum += c[o];
        /* Progress about ten times a second, by bytes. */
        if (!(o & ((1u << 24) - 1)) && w->progress) {
            double now = dsv_time();
            if (now - w->last >= 0.1) {
                w->last = now;
                w->progress(w->done + o, w->total, w->user);
            }
        }
    }
    if (n) w->sum += c[n - 1];
    w->done += n;
}

static void region(walk *w, int kind, const void *p, size_t n) {
    if (!p || !n) return;
    if (kind >= 0) w->bytes[kind] += n;
    if (w->touch) touch(w, p, n);
}

/* A matrix's n_out rows of `used` bytes, `stride` apart: its bytes counted
 * (a slice of columns counts its own, not the gaps), its span touched. */
static void rows(walk *w, int kind, const void *p, int n_out, size_t stride, size_t used) {
    if (!p || n_out <= 0 || !used) return;
    w->bytes[kind] += (size_t)n_out * used;
    if (w->touch) touch(w, p, (size_t)(n_out - 1) * stride + used);
}

/* One matrix: its rows as stored (ld apart) and its block scales. A slice
 * of a wider matrix's columns (a split's part) spans from its first row's
 * start to its last row's end, no further: the matrix may end its file. */
static void linear(walk *w, const dsv_linear *l) {
    if (!l->w || l->n_out <= 0) return;
    if (l->gtype) {
        rows(w, (int)l->gtype, l->w, l->n_out, dsv_ggml_row_size(l->gtype, l->ld), dsv_ggml_row_size(l->gtype, l->n_in));
        return;
    }
    const size_t es = dsv_dtype_size(l->dtype);
    rows(w, KIND_DT0 + (int)l->dtype, l->w, l->n_out, (size_t)l->ld * es, (size_t)l->n_in * es);
    if (l->scale) /* counted with the fp8 weights they belong to */
        region(w, KIND_DT0 + (int)l->dtype, l->scale,
               (size_t)((l->n_out + DSV_QBLOCK - 1) / DSV_QBLOCK) * (size_t)l->scale_ld * sizeof(float));
}

static void expert(walk *w, const dsv_expert *e) {
    linear(w, &e->w1);
    linear(w, &e->w2);
    linear(w, &e->w3);
}

static void walk_model(walk *w, const dsv_model *m) {
    const dsv_config *c = &m->cfg;
    /* The embedding is read a row per token: touched, not in the mix. */
    if (w->touch && m->embed) {
        const int rows = m->sh.vocab1 > m->sh.vocab0 ? m->sh.vocab1 - m->sh.vocab0 : c->vocab_size;
        region(w, -1, m->embed, (size_t)rows * (size_t)c->dim * dsv_dtype_size(m->embed_dtype));
    }
    linear(w, &m->head);
    for (int il = 0; il < c->n_layers; il++) {
        const dsv_layer *ly = &m->layers[il];
        const dsv_linear *ls[] = {&ly->wq_a, &ly->wq_b, &ly->wkv_a, &ly->wkv_b, &ly->wo,
                                  &ly->idx_wq_b, &ly->idx_wk, &ly->idx_wproj, &ly->gate};
        for (size_t k = 0; k < sizeof ls / sizeof *ls; k++) linear(w, ls[k]);
        /* A GGUF's attn_k_b / attn_v_b blocks, which decode reads besides
         * the bf16 wkv_b that prefill reads (model.h). */
        if (ly->k_b.gtype) linear(w, &ly->k_b);
        if (ly->v_b.gtype) linear(w, &ly->v_b);
        if (!ly->is_moe) {
            expert(w, &ly->mlp);
            continue;
        }
        if (ly->experts)
            for (int e = 0; e < c->n_routed_experts; e++) expert(w, &ly->experts[e]);
        expert(w, &ly->shared);
    }
}

static const char *kind_name(int k) {
    return k >= KIND_DT0 ? dsv_dtype_name((dsv_dtype)(k - KIND_DT0)) : dsv_ggml_name((uint32_t)k);
}

/* llama.cpp's names of its file types (llama_ftype), as it prints them. */
static const char *ftype_name(int64_t ft) {
    static const struct { int id; const char *name; } names[] = {
        {0, "F32"}, {1, "F16"}, {2, "Q4_0"}, {3, "Q4_1"}, {7, "Q8_0"}, {8, "Q5_0"}, {9, "Q5_1"},
        {10, "Q2_K"}, {11, "Q3_K_S"}, {12, "Q3_K_M"}, {13, "Q3_K_L"}, {14, "Q4_K_S"}, {15, "Q4_K_M"},
        {16, "Q5_K_S"}, {17, "Q5_K_M"}, {18, "Q6_K"}, {19, "IQ2_XXS"}, {20, "IQ2_XS"}, {21, "Q2_K_S"},
        {22, "IQ3_XS"}, {23, "IQ3_XXS"}, {24, "IQ1_S"}, {25, "IQ4_NL"}, {26, "IQ3_S"}, {27, "IQ3_M"},
        {28, "IQ2_S"}, {29, "IQ2_M"}, {30, "IQ4_XS"}, {31, "IQ1_M"}, {32, "BF16"}, {36, "TQ1_0"},
        {37, "TQ2_0"}, {38, "MXFP4_MOE"},
    };
    ft &= ~(int64_t)1024; /* LLAMA_FTYPE_GUESSED: the name is the same */
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        if (names[i].id == ft) return names[i].name;
    return NULL;
}

void dsv_model_weight_types(const dsv_model *m, char *label, size_t label_cap, char *mix, size_t mix_cap) {
    walk w;
    memset(&w, 0, sizeof w);
    walk_model(&w, m);
    uint64_t total = 0;
    int top = -1;
    for (int k = 0; k < N_KIND; k++) {
        total += w.bytes[k];
        if (w.bytes[k] && (top < 0 || w.bytes[k] > w.bytes[top])) top = k;
    }
    if (mix && mix_cap) {
        /* Largest first; each kind printed once. */
        size_t o = 0;
        int used[N_KIND] = {0};
        mix[0] = 0;
        for (;;) {
            int best = -1;
            for (int k = 0; k < N_KIND; k++)
                if (!used[k] && w.bytes[k] && (best < 0 || w.bytes[k] > w.bytes[best])) best = k;
            if (best < 0 || o >= mix_cap) break;
            used[best] = 1;
            int n = snprintf(mix + o, mix_cap - o, "%s%s %.0f%%", o ? ", " : "", kind_name(best),
                             100.0 * (double)w.bytes[best] / (double)total);
            o += n > 0 ? (size_t)n : 0;
        }
    }
    if (!label || !label_cap) return;
    if (!m->gguf) {
        snprintf(label, label_cap, "%s", m->cfg.fp8 ? "fp8" : "bf16");
        return;
    }
    int64_t ft = -1;
    const char *name = NULL;
    if (dsv_gguf_kv_find(m->gguf, "general.file_type") >= 0 &&
        dsv_gguf_get_int(m->gguf, "general.file_type", 0, 1 << 20, &ft) == DSV_OK)
        name = ftype_name(ft);
    snprintf(label, label_cap, "gguf %s", name ? name : top >= 0 ? kind_name(top) : "?");
}

uint64_t dsv_model_touch(const dsv_model *m, void (*progress)(uint64_t done, uint64_t total, void *user), void *user) {
    walk w;
    memset(&w, 0, sizeof w);
    walk_model(&w, m); /* the sizes first, for the progress total */
    for (int k = 0; k < N_KIND; k++) w.total += w.bytes[k];
    if (m->embed) {
        const int rows = m->sh.vocab1 > m->sh.vocab0 ? m->sh.vocab1 - m->sh.vocab0 : m->cfg.vocab_size;
        w.total += (uint64_t)rows * (uint64_t)m->cfg.dim * dsv_dtype_size(m->embed_dtype);
    }
    memset(w.bytes, 0, sizeof w.bytes);
    w.touch = 1;
    w.progress = progress;
    w.user = user;
    w.last = dsv_time();
    walk_model(&w, m);
    if (progress) progress(w.done, w.total, user);
    touch_sink = w.sum;
    return w.done;
}
