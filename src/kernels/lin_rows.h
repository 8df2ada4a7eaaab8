/* lin_rows.h: the order in which the decoding linears of ops_avx2.c and
 * ops_avx512.c (fp8, and bf16/f16/f32 weights with fp8 activations) visit
 * a thread's output rows. Kernels-internal.
 *
 * Blocks of 64 weight rows, which stay in L2, pass every input row, up to
 * 4 input rows at a time sharing each weight load: ROW(n, i, mr) computes
 * output n of input rows i..i+mr-1. mr reaches ROW as a constant 1..4, so
 * each width compiles on its own with its accumulators in registers; a
 * row's arithmetic must not depend on mr, so that batching changes no bit.
 * A macro because the kernels' row functions take different arguments and
 * the width must stay a constant in each. */
#ifndef DSV_LIN_ROWS_H
#define DSV_LIN_ROWS_H

#define DSV_LIN_ROWS_64X4(m, n0, n1, ROW)                                       \
    do {                                                                        \
        for (int nb_ = (n0); nb_ < (n1); nb_ += 64) {                           \
            const int ne_ = (n1) - nb_ < 64 ? (n1) : nb_ + 64;                  \
            for (int i_ = 0; i_ < (m); i_ += 4) {                               \
                const int mr_ = (m) - i_;                                       \
                for (int n_ = nb_; n_ < ne_; n_++) {                            \
                    if (mr_ >= 4) ROW(n_, i_, 4);                               \
                    else if (mr_ == 3) ROW(n_, i_, 3);                          \
                    else if (mr_ == 2) ROW(n_, i_, 2);                          \
                    else ROW(n_, i_, 1);                                        \
                }                                                               \
            }                                                                   \
        }                                                                       \
    } while (0)

#endif
