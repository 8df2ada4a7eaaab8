/* quant.c: scalar reference codecs of the ggml weight types (quant.h).
 *
 * Per type: a block decoder (the oracle every faster kernel is compared
 * with), a block encoder, and the shared row loops. The encoders choose, per
 * sub-block, a scale (and for the types with a minimum, an offset) by trying
 * a few candidate scales around max/levels and keeping the one with the
 * least squared error after a least-squares refit of scale and offset to the
 * chosen integers; K-quant sub-block scales are then themselves quantized to
 * their 4/6/8 bits against the super-block scale, and the values are
 * re-quantized with the scales as stored, so decoding reproduces exactly
 * what the encoder measured. */
#include "quant.h"

#include <float.h>
#include <math.h>
#include <string.h>

#include "base/numeric.h"
#include "ops.h"
#include "base/util.h"

/* ---- halves ------------------------------------------------------------- */

uint16_t dsv_f32_to_f16(float f) {
    uint32_t x = dsv_f32_bits(f), sign = (x >> 16) & 0x8000, ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return (uint16_t)(sign | 0x7e00);       /* NaN */
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00);      /* >= 65520 rounds to inf */
    if (ax < 0x38800000u)                                          /* below 2^-14: subnormal */
        return (uint16_t)(sign | (uint32_t)lrintf(dsv_f32_from_bits(ax) * 16777216.0f));
    uint32_t r = ax - (112u << 23);                                /* rebias 127 -> 15 */
    r += 0xfffu + ((r >> 13) & 1);                                 /* round to nearest even */
    return (uint16_t)(sign | (r >> 13));
}

static float h2f(const uint8_t *p) { uint16_t h; memcpy(&h, p, 2); return dsv_f16_to_f32(h); }
/* Stores f as a half and returns the value stored. */
static float put_h(uint8_t *p, float f) {
    uint16_t h = dsv_f32_to_f16(f);
    memcpy(p, &h, 2);
    return dsv_f16_to_f32(h);
}

static int nearest(float x) { return (int)lrintf(x); }
static int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

/* The IQ4_NL grid (llama.cpp's kvalues_iq4nl): denser near zero, as
 * weights are. */
static const int8_t IQ4NL[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

/* ---- sub-block fitting (encoders only) -------------------------------- */

/* Fits x[0..n) ~ s*q + m with integers q in [0, nmax] and an offset m <= 0
 * (as the types with a minimum store it). Tries scales (nmax + k/10) / range for k in -6..6 and refits s, m by least
 * squares to each candidate's integers; returns the best (s, m). */
static void fit_min(const float *x, int n, int nmax, float *s_out, float *m_out) {
    float lo = FLT_MAX, hi = -FLT_MAX;
    for (int i = 0; i < n; i++) { lo = fminf(lo, x[i]); hi = fmaxf(hi, x[i]); }
    if (lo > 0) lo = 0; /* the offset is a non-positive minimum, as stored */
    if (hi <= lo) { *s_out = 0; *m_out = lo; return; }
    float best_s = (hi - lo) / (float)nmax, best_m = lo, best_err = FLT_MAX;
    for (int k = -6; k <= 6; k++) {
        const float is = ((float)nmax + 0.1f * (float)k) / (hi - lo);
        if (is <= 0) continue;
        double sq = 0, sqq = 0, sx = 0, sqx = 0;
        for (int i = 0; i < n; i++) {
            const int q = clampi(nearest((x[i] - lo) * is), 0, nmax);
            sq += q; sqq += (double)q * q; sx += x[i]; sqx += (double)q * x[i];
        }
        const double det = n * sqq - sq * sq;
        if (det <= 0) continue;
        float s = (float)((n * sqx - sq * sx) / det), m = (float)((sqq * sx - sq * sqx) / det);
        if (m > 0) { m = 0; s = sqq > 0 ? (float)(sqx / sqq) : 0; } /* the offset must stay <= 0 */
        if (s <= 0) continue;
        double err = 0;
        for (int i = 0; i < n; i++) {
            const int q = clampi(nearest((x[i] - m) / s), 0, nmax);
            const double e = (double)s * q + m - x[i];
            err += e * e;
        }
        if (err < best_err) { best_err = (float)err; best_s = s; best_m = m; }
    }
    *s_out = best_s;
    *m_out = best_m;
}

/* Fits x ~ s*q with integers q in [-nlo, nhi] (symmetric types). The sign
 * of s is chosen so the largest magnitude uses the wider side (-nlo). */
static float fit_sym(const float *x, int n, int nlo, int nhi) {
    float amax = 0, max = 0;
    for (int i = 0; i < n; i++)
        if (fabsf(x[i]) > amax) { amax = fabsf(x[i]); max = x[i]; }
    if (amax == 0) return 0;
    float best_s = max / (float)-nlo;
    double best_err = DBL_MAX;
    for (int k = -6; k <= 6; k++) {
        const float s0 = max / ((float)-nlo + 0.1f * (float)k * (max > 0 ? -1 : 1));
        double sqq = 0, sqx = 0;
        for (int i = 0; i < n; i++) {
            const int q = clampi(nearest(x[i] / s0), -nlo, nhi);
            sqq += (double)q * q; sqx += (double)q * x[i];
        }
        if (sqq <= 0) continue;
        const float s = (float)(sqx / sqq);
        if (s == 0) continue;
        double err = 0;
        for (int i = 0; i < n; i++) {
            const double e = (double)s * clampi(nearest(x[i] / s), -nlo, nhi) - x[i];
            err += e * e;
        }
        if (err < best_err) { best_err = err; best_s = s; }
    }
    return best_s;
}

/* ---- 32-value types ----------------------------------------------------- */

static void dq_q8_0(const uint8_t *b, float *y) {
    const float d = h2f(b);
    for (int j = 0; j < 32; j++) y[j] = d * (float)(int8_t)b[2 + j];
}
static void q_q8_0(const float *x, uint8_t *b) {
    float amax = 0;
    for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[j]));
    const float d = put_h(b, amax / 127.0f), id = d ? 1.0f / d : 0;
    for (int j = 0; j < 32; j++) b[2 + j] = (uint8_t)(int8_t)clampi(nearest(x[j] * id), -127, 127);
}

/* Q4_0/Q4_1/IQ4_NL nibbles: qs[j] low = value j, high = value j + 16. */
static void dq_q4_0(const uint8_t *b, float *y) {
    const float d = h2f(b);
    for (int j = 0; j < 16; j++) {
        y[j] = d * (float)((b[2 + j] & 15) - 8);
        y[j + 16] = d * (float)((b[2 + j] >> 4) - 8);
    }
}
static void q_q4_0(const float *x, uint8_t *b) {
    const float d = put_h(b, fit_sym(x, 32, 8, 7)), id = d ? 1.0f / d : 0;
    for (int j = 0; j < 16; j++)
        b[2 + j] = (uint8_t)(clampi(nearest(x[j] * id) + 8, 0, 15) | clampi(nearest(x[j + 16] * id) + 8, 0, 15) << 4);
}

static void dq_q4_1(const uint8_t *b, float *y) {
    const float d = h2f(b), m = h2f(b + 2);
    for (int j = 0; j < 16; j++) {
        y[j] = d * (float)(b[4 + j] & 15) + m;
        y[j + 16] = d * (float)(b[4 + j] >> 4) + m;
    }
}
static void q_q4_1(const float *x, uint8_t *b) {
    float s, m;
    fit_min(x, 32, 15, &s, &m);
    const float d = put_h(b, s), mm = put_h(b + 2, m), id = d ? 1.0f / d : 0;
    for (int j = 0; j < 16; j++)
        b[4 + j] = (uint8_t)(clampi(nearest((x[j] - mm) * id), 0, 15) | clampi(nearest((x[j + 16] - mm) * id), 0, 15) << 4);
}

/* Q5: the 5th bit of value j is bit j of the little-endian u32 qh. */
static void dq_q5_0(const uint8_t *b, float *y) {
    const float d = h2f(b);
    uint32_t qh;
    memcpy(&qh, b + 2, 4);
    for (int j = 0; j < 16; j++) {
        y[j] = d * (float)((int)((b[6 + j] & 15) | ((qh >> j) & 1) << 4) - 16);
        y[j + 16] = d * (float)((int)((b[6 + j] >> 4) | ((qh >> (j + 16)) & 1) << 4) - 16);
    }
}
static void q_q5_0(const float *x, uint8_t *b) {
    const float d = put_h(b, fit_sym(x, 32, 16, 15)), id = d ? 1.0f / d : 0;
    uint32_t qh = 0;
    for (int j = 0; j < 16; j++) {
        const int a = clampi(nearest(x[j] * id) + 16, 0, 31), c = clampi(nearest(x[j + 16] * id) + 16, 0, 31);
        b[6 + j] = (uint8_t)((a & 15) | (c & 15) << 4);
        qh |= (uint32_t)(a >> 4) << j | (uint32_t)(c >> 4) << (j + 16);
    }
    memcpy(b + 2, &qh, 4);
}

static void dq_q5_1(const uint8_t *b, float *y) {
    const float d = h2f(b), m = h2f(b + 2);
    uint32_t qh;
    memcpy(&qh, b + 4, 4);
    for (int j = 0; j < 16; j++) {
        y[j] = d * (float)((b[8 + j] & 15) | ((qh >> j) & 1) << 4) + m;
        y[j + 16] = d * (float)((b[8 + j] >> 4) | ((qh >> (j + 16)) & 1) << 4) + m;
    }
}
static void q_q5_1(const float *x, uint8_t *b) {
    float s, m;
    fit_min(x, 32, 31, &s, &m);
    const float d = put_h(b, s), mm = put_h(b + 2, m), id = d ? 1.0f / d : 0;
    uint32_t qh = 0;
    for (int j = 0; j < 16; j++) {
        const int a = clampi(nearest((x[j] - mm) * id), 0, 31), c = clampi(nearest((x[j + 16] - mm) * id), 0, 31);
        b[8 + j] = (uint8_t)((a & 15) | (c & 15) << 4);
        qh |= (uint32_t)(a >> 4) << j | (uint32_t)(c >> 4) << (j + 16);
    }
    memcpy(b + 4, &qh, 4);
}

static void dq_iq4_nl(const uint8_t *b, float *y) {
    const float d = h2f(b);
    for (int j = 0; j < 16; j++) {
        y[j] = d * (float)IQ4NL[b[2 + j] & 15];
        y[j + 16] = d * (float)IQ4NL[b[2 + j] >> 4];
    }
}
static int iq4_index(float v) { /* nearest grid point to v (in grid units) */
    int best = 0;
    for (int k = 1; k < 16; k++)
        if (fabsf(v - (float)IQ4NL[k]) < fabsf(v - (float)IQ4NL[best])) best = k;
    return best;
}
static void q_iq4_nl(const float *x, uint8_t *b) {
    float amax = 0, max = 0;
    for (int j = 0; j < 32; j++)
        if (fabsf(x[j]) > amax) { amax = fabsf(x[j]); max = x[j]; }
    /* Start with the largest magnitude on the grid's end, then refit the
     * scale to the chosen points once (least squares) and choose again. */
    float d = max / (float)IQ4NL[0];
    for (int pass = 0; pass < 2 && d != 0; pass++) {
        double sqq = 0, sqx = 0;
        for (int j = 0; j < 32; j++) {
            const float g = (float)IQ4NL[iq4_index(x[j] / d)];
            sqq += (double)g * g; sqx += (double)g * x[j];
        }
        if (sqq > 0 && sqx != 0) d = (float)(sqx / sqq);
    }
    d = put_h(b, d);
    const float id = d ? 1.0f / d : 0;
    for (int j = 0; j < 16; j++) b[2 + j] = (uint8_t)(iq4_index(x[j] * id) | iq4_index(x[j + 16] * id) << 4);
}

/* ---- K-quants (256 values) ---------------------------------------------- */

/* Q4_K/Q5_K scales: 8 (scale, min) pairs of 6 bits in 12 bytes. Pairs 0-3:
 * low 6 bits of bytes 0-3 (scales) and 4-7 (mins); pairs 4-7: low and high
 * nibbles of bytes 8-11, their top 2 bits in the top bits of bytes 0-3
 * (scales) and 4-7 (mins). */
static void k4_scale_min(const uint8_t *q, int j, int *sc, int *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 15) | (q[j - 4] >> 6) << 4;
        *m = (q[j + 4] >> 4) | (q[j] >> 6) << 4;
    }
}
static void k4_pack(uint8_t *q, const int *ls, const int *lm) {
    for (int j = 0; j < 4; j++) {
        q[j] = (uint8_t)(ls[j] | (ls[j + 4] >> 4) << 6);
        q[j + 4] = (uint8_t)(lm[j] | (lm[j + 4] >> 4) << 6);
        q[j + 8] = (uint8_t)((ls[j + 4] & 15) | (lm[j + 4] & 15) << 4);
    }
}

/* Fits n_sub sub-blocks of `len` values each with unsigned integers in
 * [0, nmax] and an offset, quantizes their scales and mins to `sbits` bits
 * against two f16 super-scales stored at d_at/dmin_at, and returns the
 * integer scales, mins and values (q [n_sub*len]) as stored. */
static void k_fit_min(const float *x, int n_sub, int len, int nmax, int sbits, uint8_t *d_at, uint8_t *dmin_at,
                      int *ls, int *lm, uint8_t *q) {
    float s[16], m[16], smax = 0, mmax = 0;
    const int lmax = (1 << sbits) - 1;
    for (int i = 0; i < n_sub; i++) {
        fit_min(x + i * len, len, nmax, &s[i], &m[i]);
        m[i] = -m[i]; /* stored as a positive amount to subtract */
        smax = fmaxf(smax, s[i]);
        mmax = fmaxf(mmax, m[i]);
    }
    const float d = put_h(d_at, smax / (float)lmax), dmin = put_h(dmin_at, mmax / (float)lmax);
    for (int i = 0; i < n_sub; i++) {
        ls[i] = d ? clampi(nearest(s[i] / d), 0, lmax) : 0;
        lm[i] = dmin ? clampi(nearest(m[i] / dmin), 0, lmax) : 0;
        const float ds = d * (float)ls[i], dm = dmin * (float)lm[i];
        for (int k = 0; k < len; k++)
            q[i * len + k] = (uint8_t)(ds ? clampi(nearest((x[i * len + k] + dm) / ds), 0, nmax) : 0);
    }
}

/* Q4_K: values 64c+l (l < 32) and 64c+32+l share byte qs[32c+l], low and
 * high nibble; sub-block i (32 values) has pair i. */
static void dq_q4_k(const uint8_t *b, float *y) {
    const float d = h2f(b), dmin = h2f(b + 2);
    const uint8_t *sc = b + 4, *qs = b + 16;
    for (int c = 0; c < 4; c++) {
        int s0, m0, s1, m1;
        k4_scale_min(sc, 2 * c, &s0, &m0);
        k4_scale_min(sc, 2 * c + 1, &s1, &m1);
        for (int l = 0; l < 32; l++) {
            y[64 * c + l] = d * (float)s0 * (float)(qs[32 * c + l] & 15) - dmin * (float)m0;
            y[64 * c + 32 + l] = d * (float)s1 * (float)(qs[32 * c + l] >> 4) - dmin * (float)m1;
        }
    }
}
static void q_q4_k(const float *x, uint8_t *b) {
    int ls[8], lm[8];
    uint8_t q[256];
    k_fit_min(x, 8, 32, 15, 6, b, b + 2, ls, lm, q);
    k4_pack(b + 4, ls, lm);
    for (int c = 0; c < 4; c++)
        for (int l = 0; l < 32; l++) b[16 + 32 * c + l] = (uint8_t)(q[64 * c + l] | q[64 * c + 32 + l] << 4);
}

/* Q5_K: as Q4_K, and the 5th bit of value 64c+l is bit 2c of qh[l], of
 * value 64c+32+l bit 2c+1. */
static void dq_q5_k(const uint8_t *b, float *y) {
    const float d = h2f(b), dmin = h2f(b + 2);
    const uint8_t *sc = b + 4, *qh = b + 16, *qs = b + 48;
    for (int c = 0; c < 4; c++) {
        int s0, m0, s1, m1;
        k4_scale_min(sc, 2 * c, &s0, &m0);
        k4_scale_min(sc, 2 * c + 1, &s1, &m1);
        for (int l = 0; l < 32; l++) {
            const int lo = (qs[32 * c + l] & 15) | ((qh[l] >> (2 * c)) & 1) << 4;
            const int hi = (qs[32 * c + l] >> 4) | ((qh[l] >> (2 * c + 1)) & 1) << 4;
            y[64 * c + l] = d * (float)s0 * (float)lo - dmin * (float)m0;
            y[64 * c + 32 + l] = d * (float)s1 * (float)hi - dmin * (float)m1;
        }
    }
}
static void q_q5_k(const float *x, uint8_t *b) {
    int ls[8], lm[8];
    uint8_t q[256];
    k_fit_min(x, 8, 32, 31, 6, b, b + 2, ls, lm, q);
    k4_pack(b + 4, ls, lm);
    memset(b + 16, 0, 32);
    for (int c = 0; c < 4; c++)
        for (int l = 0; l < 32; l++) {
            const int lo = q[64 * c + l], hi = q[64 * c + 32 + l];
            b[48 + 32 * c + l] = (uint8_t)((lo & 15) | (hi & 15) << 4);
            b[16 + l] |= (uint8_t)((lo >> 4) << (2 * c) | (hi >> 4) << (2 * c + 1));
        }
}

/* Q2_K: value 128h + 32j + l (l < 32) is bits 2j..2j+1 of qs[32h+l];
 * sub-block i (16 values) has scales[i]: scale low nibble, min high. */
static void dq_q2_k(const uint8_t *b, float *y) {
    const uint8_t *sc = b, *qs = b + 16;
    const float d = h2f(b + 80), dmin = h2f(b + 82);
    for (int i = 0; i < 256; i++) {
        const int h = i / 128, j = (i % 128) / 32, l = i % 32, s = sc[i / 16];
        y[i] = d * (float)(s & 15) * (float)((qs[32 * h + l] >> (2 * j)) & 3) - dmin * (float)(s >> 4);
    }
}
static void q_q2_k(const float *x, uint8_t *b) {
    int ls[16], lm[16];
    uint8_t q[256];
    k_fit_min(x, 16, 16, 3, 4, b + 80, b + 82, ls, lm, q);
    for (int i = 0; i < 16; i++) b[i] = (uint8_t)(ls[i] | lm[i] << 4);
    memset(b + 16, 0, 64);
    for (int i = 0; i < 256; i++) b[16 + 32 * (i / 128) + i % 32] |= (uint8_t)(q[i] << (2 * ((i % 128) / 32)));
}

/* Q3_K: value 128h + 32j + l has its low 2 bits at bits 2j of qs[32h+l] and
 * its 3rd bit at bit 4h+j of hmask[l]; the value is (3 bits) - 4. The 16
 * 6-bit scales (stored +32): low nibbles of scales i < 8 in bytes 0-7
 * (low nibble), of i >= 8 in bytes 0-7 (high nibble, i-8); top 2 bits of
 * scale i at bits 2(i/4) of byte 8 + i%4. */
static int q3_scale(const uint8_t *s, int i) {
    const int low = i < 8 ? s[i] & 15 : s[i - 8] >> 4;
    return (low | ((s[8 + i % 4] >> (2 * (i / 4))) & 3) << 4) - 32;
}
static void dq_q3_k(const uint8_t *b, float *y) {
    const uint8_t *hm = b, *qs = b + 32, *sc = b + 96;
    const float d = h2f(b + 108);
    for (int i = 0; i < 256; i++) {
        const int h = i / 128, j = (i % 128) / 32, l = i % 32;
        const int v = ((qs[32 * h + l] >> (2 * j)) & 3) | ((hm[l] >> (4 * h + j)) & 1) << 2;
        y[i] = d * (float)q3_scale(sc, i / 16) * (float)(v - 4);
    }
}
static void q_q3_k(const float *x, uint8_t *b) {
    float s[16], smax = 0, sbig = 0;
    for (int i = 0; i < 16; i++) {
        s[i] = fit_sym(x + 16 * i, 16, 4, 3);
        if (fabsf(s[i]) > smax) { smax = fabsf(s[i]); sbig = s[i]; }
    }
    const float d = put_h(b + 108, sbig / -32.0f);
    int ls[16];
    memset(b, 0, 108);
    for (int i = 0; i < 16; i++) {
        ls[i] = d ? clampi(nearest(s[i] / d), -32, 31) : 0;
        const int u = ls[i] + 32;
        b[96 + (i < 8 ? i : i - 8)] |= (uint8_t)(i < 8 ? (u & 15) : (u & 15) << 4);
        b[96 + 8 + i % 4] |= (uint8_t)((u >> 4) << (2 * (i / 4)));
    }
    for (int i = 0; i < 256; i++) {
        const float ds = d * (float)ls[i / 16];
        const int v = (ds ? clampi(nearest(x[i] / ds), -4, 3) : 0) + 4;
        const int h = i / 128, j = (i % 128) / 32, l = i % 32;
        b[32 + 32 * h + l] |= (uint8_t)((v & 3) << (2 * j));
        b[l] |= (uint8_t)((v >> 2) << (4 * h + j));
    }
}

/* Q6_K: value 128h + 32k + l (l < 32): low 4 bits in ql[64h + l + 32(k&1)],
 * low nibble for k < 2, high for k >= 2; high 2 bits at bits 2k of
 * qh[32h+l]; the value is (6 bits) - 32; sub-block i (16 values) has the
 * signed 8-bit scales[i]. */
static void dq_q6_k(const uint8_t *b, float *y) {
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    const float d = h2f(b + 208);
    for (int i = 0; i < 256; i++) {
        const int h = i / 128, k = (i % 128) / 32, l = i % 32;
        const uint8_t lo = ql[64 * h + l + 32 * (k & 1)];
        const int v = ((k < 2 ? lo & 15 : lo >> 4) | ((qh[32 * h + l] >> (2 * k)) & 3) << 4) - 32;
        y[i] = d * (float)sc[i / 16] * (float)v;
    }
}
static void q_q6_k(const float *x, uint8_t *b) {
    float s[16], smax = 0, sbig = 0;
    for (int i = 0; i < 16; i++) {
        s[i] = fit_sym(x + 16 * i, 16, 32, 31);
        if (fabsf(s[i]) > smax) { smax = fabsf(s[i]); sbig = s[i]; }
    }
    const float d = put_h(b + 208, sbig / -128.0f);
    int ls[16];
    memset(b, 0, 192);
    for (int i = 0; i < 16; i++) {
        ls[i] = d ? clampi(nearest(s[i] / d), -128, 127) : 0;
        b[192 + i] = (uint8_t)(int8_t)ls[i];
    }
    for (int i = 0; i < 256; i++) {
        const float ds = d * (float)ls[i / 16];
        const int v = (ds ? clampi(nearest(x[i] / ds), -32, 31) : 0) + 32;
        const int h = i / 128, k = (i % 128) / 32, l = i % 32;
        b[64 * h + l + 32 * (k & 1)] |= (uint8_t)(k < 2 ? v & 15 : (v & 15) << 4);
        b[128 + 32 * h + l] |= (uint8_t)((v >> 4) << (2 * k));
    }
}

/* ---- rows --------------------------------------------------------------- */

typedef void (*dq_fn)(const uint8_t *, float *);
typedef void (*q_fn)(const float *, uint8_t *);

static dq_fn dq_of(uint32_t t) {
    switch (t) {
    case DSV_GGML_Q8_0: return dq_q8_0;
    case DSV_GGML_Q4_0: return dq_q4_0;
    case DSV_GGML_Q4_1: return dq_q4_1;
    case DSV_GGML_Q5_0: return dq_q5_0;
    case DSV_GGML_Q5_1: return dq_q5_1;
    case DSV_GGML_IQ4_NL: return dq_iq4_nl;
    case DSV_GGML_Q2_K: return dq_q2_k;
    case DSV_GGML_Q3_K: return dq_q3_k;
    case DSV_GGML_Q4_K: return dq_q4_k;
    case DSV_GGML_Q5_K: return dq_q5_k;
    case DSV_GGML_Q6_K: return dq_q6_k;
    }
    return NULL;
}

static q_fn q_of(uint32_t t) {
    switch (t) {
    case DSV_GGML_Q8_0: return q_q8_0;
    case DSV_GGML_Q4_0: return q_q4_0;
    case DSV_GGML_Q4_1: return q_q4_1;
    case DSV_GGML_Q5_0: return q_q5_0;
    case DSV_GGML_Q5_1: return q_q5_1;
    case DSV_GGML_IQ4_NL: return q_iq4_nl;
    case DSV_GGML_Q2_K: return q_q2_k;
    case DSV_GGML_Q3_K: return q_q3_k;
    case DSV_GGML_Q4_K: return q_q4_k;
    case DSV_GGML_Q5_K: return q_q5_k;
    case DSV_GGML_Q6_K: return q_q6_k;
    }
    return NULL;
}

/* The float elements (blocks of one). */
static float elem(uint32_t t, const uint8_t *p, int64_t i) {
    switch (t) {
    case DSV_GGML_F32: { float v; memcpy(&v, p + 4 * i, 4); return v; }
    case DSV_GGML_F16: return h2f(p + 2 * i);
    default: { dsv_bf16 h; memcpy(&h, p + 2 * i, 2); return dsv_bf16_to_f32(h); }
    }
}

void dsv_q_dequant(uint32_t type, const void *src, float *dst, int64_t n) {
    DSV_ASSERT(dsv_q_supported(type) && n % dsv_ggml_blck(type) == 0);
    const uint8_t *p = src;
    dq_fn f = dq_of(type);
    if (!f) {
        for (int64_t i = 0; i < n; i++) dst[i] = elem(type, p, i);
        return;
    }
    const int bk = dsv_ggml_blck(type);
    const size_t bs = dsv_ggml_bsize(type);
    for (int64_t i = 0; i < n / bk; i++) f(p + (size_t)i * bs, dst + i * bk);
}

void dsv_q_quant(uint32_t type, const float *src, void *dst, int64_t n) {
    DSV_ASSERT(dsv_q_supported(type) && n % dsv_ggml_blck(type) == 0);
    uint8_t *p = dst;
    q_fn f = q_of(type);
    if (!f) {
        for (int64_t i = 0; i < n; i++) {
            if (type == DSV_GGML_F32) memcpy(p + 4 * i, &src[i], 4);
            else {
                const uint16_t h = type == DSV_GGML_F16 ? dsv_f32_to_f16(src[i]) : dsv_f32_to_bf16(src[i]);
                memcpy(p + 2 * i, &h, 2);
            }
        }
        return;
    }
    const int bk = dsv_ggml_blck(type);
    const size_t bs = dsv_ggml_bsize(type);
    for (int64_t i = 0; i < n / bk; i++) f(src + i * bk, p + (size_t)i * bs);
}

float dsv_q_dot(uint32_t type, const void *w, const float *x, int64_t n) {
    DSV_ASSERT(dsv_q_supported(type) && n % dsv_ggml_blck(type) == 0);
    const uint8_t *p = w;
    dq_fn f = dq_of(type);
    float sum = 0;
    if (!f) {
        for (int64_t i = 0; i < n; i++) sum += elem(type, p, i) * x[i];
        return sum;
    }
    const int bk = dsv_ggml_blck(type);
    const size_t bs = dsv_ggml_bsize(type);
    float y[256];
    for (int64_t i = 0; i < n / bk; i++) {
        f(p + (size_t)i * bs, y);
        float s = 0;
        for (int k = 0; k < bk; k++) s += y[k] * x[i * bk + k];
        sum += s;
    }
    return sum;
}

/* ---- 8-bit activations ---------------------------------------------------- */

size_t dsv_q8_act_bytes(int K) { return (size_t)K + (size_t)K / 32 * 4 + (size_t)K / 16 * 2; }

void dsv_q8_act_quant(void *act, const float *x, int K) {
    DSV_ASSERT(K % 32 == 0);
    int8_t *q = act;
    float *d = (float *)((char *)act + K);
    int16_t *s = (int16_t *)(d + K / 32);
    for (int b = 0; b < K / 32; b++) {
        float amax = 0;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[32 * b + j]));
        d[b] = amax / 127.0f;
        const float id = amax ? 127.0f / amax : 0;
        for (int h = 0; h < 2; h++) {
            int sum = 0;
            for (int j = 16 * h; j < 16 * h + 16; j++) {
                q[32 * b + j] = (int8_t)clampi(nearest(x[32 * b + j] * id), -127, 127);
                sum += q[32 * b + j];
            }
            s[2 * b + h] = (int16_t)sum;
        }
    }
}

void dsv_q8_act_quant_ref(void *act, const void *x, int x_bf16, int K) {
    if (!x_bf16) {
        dsv_q8_act_quant(act, x, K);
        return;
    }
    float xf[256]; /* 32-value blocks are independent: convert a few at a time */
    for (int k0 = 0; k0 < K; k0 += 256) {
        const int n = DSV_MIN(256, K - k0);
        for (int k = 0; k < n; k++) xf[k] = dsv_bf16_to_f32(((const uint16_t *)x)[k0 + k]);
        /* the output of this slice, as if the row were n values long */
        uint8_t part[256 + 256 / 32 * 4 + 256 / 16 * 2];
        dsv_q8_act_quant(part, xf, n);
        int8_t *q = act;
        float *d = (float *)((char *)act + K);
        int16_t *s = (int16_t *)(d + K / 32);
        memcpy(q + k0, part, (size_t)n);
        memcpy(d + k0 / 32, part + n, (size_t)n / 32 * 4);
        memcpy(s + k0 / 16, part + n + n / 32 * 4, (size_t)n / 16 * 2);
    }
}

dsv_q8_act_quant_fn dsv_q8_act_quant_for(int level) {
#if defined(__x86_64__)
    if (level >= DSV_KLEVEL_AVX512) return dsv_q8_act_quant_avx512;
    if (level == DSV_KLEVEL_AVX2) return dsv_q8_act_quant_avx2;
#else
    (void)level;
#endif
    return dsv_q8_act_quant_ref;
}

/* A weight block as integers: levels w[i] and, per 16 values k, a scale
 * a[k] and an offset b[k] with value = a[k]*w[i] + b[k]. Returns the
 * values in the block (32 or 256). */
static int int_decode(uint32_t t, const uint8_t *x, int8_t *w, float *a, float *b) {
    switch (t) {
    case DSV_GGML_Q8_0:
        for (int j = 0; j < 32; j++) w[j] = (int8_t)x[2 + j];
        a[0] = a[1] = h2f(x);
        b[0] = b[1] = 0;
        return 32;
    case DSV_GGML_Q4_0: case DSV_GGML_Q4_1: case DSV_GGML_IQ4_NL: {
        const int off = t == DSV_GGML_Q4_1 ? 4 : 2;
        for (int j = 0; j < 16; j++) {
            const int lo = x[off + j] & 15, hi = x[off + j] >> 4;
            w[j] = (int8_t)(t == DSV_GGML_IQ4_NL ? IQ4NL[lo] : t == DSV_GGML_Q4_0 ? lo - 8 : lo);
            w[j + 16] = (int8_t)(t == DSV_GGML_IQ4_NL ? IQ4NL[hi] : t == DSV_GGML_Q4_0 ? hi - 8 : hi);
        }
        a[0] = a[1] = h2f(x);
        b[0] = b[1] = t == DSV_GGML_Q4_1 ? h2f(x + 2) : 0;
        return 32;
    }
    case DSV_GGML_Q5_0: case DSV_GGML_Q5_1: {
        const int m = t == DSV_GGML_Q5_1, off = m ? 8 : 6;
        uint32_t qh;
        memcpy(&qh, x + (m ? 4 : 2), 4);
        for (int j = 0; j < 16; j++) {
            w[j] = (int8_t)(((x[off + j] & 15) | ((qh >> j) & 1) << 4) - (m ? 0 : 16));
            w[j + 16] = (int8_t)(((x[off + j] >> 4) | ((qh >> (j + 16)) & 1) << 4) - (m ? 0 : 16));
        }
        a[0] = a[1] = h2f(x);
        b[0] = b[1] = m ? h2f(x + 2) : 0;
        return 32;
    }
    }
    /* K-quants: decode with the float decoder's bit layout, in integers. */
    const float d = t == DSV_GGML_Q2_K ? h2f(x + 80) : t == DSV_GGML_Q3_K ? h2f(x + 108)
                  : t == DSV_GGML_Q6_K ? h2f(x + 208) : h2f(x);
    switch (t) {
    case DSV_GGML_Q2_K: {
        const float dmin = h2f(x + 82);
        for (int i = 0; i < 256; i++)
            w[i] = (int8_t)((x[16 + 32 * (i / 128) + i % 32] >> (2 * ((i % 128) / 32))) & 3);
        for (int k = 0; k < 16; k++) { a[k] = d * (float)(x[k] & 15); b[k] = -dmin * (float)(x[k] >> 4); }
        return 256;
    }
    case DSV_GGML_Q3_K:
        for (int i = 0; i < 256; i++) {
            const int h = i / 128, j = (i % 128) / 32, l = i % 32;
            w[i] = (int8_t)((((x[32 + 32 * h + l] >> (2 * j)) & 3) | ((x[l] >> (4 * h + j)) & 1) << 2) - 4);
        }
        for (int k = 0; k < 16; k++) { a[k] = d * (float)q3_scale(x + 96, k); b[k] = 0; }
        return 256;
    case DSV_GGML_Q4_K: case DSV_GGML_Q5_K: {
        const float dmin = h2f(x + 2);
        const int five = t == DSV_GGML_Q5_K;
        const uint8_t *qs = x + (five ? 48 : 16), *qh = x + 16;
        for (int c = 0; c < 4; c++)
            for (int l = 0; l < 32; l++) {
                int lo = qs[32 * c + l] & 15, hi = qs[32 * c + l] >> 4;
                if (five) { lo |= ((qh[l] >> (2 * c)) & 1) << 4; hi |= ((qh[l] >> (2 * c + 1)) & 1) << 4; }
                w[64 * c + l] = (int8_t)lo;
                w[64 * c + 32 + l] = (int8_t)hi;
            }
        for (int j = 0; j < 8; j++) {
            int sc, m;
            k4_scale_min(x + 4, j, &sc, &m);
            a[2 * j] = a[2 * j + 1] = d * (float)sc;
            b[2 * j] = b[2 * j + 1] = -dmin * (float)m;
        }
        return 256;
    }
    default: /* Q6_K */
        for (int i = 0; i < 256; i++) {
            const int h = i / 128, k = (i % 128) / 32, l = i % 32;
            const uint8_t lo = x[64 * h + l + 32 * (k & 1)];
            w[i] = (int8_t)(((k < 2 ? lo & 15 : lo >> 4) | ((x[128 + 32 * h + l] >> (2 * k)) & 3) << 4) - 32);
        }
        for (int k = 0; k < 16; k++) { a[k] = d * (float)(int8_t)x[192 + k]; b[k] = 0; }
        return 256;
    }
}

float dsv_q_vec_dot_ref(uint32_t type, const void *wv, const void *act, int K) {
    DSV_ASSERT(dsv_q_supported(type) && dsv_ggml_blck(type) > 1 && K % dsv_ggml_blck(type) == 0);
    const uint8_t *w = wv;
    const int8_t *q = act;
    const float *d = (const float *)((const char *)act + K);
    const int16_t *s = (const int16_t *)(d + K / 32);
    const int bk = dsv_ggml_blck(type);
    const size_t bs = dsv_ggml_bsize(type);
    int8_t lv[256];
    float a[16], b[16], sum = 0;
    for (int blk = 0; blk < K / bk; blk++) {
        int_decode(type, w + (size_t)blk * bs, lv, a, b);
        float bsum = 0;
        for (int k = 0; k < bk / 16; k++) {
            const int i0 = blk * bk + 16 * k;
            int32_t isum = 0;
            for (int j = 0; j < 16; j++) isum += (int32_t)lv[16 * k + j] * q[i0 + j];
            bsum += d[i0 / 32] * (a[k] * (float)isum + b[k] * (float)s[i0 / 16]);
        }
        sum += bsum;
    }
    return sum;
}

double dsv_q_dot_mag(uint32_t type, const void *wv, const void *act, int K) {
    DSV_ASSERT(dsv_q_supported(type) && dsv_ggml_blck(type) > 1 && K % dsv_ggml_blck(type) == 0);
    const uint8_t *w = wv;
    const int8_t *q = act;
    const float *d = (const float *)((const char *)act + K);
    const int16_t *s = (const int16_t *)(d + K / 32);
    const int bk = dsv_ggml_blck(type);
    const size_t bs = dsv_ggml_bsize(type);
    int8_t lv[256];
    float a[16], b[16];
    double mag = 0;
    for (int blk = 0; blk < K / bk; blk++) {
        int_decode(type, w + (size_t)blk * bs, lv, a, b);
        for (int k = 0; k < bk / 16; k++) {
            const int i0 = blk * bk + 16 * k;
            double m = 0;
            for (int j = 0; j < 16; j++) m += fabs((double)lv[16 * k + j] * q[i0 + j]);
            mag += fabs((double)d[i0 / 32]) * (fabs((double)a[k]) * m + fabs((double)b[k] * s[i0 / 16]));
        }
    }
    return mag;
}

double dsv_q_absorb_mag(uint32_t type, const void *wv, const float *x, int K) {
    DSV_ASSERT(dsv_q_absorb_ok(type, K));
    const uint8_t *w = wv;
    const int bk = dsv_ggml_blck(type);
    const size_t bs = dsv_ggml_bsize(type);
    int8_t lv[256];
    float a[16], b[16];
    double mag = 0;
    for (int blk = 0; blk < K / bk; blk++) {
        int_decode(type, w + (size_t)blk * bs, lv, a, b);
        for (int i = 0; i < bk; i++)
            mag += (fabs((double)a[i / 16] * lv[i]) + fabs((double)b[i / 16])) * fabs((double)x[blk * bk + i]);
    }
    return mag;
}

void dsv_q_dot_rows_ref(uint32_t type, const void *w, const void *act, size_t stride, int n, int K, float *out) {
    for (int r = 0; r < n; r++) out[r] = dsv_q_vec_dot_ref(type, w, (const char *)act + (size_t)r * stride, K);
}

dsv_q_dot_rows_fn dsv_q_dot_rows_for(int level) {
#if defined(__x86_64__)
    /* Every AVX-512 level (avx512, amx) has VNNI: cpu.c requires it. */
    if (level >= DSV_KLEVEL_AVX512) return dsv_q_dot_rows_avx512;
    if (level == DSV_KLEVEL_AVX2) return dsv_q_dot_rows_avx2;
#else
    (void)level;
#endif
    return dsv_q_dot_rows_ref;
}

void dsv_q_dot_mat_ref(uint32_t type, const void *w, size_t wrow, int nw, const void *act, size_t stride, int n, int K,
                       float *out) {
    for (int j = 0; j < nw; j++) dsv_q_dot_rows_ref(type, (const char *)w + (size_t)j * wrow, act, stride, n, K, out + (size_t)j * n);
}

dsv_q_dot_mat_fn dsv_q_dot_mat_for(int level) {
#if defined(__x86_64__)
    if (level >= DSV_KLEVEL_AVX512) return dsv_q_dot_mat_avx512;
    if (level == DSV_KLEVEL_AVX2) return dsv_q_dot_mat_avx2;
#else
    (void)level;
#endif
    return dsv_q_dot_mat_ref;
}

/* ---- absorbed attention on block-quantized weights ------------------------ */

/* Each row dequantized whole, then its products added in index order. */
void dsv_q_absorb_ref(uint32_t t, const void *w, size_t wrow, int R, int K, const uint16_t *x, size_t ldx,
                      uint16_t *y, int h0, int h1) {
    DSV_ASSERT(dsv_q_absorb_ok(t, K));
    float wf[DSV_Q_ABSORB_KMAX], xf[DSV_Q_ABSORB_KMAX];
    for (int h = h0; h < h1; h++) {
        for (int k = 0; k < K; k++) xf[k] = dsv_bf16_to_f32(x[(size_t)h * ldx + k]);
        for (int r = 0; r < R; r++) {
            const size_t row = (size_t)h * R + r;
            dsv_q_dequant(t, (const char *)w + row * wrow, wf, K);
            float acc = 0;
            for (int k = 0; k < K; k++) acc += wf[k] * xf[k];
            y[row] = dsv_f32_to_bf16(acc);
        }
    }
}

dsv_q_absorb_fn dsv_q_absorb_for(int level, uint32_t t) {
#if defined(__x86_64__)
    if (level >= DSV_KLEVEL_AVX512 && dsv_q_absorb_fast(t)) return dsv_q_absorb_avx512;
    if (level == DSV_KLEVEL_AVX2 && dsv_q_absorb_fast(t)) return dsv_q_absorb_avx2;
#else
    (void)level;
    (void)t;
#endif
    return dsv_q_absorb_ref;
}

/* ---- linear layers ------------------------------------------------------- */

/* The rows of q_linear's activations: whole cache lines apart. */
size_t dsv_q_act_stride(int K) { return (dsv_q8_act_bytes(K) + 63) & ~(size_t)63; }

void dsv_q_act_rows(void *act, const void *x, int x_bf16, int K, int m, int level) {
    const dsv_q8_act_quant_fn aq = dsv_q8_act_quant_for(level);
    const size_t ab = dsv_q_act_stride(K);
    for (int r = 0; r < m; r++) aq((char *)act + (size_t)r * ab, (const char *)x + (size_t)r * K * (x_bf16 ? 2 : 4), x_bf16, K);
}

/* g <= DSV_Q_ROWS quantized rows act (ab apart; input rows i0..) against
 * weight rows [n0, n1), the rows handed to the kernel as many at a time as
 * out[] holds (long ranges: the decoding kernels stream from two places). */
static void q_rows(const struct dsv_linear *w, const uint8_t *act, size_t ab, int g, int i0, int n0, int n1,
                   float *yf, uint16_t *yb, int ldy, dsv_q_dot_mat_fn dot) {
    const size_t row = dsv_ggml_row_size(w->gtype, w->ld);
    enum { OUT = 2048 }; /* results of one kernel call: 2048 weight rows of one input row, 128 of 16 */
    float out[OUT];
    const int chunk = OUT / g;
    for (int c0 = n0; c0 < n1; c0 += chunk) {
        const int nc = DSV_MIN(chunk, n1 - c0);
        dot(w->gtype, (const char *)w->w + (size_t)c0 * row, row, nc, act, ab, g, w->n_in, out);
        for (int j = 0; j < nc; j++)
            for (int r = 0; r < g; r++) {
                const float v = out[j * g + r];
                if (yf) yf[(size_t)(i0 + r) * ldy + c0 + j] = v;
                else yb[(size_t)(i0 + r) * ldy + c0 + j] = dsv_f32_to_bf16(v);
            }
    }
}

/* Input rows [0, m) against weight rows [n0, n1), a group of up to
 * DSV_Q_ROWS input rows at a time (as many as the scratch holds): the
 * group's activations are quantized once, then each weight row is decoded
 * once for the group. x: bf16 rows (x_bf16) or fp32 rows, K wide. */
static void q_linear(const struct dsv_linear *w, int m, int n0, int n1, void *scratch, const void *x, int x_bf16,
                     float *yf, uint16_t *yb, int ldy, int level) {
    const int K = w->n_in;
    const size_t ab = dsv_q_act_stride(K);
    uint8_t *act = scratch;
    const size_t room = DSV_LIN_SCRATCH;
    DSV_ASSERT(ab <= room);
    const int group = (int)DSV_MIN((size_t)DSV_Q_ROWS, room / ab);
    const dsv_q_dot_mat_fn dot = dsv_q_dot_mat_for(level);
    for (int i0 = 0; i0 < m; i0 += group) {
        const int g = DSV_MIN(group, m - i0);
        dsv_q_act_rows(act, (const char *)x + (size_t)i0 * K * (x_bf16 ? 2 : 4), x_bf16, K, g, level);
        q_rows(w, act, ab, g, i0, n0, n1, yf, yb, ldy, dot);
    }
}

void dsv_linear_q(uint16_t *y, int ldy, const uint16_t *x, const struct dsv_linear *w, int m, int n0, int n1,
                  void *scratch, int level) {
    q_linear(w, m, n0, n1, scratch, x, 1, NULL, y, ldy, level);
}

void dsv_linear_q_f32(float *y, int ldy, const float *x, const struct dsv_linear *w, int m, int n0, int n1,
                      void *scratch, int level) {
    q_linear(w, m, n0, n1, scratch, x, 0, y, NULL, ldy, level);
}

void dsv_linear_q_act(float *yf, uint16_t *yb, int ldy, const void *act, const struct dsv_linear *w, int m, int n0,
                      int n1, int level) {
    const size_t ab = dsv_q_act_stride(w->n_in);
    const dsv_q_dot_mat_fn dot = dsv_q_dot_mat_for(level);
    for (int i0 = 0; i0 < m; i0 += DSV_Q_ROWS)
        q_rows(w, (const uint8_t *)act + (size_t)i0 * ab, ab, DSV_MIN(DSV_Q_ROWS, m - i0), i0, n0, n1, yf, yb, ldy, dot);
}
