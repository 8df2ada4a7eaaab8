/* train_ops.c: the single operations of the training model, forward and
 * backward, in fp32 (see train.h for the contracts). Each one mirrors the
 * engine's op of the same name (ops_ref.c, moe.c) without its bf16/fp8
 * rounding; tests/test_train.c checks every backward against finite
 * differences. */
#include <math.h>
#include <string.h>

#include "model/route.h"
#include "train.h"
#include "base/util.h"

float dsv_tr_rmsnorm_fwd(float *y, const float *x, const float *w, int n, float eps) {
    double ss = 0;
    for (int i = 0; i < n; i++) ss += (double)x[i] * x[i];
    float r = 1.0f / sqrtf((float)(ss / n) + eps);
    for (int i = 0; i < n; i++) y[i] = w[i] * x[i] * r;
    return r;
}

/* With u = dy*w: dx = r*u - x * r³ * mean(u*x). */
void dsv_tr_rmsnorm_bwd(float *dx, float *dw, const float *dy, const float *x, const float *w, float r, int n) {
    double ux = 0;
    for (int i = 0; i < n; i++) {
        ux += (double)dy[i] * w[i] * x[i];
        if (dw) dw[i] += dy[i] * x[i] * r;
    }
    float c = (float)(ux / n) * r * r * r;
    for (int i = 0; i < n; i++) dx[i] += dy[i] * w[i] * r - x[i] * c;
}

void dsv_tr_layernorm_fwd(float *y, float *mean, float *rstd, const float *x, const float *w, const float *b,
                          int n, float eps) {
    double s = 0, sq = 0;
    for (int i = 0; i < n; i++) s += x[i];
    float mu = (float)(s / n);
    for (int i = 0; i < n; i++) sq += (double)(x[i] - mu) * (x[i] - mu);
    float r = 1.0f / sqrtf((float)(sq / n) + eps);
    for (int i = 0; i < n; i++) y[i] = (x[i] - mu) * r * w[i] + b[i];
    *mean = mu;
    *rstd = r;
}

/* With u = dy*w and xh = (x - mean)*rstd: dx = rstd * (u - mean(u) - xh*mean(u*xh)). */
void dsv_tr_layernorm_bwd(float *dx, float *dw, float *db, const float *dy, const float *x, const float *w,
                          float mean, float rstd, int n) {
    double su = 0, sux = 0;
    for (int i = 0; i < n; i++) {
        float xh = (x[i] - mean) * rstd, u = dy[i] * w[i];
        su += u;
        sux += (double)u * xh;
        if (dw) dw[i] += dy[i] * xh;
        if (db) db[i] += dy[i];
    }
    float mu = (float)(su / n), mux = (float)(sux / n);
    for (int i = 0; i < n; i++) {
        float xh = (x[i] - mean) * rstd;
        dx[i] += rstd * (dy[i] * w[i] - mu - xh * mux);
    }
}

void dsv_tr_rope(float *x, const float *cos, const float *sin, int n_half, int interleaved, int inverse) {
    for (int i = 0; i < n_half; i++) {
        int i0 = interleaved ? 2 * i : i, i1 = interleaved ? 2 * i + 1 : i + n_half;
        float a = x[i0], b = x[i1], c = cos[i], s = inverse ? -sin[i] : sin[i];
        x[i0] = a * c - b * s;
        x[i1] = a * s + b * c;
    }
}

void dsv_tr_hadamard(float *x, int n) {
    for (int h = 1; h < n; h *= 2)
        for (int i = 0; i < n; i += 2 * h)
            for (int j = i; j < i + h; j++) {
                float a = x[j], b = x[j + h];
                x[j] = a + b;
                x[j + h] = a - b;
            }
    float s = 1.0f / sqrtf((float)n);
    for (int i = 0; i < n; i++) x[i] *= s;
}

void dsv_tr_swiglu_fwd(float *y, const float *a, const float *b, int n) {
    for (int i = 0; i < n; i++) y[i] = a[i] / (1.0f + expf(-a[i])) * b[i];
}

void dsv_tr_swiglu_bwd(float *da, float *db, const float *dy, const float *a, const float *b, int n) {
    for (int i = 0; i < n; i++) {
        float sg = 1.0f / (1.0f + expf(-a[i])), silu = a[i] * sg;
        db[i] += dy[i] * silu;
        da[i] += dy[i] * b[i] * sg * (1.0f + a[i] * (1.0f - sg));
    }
}

/* Row blocks of queries: block [r0, r1) sees keys [0, r1), so the products
 * skip most of the masked upper triangle. */
enum { ATT_RB = 128 };

void dsv_tr_attn_fwd(float *o, long os, float *P, const float *q, long qs, const float *k, long ks, const float *v,
                     long vs, int T, int dk, int dv, float scale, const uint8_t *mask) {
    for (int r0 = 0; r0 < T; r0 += ATT_RB) {
        int r1 = r0 + ATT_RB < T ? r0 + ATT_RB : T, rb = r1 - r0;
        dsv_tr_gemm(P + (long)r0 * T, T, q + (long)r0 * qs, qs, 1, k, 1, ks, rb, r1, dk, 0);
        for (int t = r0; t < r1; t++) {
            float *p = P + (long)t * T;
            const uint8_t *m = mask ? mask + (long)t * T : NULL;
            float mx = -INFINITY;
            for (int j = 0; j <= t; j++)
                if (!m || m[j]) mx = fmaxf(mx, p[j] * scale);
            double sum = 0;
            for (int j = 0; j <= t; j++) {
                float e = (!m || m[j]) ? expf(p[j] * scale - mx) : 0.0f;
                p[j] = e;
                sum += e;
            }
            float inv = (float)(1.0 / sum);
            for (int j = 0; j <= t; j++) p[j] *= inv;
            memset(p + t + 1, 0, (size_t)(T - t - 1) * sizeof *p);
        }
        dsv_tr_gemm(o + (long)r0 * os, os, P + (long)r0 * T, T, 1, v, vs, 1, rb, dv, r1, 0);
    }
}

void dsv_tr_attn_bwd(float *dq, float *dk, float *dv, const float *dO, long os, const float *P, const float *q,
                     long qs, const float *k, long ks, const float *v, long vs, int T, int dk_, int dv_,
                     float scale, float *dS) {
    for (int r0 = 0; r0 < T; r0 += ATT_RB) {
        int r1 = r0 + ATT_RB < T ? r0 + ATT_RB : T, rb = r1 - r0;
        /* dP = dO·Vᵀ, then dS = P ⊙ (dP - Σ P dP) * scale. */
        dsv_tr_gemm(dS + (long)r0 * T, T, dO + (long)r0 * os, os, 1, v, 1, vs, rb, r1, dv_, 0);
        for (int t = r0; t < r1; t++) {
            const float *p = P + (long)t * T;
            float *d = dS + (long)t * T;
            double dot = 0;
            for (int j = 0; j <= t; j++) dot += (double)p[j] * d[j];
            for (int j = 0; j <= t; j++) d[j] = p[j] * (d[j] - (float)dot) * scale;
            for (int j = t + 1; j < r1; j++) d[j] = 0;
        }
        dsv_tr_gemm(dq + (long)r0 * qs, qs, dS + (long)r0 * T, T, 1, k, ks, 1, rb, dk_, r1, 1);
        dsv_tr_gemm(dk, ks, dS + (long)r0 * T, 1, T, q + (long)r0 * qs, qs, 1, r1, dk_, rb, 1);
        dsv_tr_gemm(dv, vs, P + (long)r0 * T, 1, T, dO + (long)r0 * os, os, 1, r1, dv_, rb, 1);
    }
}

float dsv_tr_xent(float *dl, const float *lg, int n, int target, float gscale) {
    float mx = -INFINITY;
    for (int i = 0; i < n; i++) mx = fmaxf(mx, lg[i]);
    double sum = 0;
    for (int i = 0; i < n; i++) sum += exp((double)(lg[i] - mx));
    float lse = mx + (float)log(sum), loss = lse - lg[target];
    if (dl) { /* dl may be lg itself */
        for (int i = 0; i < n; i++) dl[i] = expf(lg[i] - lse) * gscale;
        dl[target] -= gscale;
    }
    return loss;
}

float dsv_tr_kl(float *dI, const float *I, const float *p, const uint8_t *allow, int n, float gscale) {
    float mx = -INFINITY;
    for (int j = 0; j < n; j++)
        if (!allow || allow[j]) mx = fmaxf(mx, I[j]);
    double sum = 0;
    for (int j = 0; j < n; j++)
        if (!allow || allow[j]) sum += exp((double)(I[j] - mx));
    double lse = mx + log(sum), kl = 0;
    for (int j = 0; j < n; j++) {
        if (allow && !allow[j]) {
            if (dI) dI[j] = 0;
            continue;
        }
        double lq = I[j] - lse;
        if (p[j] > 0) kl += p[j] * (log((double)p[j]) - lq);
        if (dI) dI[j] = (float)(exp(lq) - p[j]) * gscale;
    }
    return (float)kl;
}

void dsv_tr_route_fwd(int32_t *idx, float *w, float *s, const float *logits, const float *bias,
                      const dsv_config *c) {
    const int E = c->n_routed_experts, K = c->n_activated_experts;
    float sc[1024];
    DSV_ASSERT(E <= 1024);
    for (int e = 0; e < E; e++) {
        s[e] = 1.0f / (1.0f + expf(-logits[e]));
        sc[e] = bias ? s[e] + bias[e] : s[e];
    }
    dsv_route_choose(c, sc, bias != NULL, idx);
    float sum = 0;
    for (int k = 0; k < K; k++) sum += s[idx[k]];
    for (int k = 0; k < K; k++)
        w[k] = (c->norm_topk_prob ? s[idx[k]] / sum : s[idx[k]]) * c->route_scale;
}

/* w_k = c s_k / Z (Z = Σ chosen s): dL/ds_m = (c/Z)(dw_m - Σ_k dw_k s_k / Z);
 * then through the sigmoid. The choice itself has no gradient. */
void dsv_tr_route_bwd(float *dlogits, const float *dw, const int32_t *idx, const float *s, const dsv_config *c) {
    const int K = c->n_activated_experts;
    float Z = 0, dot = 0;
    for (int k = 0; k < K; k++) { Z += s[idx[k]]; dot += dw[k] * s[idx[k]]; }
    for (int k = 0; k < K; k++) {
        float sm = s[idx[k]];
        float ds = c->norm_topk_prob ? c->route_scale / Z * (dw[k] - dot / Z) : c->route_scale * dw[k];
        dlogits[idx[k]] += ds * sm * (1.0f - sm);
    }
}

/* dW[N][K] += dy[M][N]ᵀ · x[M][K] (as train.c's) */
static void lin_dw(float *dW, const float *dy, long ldy, const float *x, long ldx, int M, int N, int K) {
    dsv_tr_gemm(dW, K, dy, 1, ldy, x, ldx, 1, N, K, M, 1);
}

void dsv_tr_indexer_bwd(const dsv_tr_indexer_grad *g) {
    const dsv_config *c = g->c;
    const int T = g->T, D = c->dim, Q = c->q_lora_rank, Hi = c->index_n_heads, Di = c->index_head_dim;
    const int R2 = c->qk_rope_head_dim / 2;
    const float wscale = (float)(1.0 / sqrt((double)Hi) / sqrt((double)Di));
    const float *dI = g->dI;
    float *dS = g->dS;
    memset(g->diq, 0, (size_t)T * Hi * Di * sizeof(float));
    memset(g->dik, 0, (size_t)T * Di * sizeof(float));
    memset(g->diw, 0, (size_t)T * Hi * sizeof(float));
    for (int h = 0; h < Hi; h++) {
        const float *S = g->S + (long)h * T * T;
        for (int r0 = 0; r0 < T; r0 += 128) {
            int r1 = r0 + 128 < T ? r0 + 128 : T;
            for (int i = r0; i < r1; i++) {
                const float *Si = S + (long)i * T, *dIi = dI + (long)i * T;
                float *d = dS + (long)i * T, wh = g->iw[(long)i * Hi + h];
                double dw = 0;
                for (int s = 0; s <= i; s++) {
                    float r = Si[s] > 0 ? Si[s] : 0;
                    dw += (double)dIi[s] * r;
                    d[s] = Si[s] > 0 ? dIi[s] * wh : 0;
                }
                for (int s = i + 1; s < r1; s++) d[s] = 0;
                g->diw[(long)i * Hi + h] += (float)dw * wscale;
            }
            dsv_tr_gemm(g->diq + (long)r0 * Hi * Di + (long)h * Di, (long)Hi * Di, dS + (long)r0 * T, T, 1, g->ik, Di,
                        1, r1 - r0, Di, r1, 1);
            dsv_tr_gemm(g->dik, Di, dS + (long)r0 * T, 1, T, g->iq + (long)r0 * Hi * Di + (long)h * Di, (long)Hi * Di,
                        1, r1, Di, r1 - r0, 1);
        }
    }
    lin_dw(g->g_wp, g->diw, Hi, g->xn, D, T, Hi, D);
    memset(g->dikl, 0, (size_t)T * Di * sizeof(float));
    for (int i = 0; i < T; i++) {
        const float *cs = g->rope_cos + (long)i * R2, *sn = g->rope_sin + (long)i * R2;
        for (int h = 0; h < Hi; h++) {
            float *dq = g->diq + ((long)i * Hi + h) * Di;
            dsv_tr_hadamard(dq, Di);
            dsv_tr_rope(dq, cs, sn, R2, 0, 1);
        }
        float *dk = g->dik + (long)i * Di;
        dsv_tr_hadamard(dk, Di);
        dsv_tr_rope(dk, cs, sn, R2, 0, 1);
        dsv_tr_layernorm_bwd(g->dikl + (long)i * Di, g->g_knw, g->g_knb, dk, g->ikr + (long)i * Di,
                             g->knw, g->imu[i], g->irs[i], Di);
    }
    lin_dw(g->g_wq, g->diq, (long)Hi * Di, g->qr, Q, T, Hi * Di, Q);
    lin_dw(g->g_wk, g->dikl, Di, g->xn, D, T, Di, D);
}
