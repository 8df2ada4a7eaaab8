/* ops_ref.c: the scalar reference kernels (the oracle; never deleted).
 *
 * Written for clarity and exact rounding, not speed: each loop mirrors the
 * reference computation it names. Fast variants must agree with these within
 * the per-op tolerances of tests/test_kernels.c. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ops.h"

static void act_quant_ref(uint8_t *q, float *s, const dsv_bf16 *x, int n, int scale_fmt) {
    dsv_act_quant_bf16(q, s, x, n, scale_fmt);
}

static void dequant_ref(dsv_bf16 *y, const uint8_t *q, const float *s, int n) {
    for (int i = 0; i < n; i++)
        /* model.py: (kv_fp8.float() * kv_scale).to(bf16) */
        y[i] = dsv_f32_to_bf16(dsv_e4m3_to_f32(q[i]) * s[i / DSV_QBLOCK]);
}

/* The generic packing of an fp8 linear's input: codes [m][K], then the
 * scales [m][K/128] from the next 64-byte boundary. */
static float *ref_scales(const void *xp, int m, int K) {
    return (float *)((char *)xp + (((size_t)m * K + 63) & ~(size_t)63));
}

static void lin_pack_fp8_ref(void *xp, const dsv_bf16 *x, int m, int K, int i0, int i1, int scale_fmt) {
    float *xs = ref_scales(xp, m, K);
    for (int i = i0; i < i1; i++)
        dsv_act_quant_bf16((uint8_t *)xp + (size_t)i * K, xs + (size_t)i * (K / DSV_QBLOCK), x + (size_t)i * K, K,
                           scale_fmt);
}

static void linear_fp8_ref(dsv_bf16 *y, int ldy, const void *xp, const dsv_linear *w, int m, int n0, int n1,
                           void *scratch) {
    (void)scratch;
    const int K = w->n_in, nb = K / DSV_QBLOCK;
    const uint8_t *W = w->w, *xq = xp;
    const float *xs = ref_scales(xp, m, K);
    for (int n = n0; n < n1; n++) {
        const uint8_t *wr = W + (size_t)n * w->ld;
        const float *ws = w->scale + (size_t)(n / DSV_QBLOCK) * w->scale_ld;
        for (int i = 0; i < m; i++) {
            const uint8_t *xr = xq + (size_t)i * K;
            float acc = 0;
            for (int b = 0; b < nb; b++) {
                float blk = 0;
                for (int k = b * DSV_QBLOCK; k < (b + 1) * DSV_QBLOCK; k++)
                    blk += dsv_e4m3_to_f32(xr[k]) * dsv_e4m3_to_f32(wr[k]);
                acc += blk * (xs[(size_t)i * nb + b] * ws[b]);
            }
            y[(size_t)i * ldy + n] = dsv_f32_to_bf16(acc);
        }
    }
}

/* fp8_gemm with float weights: linear_fp8_ref's loops, the weight read as
 * stored and the block sum scaled by the activation's scale alone. */
static void linear_fp8x_ref(dsv_bf16 *y, int ldy, const void *xp, const dsv_linear *w, int m, int n0, int n1,
                            void *scratch) {
    (void)scratch;
    const int K = w->n_in, nb = K / DSV_QBLOCK;
    const uint8_t *xq = xp;
    const float *xs = ref_scales(xp, m, K);
    for (int n = n0; n < n1; n++)
        for (int i = 0; i < m; i++) {
            const uint8_t *xr = xq + (size_t)i * K;
            float acc = 0;
            for (int b = 0; b < nb; b++) {
                float blk = 0;
                for (int k = b * DSV_QBLOCK; k < (b + 1) * DSV_QBLOCK; k++)
                    blk += dsv_e4m3_to_f32(xr[k]) * dsv_weight_at(w, (long)n * w->ld + k, 0);
                acc += blk * xs[(size_t)i * nb + b];
            }
            y[(size_t)i * ldy + n] = dsv_f32_to_bf16(acc);
        }
}

static void linear_bf16_ref(dsv_bf16 *y, int ldy, const void *xp, const dsv_linear *w, int m, int n0, int n1,
                            void *scratch) {
    (void)scratch;
    const int K = w->n_in;
    const dsv_bf16 *x = xp;
    for (int n = n0; n < n1; n++)
        for (int i = 0; i < m; i++) {
            const dsv_bf16 *xr = x + (size_t)i * K;
            float acc = 0;
            for (int k = 0; k < K; k++)
                acc += dsv_bf16_to_f32(xr[k]) * dsv_weight_at(w, (long)n * w->ld + k, 1);
            y[(size_t)i * ldy + n] = dsv_f32_to_bf16(acc);
        }
}

static void linear_f32_ref(float *y, int ldy, const float *x, const dsv_linear *w, int m, int n0, int n1,
                           void *scratch) {
    (void)scratch;
    const int K = w->n_in;
    for (int n = n0; n < n1; n++)
        for (int i = 0; i < m; i++) {
            const float *xr = x + (size_t)i * K;
            float acc = 0;
            for (int k = 0; k < K; k++) acc += xr[k] * dsv_weight_at(w, (long)n * w->ld + k, 0);
            y[(size_t)i * ldy + n] = acc;
        }
}

static void index_q_pack_ref(void *qp, const uint8_t *q8, int n_heads) {
    memcpy(qp, q8, (size_t)n_heads * 128);
}

static void index_score_ref(float *out, int ldo, const void *qp, const float *w, int n_heads, int nq,
                            const uint8_t *k8, const float *ks, int n, void *scratch) {
    (void)scratch;
    for (int t = 0; t < nq; t++) {
        const uint8_t *q8 = (const uint8_t *)qp + (size_t)t * dsv_index_q_bytes(n_heads);
        const float *wt = w + (size_t)t * n_heads;
        for (int j = 0; j < n; j++) {
            const uint8_t *k = k8 + (size_t)j * 128;
            float sum = 0;
            for (int h = 0; h < n_heads; h++) {
                const uint8_t *q = q8 + (size_t)h * 128;
                float dot = 0;
                for (int d = 0; d < 128; d++) dot += dsv_e4m3_to_f32(q[d]) * dsv_e4m3_to_f32(k[d]);
                sum += (dot > 0 ? dot : 0) * wt[h];
            }
            out[(size_t)t * ldo + j] = sum * ks[j];
        }
    }
}

static float dot_bf16(const dsv_bf16 *a, const dsv_bf16 *b, int n) {
    float s = 0;
    for (int i = 0; i < n; i++) s += dsv_bf16_to_f32(a[i]) * dsv_bf16_to_f32(b[i]);
    return s;
}

static void mqa_scores_ref(float *S, int lds, const dsv_bf16 *q_abs, const dsv_bf16 *q_pe, const dsv_bf16 *kv,
                           const dsv_bf16 *pe, int H, int C, int R, float scale, int j0, int j1, const dsv_prefetch *pf,
                           float *scratch) {
    (void)scratch; (void)pf; /* the reference is plain: a prefetch changes no result */
    for (int h = 0; h < H; h++) {
        const dsv_bf16 *qa = q_abs + (size_t)h * C, *qp = q_pe + (size_t)h * R;
        for (int j = j0; j < j1; j++) {
            /* (einsum(q_abs, kv) + einsum(q_pe, pe)) * scale, each a bf16 tensor. */
            float a = dsv_round_bf16(dot_bf16(qa, kv + (size_t)j * C, C));
            float b = dsv_round_bf16(dot_bf16(qp, pe + (size_t)j * R, R));
            S[(size_t)h * lds + j] = dsv_round_bf16(dsv_round_bf16(a + b) * scale);
        }
    }
}

static void mqa_pv_ref(dsv_bf16 *o_lat, const dsv_bf16 *P, int ldp, const dsv_bf16 *kv, const void *kvp, int n, int H,
                       int C, int c0, int c1, float *scratch) {
    (void)kvp;
    float *acc = scratch;
    for (int h = 0; h < H; h++) {
        for (int c = c0; c < c1; c++) acc[c - c0] = 0;
        for (int j = 0; j < n; j++) {
            const float p = dsv_bf16_to_f32(P[(size_t)h * ldp + j]);
            const dsv_bf16 *r = kv + (size_t)j * C;
            for (int c = c0; c < c1; c++) acc[c - c0] += p * dsv_bf16_to_f32(r[c]);
        }
        for (int c = c0; c < c1; c++) o_lat[(size_t)h * C + c] = dsv_f32_to_bf16(acc[c - c0]);
    }
}

static void mha_attn_ref(dsv_bf16 *o, const dsv_bf16 *q, int T, const int32_t *idx_all, int ldi,
                         const int32_t *n_sel, const dsv_bf16 *kvb, const dsv_bf16 *pe, int E, int H, int N, int R,
                         int V, float scale, int h0, int h1, float *scratch) {
    (void)E;
    const size_t row = (size_t)(N + V);
    for (int t = 0; t < T; t++) {
        const int32_t *idx = idx_all + (size_t)t * ldi;
        const int n = n_sel[t];
        float *s = scratch, *acc = scratch + n;
        for (int h = h0; h < h1; h++) {
            const dsv_bf16 *qh = q + ((size_t)t * H + h) * (N + R);
            for (int j = 0; j < n; j++) {
                /* One einsum over the concatenated [nope | rope] head: one fp32
                 * accumulation, rounded to bf16, then scaled in bf16. */
                const dsv_bf16 *k = kvb + ((size_t)idx[j] * H + h) * row;
                const dsv_bf16 *p = pe + (size_t)idx[j] * R;
                float d = 0;
                for (int i = 0; i < N; i++) d += dsv_bf16_to_f32(qh[i]) * dsv_bf16_to_f32(k[i]);
                for (int i = 0; i < R; i++) d += dsv_bf16_to_f32(qh[N + i]) * dsv_bf16_to_f32(p[i]);
                s[j] = dsv_round_bf16(dsv_round_bf16(d) * scale);
            }
            dsv_softmax_bf16(s, n);
            for (int v = 0; v < V; v++) acc[v] = 0;
            for (int j = 0; j < n; j++) {
                const dsv_bf16 *vr = kvb + ((size_t)idx[j] * H + h) * row + N;
                for (int v = 0; v < V; v++) acc[v] += s[j] * dsv_bf16_to_f32(vr[v]);
            }
            for (int v = 0; v < V; v++) o[((size_t)t * H + h) * V + v] = dsv_f32_to_bf16(acc[v]);
        }
    }
}

static void absorb_q_ref(dsv_bf16 *q_abs, const dsv_bf16 *q_nope, const dsv_linear *wkv_b,
                         int row0, int N, float *acc) {
    const int C = wkv_b->n_in;
    for (int c = 0; c < C; c++) acc[c] = 0;
    for (int d = 0; d < N; d++) {
        float q = dsv_bf16_to_f32(q_nope[d]);
        for (int c = 0; c < C; c++) acc[c] += q * dsv_wkvb_at(wkv_b, row0 + d, c);
    }
    for (int c = 0; c < C; c++) q_abs[c] = dsv_f32_to_bf16(acc[c]);
}

static void absorb_o_ref(dsv_bf16 *o, const dsv_bf16 *o_lat, const dsv_linear *wkv_b, int row0,
                         int V) {
    const int C = wkv_b->n_in;
    for (int d = 0; d < V; d++) {
        float acc = 0;
        for (int c = 0; c < C; c++) acc += dsv_bf16_to_f32(o_lat[c]) * dsv_wkvb_at(wkv_b, row0 + d, c);
        o[d] = dsv_f32_to_bf16(acc);
    }
}

const dsv_kernels dsv_kernels_ref = {
    .name = "generic",
    .act_quant = act_quant_ref,
    .dequant = dequant_ref,
    .lin_pack_fp8 = lin_pack_fp8_ref,
    .linear_fp8 = linear_fp8_ref,
    .lin_pack_fp8x = lin_pack_fp8_ref,
    .linear_fp8x = linear_fp8x_ref,
    .lin_pack_bf16 = NULL,
    .linear_bf16 = linear_bf16_ref,
    .linear_f32 = linear_f32_ref,
    .index_q_pack = index_q_pack_ref,
    .index_score = index_score_ref,
    .mqa_scores = mqa_scores_ref,
    .mqa_pack = NULL,
    .mqa_pv = mqa_pv_ref,
    .softmax_bf16 = dsv_softmax_bf16,
    .mha_attn = mha_attn_ref,
    .rmsnorm = dsv_rmsnorm,
    .rmsnorm_residual = dsv_rmsnorm_residual,
    .rope = dsv_rope,
    .hadamard128 = dsv_hadamard128,
    .swiglu = dsv_swiglu,
    .axpy_bf16 = dsv_axpy_bf16,
    .absorb_q = absorb_q_ref,
    .absorb_o = absorb_o_ref,
};

/* ---- small shared ops --------------------------------------------------- */

void dsv_softmax_bf16(float *x, int n) {
    float mx = -INFINITY;
    double sum = 0;
    for (int i = 0; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    for (int i = 0; i < n; i++) { x[i] = expf(x[i] - mx); sum += x[i]; }
    float inv = 1.0f / (float)sum;
    for (int i = 0; i < n; i++) x[i] = dsv_round_bf16(x[i] * inv);
}

/* Norm statistics are summed in double: torch reduces in fp32 with a tree of
 * partial sums, which lands much closer to the exact sum than a sequential
 * fp32 loop would; a one-ulp change of the scale flips bf16 roundings. */
void dsv_rmsnorm(dsv_bf16 *y, const dsv_bf16 *x, const float *w, int n, float eps) {
    double ss = 0;
    for (int i = 0; i < n; i++) { float v = dsv_bf16_to_f32(x[i]); ss += (double)(v * v); }
    float r = 1.0f / sqrtf((float)(ss / n) + eps);
    for (int i = 0; i < n; i++) y[i] = dsv_f32_to_bf16(w[i] * (dsv_bf16_to_f32(x[i]) * r));
}

void dsv_rmsnorm_residual(dsv_bf16 *y, dsv_bf16 *res, const dsv_bf16 *x, const float *w,
                          int n, float eps) {
    double ss = 0;
    for (int i = 0; i < n; i++) {
        float v = dsv_bf16_to_f32(x[i]) + dsv_bf16_to_f32(res[i]);
        ss += (double)(v * v);
    }
    float r = 1.0f / sqrtf((float)(ss / n) + eps);
    for (int i = 0; i < n; i++) {
        /* The norm uses the fp32 sum; only the stored residual is rounded. */
        float v = dsv_bf16_to_f32(x[i]) + dsv_bf16_to_f32(res[i]);
        y[i] = dsv_f32_to_bf16(w[i] * (v * r));
        res[i] = dsv_f32_to_bf16(v);
    }
}

void dsv_layernorm(dsv_bf16 *y, const dsv_bf16 *x, const float *w, const float *b, int n,
                   float eps) {
    double sum = 0, sq = 0;
    for (int i = 0; i < n; i++) sum += dsv_bf16_to_f32(x[i]);
    float mean = (float)(sum / n);
    for (int i = 0; i < n; i++) { double d = (double)dsv_bf16_to_f32(x[i]) - mean; sq += d * d; }
    float rstd = 1.0f / sqrtf((float)(sq / n) + eps);
    for (int i = 0; i < n; i++)
        y[i] = dsv_f32_to_bf16((dsv_bf16_to_f32(x[i]) - mean) * rstd * w[i] + b[i]);
}

void dsv_rope(dsv_bf16 *x, const float *cos, const float *sin, int n_half, int interleaved) {
    for (int i = 0; i < n_half; i++) {
        int i0 = interleaved ? 2 * i : i, i1 = interleaved ? 2 * i + 1 : i + n_half;
        float a = dsv_bf16_to_f32(x[i0]), b = dsv_bf16_to_f32(x[i1]);
        /* (a + ib)(cos + i sin), as complex64 multiplication. */
        x[i0] = dsv_f32_to_bf16(a * cos[i] - b * sin[i]);
        x[i1] = dsv_f32_to_bf16(a * sin[i] + b * cos[i]);
    }
}

void dsv_hadamard128(dsv_bf16 *x) {
    float v[128];
    for (int i = 0; i < 128; i++) v[i] = dsv_bf16_to_f32(x[i]);
    for (int h = 1; h < 128; h *= 2)
        for (int i = 0; i < 128; i += 2 * h)
            for (int j = i; j < i + h; j++) {
                float a = v[j], b = v[j + h];
                v[j] = a + b;
                v[j + h] = a - b;
            }
    const float scale = 0.088388347648318440550f; /* 128^-0.5 */
    for (int i = 0; i < 128; i++) x[i] = dsv_f32_to_bf16(v[i] * scale);
}

void dsv_swiglu(dsv_bf16 *y, const dsv_bf16 *a, const dsv_bf16 *b, int n) {
    for (int i = 0; i < n; i++) {
        float x = dsv_bf16_to_f32(a[i]);
        float silu = x / (1.0f + expf(-x));
        y[i] = dsv_f32_to_bf16(silu * dsv_bf16_to_f32(b[i]));
    }
}

void dsv_axpy_bf16(float *y, const dsv_bf16 *x, float w, int n) {
    for (int i = 0; i < n; i++) y[i] += dsv_bf16_to_f32(x[i]) * w;
}

/* Ranking: higher score first, then lower position; NaN ranks last. */
static inline int ranks_before(const float *s, int32_t a, int32_t b) {
    float x = s[a], y = s[b];
    if (x != x) return 0;
    if (y != y) return 1;
    return x > y || (x == y && a < b);
}

static void insertion_sort(int32_t *v, int n, const float *s) {
    for (int i = 1; i < n; i++) {
        int32_t t = v[i];
        int j = i - 1;
        while (j >= 0 && ranks_before(s, t, v[j])) { v[j + 1] = v[j]; j--; }
        v[j + 1] = t;
    }
}

/* Quickselect: afterwards v[0..k) hold the k best (any order). */
static void select_k(int32_t *v, int n, int k, const float *s) {
    int lo = 0, hi = n - 1;
    while (hi - lo > 16) {
        int mid = lo + (hi - lo) / 2;
        /* Median of three as the pivot. */
        if (ranks_before(s, v[mid], v[lo])) { int32_t t = v[mid]; v[mid] = v[lo]; v[lo] = t; }
        if (ranks_before(s, v[hi], v[lo])) { int32_t t = v[hi]; v[hi] = v[lo]; v[lo] = t; }
        if (ranks_before(s, v[hi], v[mid])) { int32_t t = v[hi]; v[hi] = v[mid]; v[mid] = t; }
        int32_t pivot = v[mid];
        int i = lo, j = hi;
        while (i <= j) {
            while (ranks_before(s, v[i], pivot)) i++;
            while (ranks_before(s, pivot, v[j])) j--;
            if (i <= j) { int32_t t = v[i]; v[i] = v[j]; v[j] = t; i++; j--; }
        }
        if (k - 1 <= j) hi = j;
        else if (k - 1 >= i) lo = i;
        else return;
    }
    insertion_sort(v + lo, hi - lo + 1, s);
}

static void sort_ranked(int32_t *v, int n, const float *s) {
    /* Heap sort (O(k log k), no recursion) with "ranks before" as the less-than:
     * the root is the worst element, so the array ends best first. */
    for (int start = n / 2 - 1; start >= 0; start--) {
        int r = start;
        for (;;) {
            int c = 2 * r + 1;
            if (c >= n) break;
            if (c + 1 < n && ranks_before(s, v[c], v[c + 1])) c++;
            if (!ranks_before(s, v[r], v[c])) break;
            int32_t t = v[r]; v[r] = v[c]; v[c] = t;
            r = c;
        }
    }
    for (int end = n - 1; end > 0; end--) {
        int32_t t = v[0]; v[0] = v[end]; v[end] = t;
        int r = 0;
        for (;;) {
            int c = 2 * r + 1;
            if (c >= end) break;
            if (c + 1 < end && ranks_before(s, v[c], v[c + 1])) c++;
            if (!ranks_before(s, v[r], v[c])) break;
            int32_t t2 = v[r]; v[r] = v[c]; v[c] = t2;
            r = c;
        }
    }
}

void dsv_topk(int32_t *idx, const float *scores, int n, int k, int32_t *scratch) {
    for (int i = 0; i < n; i++) scratch[i] = i;
    if (k < n) select_k(scratch, n, k, scores);
    sort_ranked(scratch, k, scores);
    memcpy(idx, scratch, (size_t)k * sizeof *idx);
}
