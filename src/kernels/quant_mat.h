/* quant_mat.h: the row schedule of dsv_q_dot_mat_* that quant_avx2.c and
 * quant_avx512.c share. Each file defines its kernels under the same names
 * (q8_0_rows, q8_0_pair, ...: TYPE_rows(w, act, stride, n, K, out) for up to
 * 8 activation rows, TYPE_pair(w0, w1, act, K, out0, out1) for one) and
 * then writes its dsv_q_dot_mat_LEVEL as Q_DOT_MAT_SWITCH(ROWS_BY_4) or
 * (ROWS_BY_8): how many activation rows a K-quant kernel takes at once is
 * the one difference (AVX-512's 32 registers hold 8 rows' sums, AVX2's 16
 * hold 4). */
#ifndef DSV32_KERNELS_QUANT_MAT_H
#define DSV32_KERNELS_QUANT_MAT_H

/* Weight rows W, W + wrow, ... (nw of them) against n activation rows into
 * OUT[j * n + r], G activation rows at a time (the same code per row
 * whatever the group). One call runs a whole range of weight rows, so the
 * kernels' constants are set up once per call rather than once per weight
 * row (what a 2-block row of K = 512 notices). */
#define ROWS_BY(G, fn, CASES)                                                                       \
    for (int j = 0; j < nw; j++) {                                                                  \
        const uint8_t *wj = (const uint8_t *)w + (size_t)j * wrow;                                  \
        float *oj = out + (size_t)j * n;                                                            \
        if (n == 1) {                                                                               \
            fn(wj, act, stride, 1, K, oj);                                                          \
            continue;                                                                               \
        }                                                                                           \
        for (int r0 = 0; r0 < n; r0 += G) {                                                         \
            const uint8_t *ar = (const uint8_t *)act + (size_t)r0 * stride;                          \
            switch (n - r0 < G ? n - r0 : G) {                                                      \
            CASES(fn)                                                                               \
            default: fn(wj, ar, stride, G, K, oj + r0); break;                                      \
            }                                                                                       \
        }                                                                                           \
    }
#define CASES_3(fn)                                                                                 \
    case 1: fn(wj, ar, stride, 1, K, oj + r0); break;                                               \
    case 2: fn(wj, ar, stride, 2, K, oj + r0); break;                                               \
    case 3: fn(wj, ar, stride, 3, K, oj + r0); break;
#define CASES_7(fn)                                                                                 \
    CASES_3(fn)                                                                                     \
    case 4: fn(wj, ar, stride, 4, K, oj + r0); break;                                               \
    case 5: fn(wj, ar, stride, 5, K, oj + r0); break;                                               \
    case 6: fn(wj, ar, stride, 6, K, oj + r0); break;                                               \
    case 7: fn(wj, ar, stride, 7, K, oj + r0); break;
/* One activation row (decoding) against the K-quants' weight rows two at a
 * time: row j with row j + nw/2, so that each of the two is a forward
 * stream through memory (rows j and j + 1 together, measured, ran at half
 * the speed from DRAM: two interleaved addresses in one page seem to defeat
 * the prefetchers), the last row of an odd count alone. */
#define PAIRS(pair, fn)                                                                             \
    {                                                                                               \
        const int h = nw / 2;                                                                       \
        for (int j = 0; j < h; j++)                                                                 \
            pair((const uint8_t *)w + (size_t)j * wrow, (const uint8_t *)w + (size_t)(j + h) * wrow, \
                 (const uint8_t *)act, K, out + j, out + j + h);                                    \
        if (nw & 1) fn((const uint8_t *)w + (size_t)(nw - 1) * wrow, act, stride, 1, K, out + nw - 1); \
    }
#define ROWS_BY_4(fn) ROWS_BY(4, fn, CASES_3)
#define ROWS_BY_8(fn) ROWS_BY(8, fn, CASES_7)

/* The body of dsv_q_dot_mat_LEVEL: one activation row pairs the weight
 * rows, more go by the 32-value types' 4 or by KQ_ROWS for the K-quants. */
#define Q_DOT_MAT_SWITCH(KQ_ROWS)                                                                   \
switch (type) {                                                                                 \
    case DSV_GGML_Q8_0:                                                                             \
        if (n == 1) PAIRS(q8_0_pair, q8_0_rows)                                                     \
        else ROWS_BY_4(q8_0_rows)                                                                   \
        return;                                                                                     \
    case DSV_GGML_Q4_0:                                                                             \
        if (n == 1) PAIRS(q4_0_pair, q4_0_rows)                                                     \
        else ROWS_BY_4(q4_0_rows)                                                                   \
        return;                                                                                     \
    case DSV_GGML_Q4_1:                                                                             \
        if (n == 1) PAIRS(q4_1_pair, q4_1_rows)                                                     \
        else ROWS_BY_4(q4_1_rows)                                                                   \
        return;                                                                                     \
    case DSV_GGML_Q5_0:                                                                             \
        if (n == 1) PAIRS(q5_0_pair, q5_0_rows)                                                     \
        else ROWS_BY_4(q5_0_rows)                                                                   \
        return;                                                                                     \
    case DSV_GGML_Q5_1:                                                                             \
        if (n == 1) PAIRS(q5_1_pair, q5_1_rows)                                                     \
        else ROWS_BY_4(q5_1_rows)                                                                   \
        return;                                                                                     \
    case DSV_GGML_IQ4_NL:                                                                           \
        if (n == 1) PAIRS(iq4_nl_pair, iq4_nl_rows)                                                 \
        else ROWS_BY_4(iq4_nl_rows)                                                                 \
        return;                                                                                     \
    case DSV_GGML_Q4_K:                                                                             \
        if (n == 1) PAIRS(q4_k_pair, q4_k_rows)                                                     \
        else KQ_ROWS(q4_k_rows)                                                                     \
        return;                                                                                     \
    case DSV_GGML_Q5_K:                                                                             \
        if (n == 1) PAIRS(q5_k_pair, q5_k_rows)                                                     \
        else KQ_ROWS(q5_k_rows)                                                                     \
        return;                                                                                     \
    case DSV_GGML_Q2_K:                                                                             \
        if (n == 1) PAIRS(q2_k_pair, q2_k_rows)                                                     \
        else KQ_ROWS(q2_k_rows)                                                                     \
        return;                                                                                     \
    case DSV_GGML_Q3_K:                                                                             \
        if (n == 1) PAIRS(q3_k_pair, q3_k_rows)                                                     \
        else KQ_ROWS(q3_k_rows)                                                                     \
        return;                                                                                     \
    case DSV_GGML_Q6_K:                                                                             \
        if (n == 1) PAIRS(q6_k_pair, q6_k_rows)                                                     \
        else KQ_ROWS(q6_k_rows)                                                                     \
        return;                                                                                     \
    default: DSV_ASSERT(!"a block type without a kernel"); /* quant.c passes only the types above */\
    }

#endif
