/* train_gemm_avx512.c: the training matrix product with AVX-512 FMA.
 *
 * GotoBLAS-style blocking: B is packed per (KC x NC) block into panels of 32
 * columns ([k][32], zero-padded), A per (MC x KC) block into panels of 6 rows
 * ([k][6], zero-padded); a 6x32 micro-kernel keeps 12 zmm accumulators over
 * the whole KC depth and adds its tile into C. Packing makes the strides of
 * dsv_tr_gemm irrelevant to speed. Same result as dsv_tr_gemm_ref up to the
 * order of the fp32 sums. */
#include <immintrin.h>
#include <stdalign.h>
#include <string.h>

#include "train.h"

enum { MR = 6, NR = 32, KC = 256, MC = 120, NC = 512 };

static _Thread_local alignas(64) float pack_a[MC * KC];
static _Thread_local alignas(64) float pack_b[KC * NC];

static void pack_b_block(float *dst, const float *B, long bsk, long bsj, int k0, int kc, int j0, int nc) {
    for (int jp = 0; jp < nc; jp += NR) {
        int w = nc - jp < NR ? nc - jp : NR;
        float *d = dst + (long)jp * kc;
        for (int k = 0; k < kc; k++) {
            const float *b = B + (long)(k0 + k) * bsk + (long)(j0 + jp) * bsj;
            float *o = d + (long)k * NR;
            if (bsj == 1) {
                memcpy(o, b, (size_t)w * sizeof *o);
            } else {
                for (int j = 0; j < w; j++) o[j] = b[(long)j * bsj];
            }
            for (int j = w; j < NR; j++) o[j] = 0;
        }
    }
}

static void pack_a_block(float *dst, const float *A, long asi, long ask, int i0, int mc, int k0, int kc) {
    for (int ip = 0; ip < mc; ip += MR) {
        int h = mc - ip < MR ? mc - ip : MR;
        float *d = dst + (long)ip * kc;
        if (ask == 1) {
            for (int r = 0; r < h; r++) {
                const float *a = A + (long)(i0 + ip + r) * asi + k0;
                for (int k = 0; k < kc; k++) d[(long)k * MR + r] = a[k];
            }
        } else {
            for (int k = 0; k < kc; k++) {
                const float *a = A + (long)(i0 + ip) * asi + (long)(k0 + k) * ask;
                for (int r = 0; r < h; r++) d[(long)k * MR + r] = a[(long)r * asi];
            }
        }
        for (int r = h; r < MR; r++)
            for (int k = 0; k < kc; k++) d[(long)k * MR + r] = 0;
    }
}

/* tile[6][32] = Σ_k a[k][0..6) ⊗ b[k][0..32). */
static void micro(float *tile, const float *a, const float *b, int kc) {
    __m512 c00 = _mm512_setzero_ps(), c01 = _mm512_setzero_ps();
    __m512 c10 = _mm512_setzero_ps(), c11 = _mm512_setzero_ps();
    __m512 c20 = _mm512_setzero_ps(), c21 = _mm512_setzero_ps();
    __m512 c30 = _mm512_setzero_ps(), c31 = _mm512_setzero_ps();
    __m512 c40 = _mm512_setzero_ps(), c41 = _mm512_setzero_ps();
    __m512 c50 = _mm512_setzero_ps(), c51 = _mm512_setzero_ps();
    for (int k = 0; k < kc; k++) {
        __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16);
        __m512 x;
        x = _mm512_set1_ps(a[0]); c00 = _mm512_fmadd_ps(x, b0, c00); c01 = _mm512_fmadd_ps(x, b1, c01);
        x = _mm512_set1_ps(a[1]); c10 = _mm512_fmadd_ps(x, b0, c10); c11 = _mm512_fmadd_ps(x, b1, c11);
        x = _mm512_set1_ps(a[2]); c20 = _mm512_fmadd_ps(x, b0, c20); c21 = _mm512_fmadd_ps(x, b1, c21);
        x = _mm512_set1_ps(a[3]); c30 = _mm512_fmadd_ps(x, b0, c30); c31 = _mm512_fmadd_ps(x, b1, c31);
        x = _mm512_set1_ps(a[4]); c40 = _mm512_fmadd_ps(x, b0, c40); c41 = _mm512_fmadd_ps(x, b1, c41);
        x = _mm512_set1_ps(a[5]); c50 = _mm512_fmadd_ps(x, b0, c50); c51 = _mm512_fmadd_ps(x, b1, c51);
        a += MR;
        b += NR;
    }
    _mm512_storeu_ps(tile + 0, c00);   _mm512_storeu_ps(tile + 16, c01);
    _mm512_storeu_ps(tile + 32, c10);  _mm512_storeu_ps(tile + 48, c11);
    _mm512_storeu_ps(tile + 64, c20);  _mm512_storeu_ps(tile + 80, c21);
    _mm512_storeu_ps(tile + 96, c30);  _mm512_storeu_ps(tile + 112, c31);
    _mm512_storeu_ps(tile + 128, c40); _mm512_storeu_ps(tile + 144, c41);
    _mm512_storeu_ps(tile + 160, c50); _mm512_storeu_ps(tile + 176, c51);
}

/* C rows [h] x cols [w] (+)= tile. */
static void add_tile(float *C, long ldc, const float *tile, int h, int w, int assign) {
    __mmask16 m0 = w >= 16 ? 0xffff : (__mmask16)((1u << w) - 1);
    __mmask16 m1 = w >= 32 ? 0xffff : w <= 16 ? 0 : (__mmask16)((1u << (w - 16)) - 1);
    for (int r = 0; r < h; r++) {
        float *c = C + (long)r * ldc;
        __m512 t0 = _mm512_loadu_ps(tile + r * NR), t1 = _mm512_loadu_ps(tile + r * NR + 16);
        if (!assign) {
            t0 = _mm512_add_ps(t0, _mm512_maskz_loadu_ps(m0, c));
            t1 = _mm512_add_ps(t1, _mm512_maskz_loadu_ps(m1, c + 16));
        }
        _mm512_mask_storeu_ps(c, m0, t0);
        _mm512_mask_storeu_ps(c + 16, m1, t1);
    }
}

void dsv_tr_gemm_avx512(float *C, long ldc, const float *A, long asi, long ask, const float *B, long bsk,
                        long bsj, int M, int N, int K, int accumulate) {
    alignas(64) float tile[MR * NR];
    for (int j0 = 0; j0 < N; j0 += NC) {
        int nc = N - j0 < NC ? N - j0 : NC;
        for (int k0 = 0; k0 < K; k0 += KC) {
            int kc = K - k0 < KC ? K - k0 : KC;
            int assign = !accumulate && k0 == 0;
            pack_b_block(pack_b, B, bsk, bsj, k0, kc, j0, nc);
            for (int i0 = 0; i0 < M; i0 += MC) {
                int mc = M - i0 < MC ? M - i0 : MC;
                pack_a_block(pack_a, A, asi, ask, i0, mc, k0, kc);
                for (int jp = 0; jp < nc; jp += NR) {
                    int w = nc - jp < NR ? nc - jp : NR;
                    for (int ip = 0; ip < mc; ip += MR) {
                        int h = mc - ip < MR ? mc - ip : MR;
                        micro(tile, pack_a + (long)ip * kc, pack_b + (long)jp * kc, kc);
                        add_tile(C + (long)(i0 + ip) * ldc + j0 + jp, ldc, tile, h, w, assign);
                    }
                }
            }
        }
    }
}
