/* train_gemm.c: the fp32 matrix product behind training, with its scalar
 * reference and the run-time choice of a SIMD variant.
 *
 * One general form covers every product of the forward and backward passes
 * (x·Wᵀ, dy·W, dyᵀ·x, the attention products) through element strides:
 *   C[i][j] (+)= Σ_k A(i,k) · B(k,j),  A(i,k) = A[i*asi + k*ask],
 *                                      B(k,j) = B[k*bsk + j*bsj].
 * The SIMD variants (train_gemm_<isa>.c) pack A and B into cache-sized
 * panels, so any stride runs at the same speed; the reference here is the
 * plain triple loop they are tested against. DSV32_ISA=generic forces it. */
#include <stdlib.h>
#include <string.h>

#include "train.h"
#include "kernels/ops.h"

void dsv_tr_gemm_ref(float *C, long ldc, const float *A, long asi, long ask, const float *B, long bsk,
                     long bsj, int M, int N, int K, int accumulate) {
    for (int i = 0; i < M; i++) {
        float *c = C + (long)i * ldc;
        if (!accumulate)
            for (int j = 0; j < N; j++) c[j] = 0;
        for (int k = 0; k < K; k++) {
            float a = A[(long)i * asi + (long)k * ask];
            if (a == 0) continue;
            const float *b = B + (long)k * bsk;
            for (int j = 0; j < N; j++) c[j] += a * b[(long)j * bsj];
        }
    }
}

static dsv_tr_gemm_fn chosen;

dsv_tr_gemm_fn dsv_tr_gemm_select(void) {
    if (chosen) return chosen;
    dsv_tr_gemm_fn f = dsv_tr_gemm_ref;
#if defined(__x86_64__)
    if (dsv_kernels_env_level() != DSV_KLEVEL_GENERIC && __builtin_cpu_supports("avx512f")) f = dsv_tr_gemm_avx512;
#endif
    chosen = f;
    return f;
}

void dsv_tr_gemm(float *C, long ldc, const float *A, long asi, long ask, const float *B, long bsk, long bsj,
                 int M, int N, int K, int accumulate) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        if (!accumulate)
            for (int i = 0; i < M; i++) memset(C + (long)i * ldc, 0, (size_t)N * sizeof *C);
        return;
    }
    dsv_tr_gemm_select()(C, ldc, A, asi, ask, B, bsk, bsj, M, N, K, accumulate);
}
