/* ops_amx.c: the AMX kernel set: linear layers, indexer scores and both
 * attention forms on AMX-BF16 tiles; the fp32 linears, the absorptions
 * through wkv_b (weight streaming, no reuse to tile), act_quant, dequant
 * and the row ops are the AVX-512 set's.
 *
 * A linear computes Cᵀ = W·Xᵀ: the weight rows, as stored (16 rows x 32
 * values of K), are the A operand, so no weight is ever repacked ahead of
 * time; the activations, transposed once per call into the VNNI layout
 * (pairs of consecutive k per 32-bit column), are the B operand. A tile of
 * results is then 16 outputs x 16 input rows. fp8 weights are widened to
 * bf16 (exactly: every e4m3 value is a bf16 value) into a small per-thread
 * buffer as they are used, and so are the quantized activations at packing
 * time, so the tile products are exactly the e4m3 products. For fp8, each
 * 128-wide K block gets a fresh accumulator tile, which is then scaled by
 * xs * ws and added into fp32 totals (fp8_gemm's block promotion); bf16
 * layers accumulate the whole K in the tile.
 *
 * Batch invariance: an output element's value is the sequence of tile
 * products over its own row and column, in K order (storing a tile and
 * loading it back to continue is exact), then the same promotion and
 * rounding. That sequence does not depend on the number of rows, on which
 * other rows share the tile (zero-padded rows add nothing to other rows'
 * elements) or on the column range. Two loop orders exist, one streaming
 * the weights once for up to 32 input rows (decoding: the weights are read
 * at memory speed) and one blocked for cache reuse (prefill); both run that
 * same sequence per element, so they agree bit for bit.
 *
 * AMX's own summation (TDPBF16PS) is more precise than a chain of fp32
 * adds and differs from AVX512_BF16's VDPBF16PS, which is why the AMX set
 * never mixes in another kernel for any row count. The attention and
 * indexer kernels follow the same rule: queries (or heads) share tiles but
 * each one's result is its own row or column of products (see each
 * section). Tiles are configured once per thread (16 rows x 64 bytes each).
 *
 * Known limit: decoding with fp8 weights runs at ~7 GB/s per core, below
 * memory speed (bf16 weights are loaded in place and stream at ~14 GB/s):
 * each 128-wide block's tile is widened, multiplied, stored and promoted
 * in a chain whose latency the single input row cannot hide. */
#include <string.h>

#include "ops_avx512.h"

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} __attribute__((packed)) tile_config;

/* The configuration loaded on this thread (0: none yet). */
static _Thread_local const void *tiles_loaded;

/* Every tile 16 rows x 64 bytes. Constant objects: GCC does not see that
 * LDTILECFG reads its operand and drops stores to a local config. */
static const tile_config tile_cfg = {
    .palette = 1,
    .colsb = {64, 64, 64, 64, 64, 64, 64, 64},
    .rows = {16, 16, 16, 16, 16, 16, 16, 16},
};
/* m <= 16 input rows (decoding): the results (tiles 0-3) and the input
 * (6, 7) are m 4-byte columns wide, so a result tile stores as [16][m]
 * contiguous floats. An element's arithmetic does not depend on the
 * tile's width: each is the same chain of products as in a full tile. */
#define CFG_M(m) {.palette = 1, .colsb = {4 * (m), 4 * (m), 4 * (m), 4 * (m), 64, 64, 4 * (m), 4 * (m)}, \
                  .rows = {16, 16, 16, 16, 16, 16, 16, 16}}
static const tile_config tile_cfg_m[17] = {CFG_M(1),  CFG_M(1),  CFG_M(2),  CFG_M(3),  CFG_M(4),  CFG_M(5),
                                           CFG_M(6),  CFG_M(7),  CFG_M(8),  CFG_M(9),  CFG_M(10), CFG_M(11),
                                           CFG_M(12), CFG_M(13), CFG_M(14), CFG_M(15), CFG_M(16)};

static inline void tiles_use(const tile_config *cfg) {
    if (tiles_loaded == cfg) return;
    _tile_loadconfig(cfg);
    tiles_loaded = cfg;
}
static void tiles_configure(void) { tiles_use(&tile_cfg); }

static inline int round16(int n) { return (n + 15) & ~15; }
static inline int round32(int n) { return (n + 31) & ~31; }

/* ---- conversions ------------------------------------------------------- */

/* e4m3 -> bf16 by table: byte lookups (AVX512_VBMI's two-register byte
 * permute, 128 entries = the 7 magnitude bits) give the low and high bytes
 * of bf16(value) for each code's magnitude; the sign bit goes on top. Every
 * e4m3 value is exactly a bf16 value; NaN codes (0x7f, 0xff) give NaN. Three
 * times cheaper than widening by arithmetic, which bounds streaming fp8
 * weights through tiles. Table: the bytes of bf16(e4m3 magnitude m),
 * m = 0..127 (numeric.h's decode, whose values all fit bf16 exactly). */
static _Alignas(64) const uint8_t e4m3_lo[128] = {
    0x00, 0x00, 0x80, 0xc0, 0x00, 0x20, 0x40, 0x60, 0x80, 0x90, 0xa0, 0xb0, 0xc0, 0xd0, 0xe0, 0xf0,
    0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xa0, 0xb0, 0xc0, 0xd0, 0xe0, 0xf0,
    0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xa0, 0xb0, 0xc0, 0xd0, 0xe0, 0xf0,
    0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xa0, 0xb0, 0xc0, 0xd0, 0xe0, 0xf0,
    0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xa0, 0xb0, 0xc0, 0xd0, 0xe0, 0xf0,
    0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xa0, 0xb0, 0xc0, 0xd0, 0xe0, 0xf0,
    0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xa0, 0xb0, 0xc0, 0xd0, 0xe0, 0xf0,
    0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xa0, 0xb0, 0xc0, 0xd0, 0xe0, 0xc0};
static _Alignas(64) const uint8_t e4m3_hi[128] = {
    0x00, 0x3b, 0x3b, 0x3b, 0x3c, 0x3c, 0x3c, 0x3c, 0x3c, 0x3c, 0x3c, 0x3c, 0x3c, 0x3c, 0x3c, 0x3c,
    0x3d, 0x3d, 0x3d, 0x3d, 0x3d, 0x3d, 0x3d, 0x3d, 0x3d, 0x3d, 0x3d, 0x3d, 0x3d, 0x3d, 0x3d, 0x3d,
    0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x3e,
    0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f,
    0x40, 0x40, 0x40, 0x40, 0x40, 0x40, 0x40, 0x40, 0x40, 0x40, 0x40, 0x40, 0x40, 0x40, 0x40, 0x40,
    0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41,
    0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42,
    0x43, 0x43, 0x43, 0x43, 0x43, 0x43, 0x43, 0x43, 0x43, 0x43, 0x43, 0x43, 0x43, 0x43, 0x43, 0x7f};

/* 64 codes -> bf16 words in the fp8 K order (below): *a gets codes
 * 0-7, 16-23, 32-39, 48-55 and *b codes 8-15, 24-31, 40-47, 56-63, which is
 * what a byte interleave gives per 128-bit lane; putting them back in
 * order would take two more shuffles on the one port that runs them.
 *
 * fp8 K order: every fp8 operand (weights and the activations of an fp8
 * layer) is widened by this function, so a tile step holds the same K
 * positions on both sides; a dot product only needs its two operands to
 * agree, and the order is one fixed permutation for every row, M and
 * thread split. */
static inline void e4m3x64_bf16(__m512i c, __m512i *a, __m512i *b) {
    const __m512i lo = _mm512_permutex2var_epi8(_mm512_load_si512(e4m3_lo), c, _mm512_load_si512(e4m3_lo + 64));
    __m512i hi = _mm512_permutex2var_epi8(_mm512_load_si512(e4m3_hi), c, _mm512_load_si512(e4m3_hi + 64));
    hi = _mm512_ternarylogic_epi32(hi, c, _mm512_set1_epi8((char)0x80), 0xf8); /* hi | (c & 0x80) */
    *a = _mm512_unpacklo_epi8(lo, hi);
    *b = _mm512_unpackhi_epi8(lo, hi);
}

/* 32 weights of a non-fp8 row from element i as bf16 bits (the first n if
 * n < 32, zeros after); f16/f32 weights rounded to bf16 as the reference's
 * bf16 Linear holds them. */
static inline __m512i w32_bf16(const dsv_linear *w, size_t i, int n) {
    const __mmask32 m = n >= 32 ? (__mmask32)0xffffffffu : (__mmask32)((1u << n) - 1);
    if (w->dtype == DSV_DT_BF16) return _mm512_maskz_loadu_epi16(m, (const dsv_bf16 *)w->w + i);
    __m512 lo, hi;
    if (w->dtype == DSV_DT_F16) {
        lo = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16((__mmask16)m, (const uint16_t *)w->w + i));
        hi = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16((__mmask16)(m >> 16), (const uint16_t *)w->w + i + 16));
    } else {
        lo = _mm512_maskz_loadu_ps((__mmask16)m, (const float *)w->w + i);
        hi = _mm512_maskz_loadu_ps((__mmask16)(m >> 16), (const float *)w->w + i + 16);
    }
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi32_epi16(f32x16_bf16_bits(lo))),
                              _mm512_cvtepi32_epi16(f32x16_bf16_bits(hi)), 1);
}

/* Transposes a 16x16 matrix of 32-bit elements held in r[16] (row i in
 * r[i]) in place: afterwards r[j] holds column j. */
static inline __attribute__((always_inline)) void transpose16(__m512i r[16]) {
    __m512i t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    /* r[4g+k], 128-bit lane L, now holds element 4L+k of rows 4g..4g+3;
     * two rounds of 128-bit block shuffles gather column 4L+k. */
    for (int i = 0; i < 4; i++) {
        t[i] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0x88);
        t[i + 4] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0xdd);
        t[i + 8] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0x88);
        t[i + 12] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0xdd);
    }
    for (int i = 0; i < 4; i++) {
        r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xdd);
        r[i + 4] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0x88);
        r[i + 12] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0xdd);
    }
}

/* ---- packed activations ---------------------------------------------------
 * Rows in tiles of 16 (padded with zero rows), K padded to 32 with zeros:
 * tile mt, k-step kt is 16 rows of 64 bytes at xp + ((mt*Kp/32 + kt)*16)*64,
 * row j holding (x[16mt+i][32kt+2j], x[16mt+i][32kt+2j+1]) for i = 0..15.
 * fp8 layers then store the scales transposed, xsT[K/128][Mp], from the next
 * 64-byte boundary. */

static inline uint8_t *x_tile(const void *xp, int Kp, int mt, int kt) {
    return (uint8_t *)xp + ((size_t)mt * (Kp / 32) + kt) * 1024;
}
static inline float *x_scales(const void *xp, int m, int K) {
    return (float *)((uint8_t *)xp + (size_t)round16(m) * round32(K) * 2);
}

/* Writes the 16 x 32 bf16 block r[16] (row i = input row) as one B tile. */
static inline void store_b_tile(uint8_t *dst, __m512i r[16]) {
    transpose16(r);
    for (int j = 0; j < 16; j++) _mm512_store_si512(dst + 64 * j, r[j]);
}

static void lin_pack_bf16(void *xp, const dsv_bf16 *x, int m, int K, int i0, int i1) {
    const int Kp = round32(K);
    (void)i1;
    for (int mt = i0 / 16; mt * 16 < (i1 == m ? round16(m) : i1); mt++)
        for (int kt = 0; kt < Kp / 32; kt++) {
            __m512i r[16];
            const int k = 32 * kt, len = K - k < 32 ? K - k : 32;
            const __mmask32 km = len >= 32 ? (__mmask32)0xffffffffu : (__mmask32)((1u << len) - 1);
            for (int i = 0; i < 16; i++) {
                const int row = 16 * mt + i;
                r[i] = row < m ? _mm512_maskz_loadu_epi16(km, x + (size_t)row * K + k) : _mm512_setzero_si512();
            }
            store_b_tile(x_tile(xp, Kp, mt, kt), r);
        }
}

static void lin_pack_fp8(void *xp, const dsv_bf16 *x, int m, int K, int i0, int i1, int scale_fmt) {
    const int Kp = K, Mp = round16(m);
    float *xsT = x_scales(xp, m, K);
    for (int mt = i0 / 16; mt * 16 < (i1 == m ? Mp : i1); mt++)
        for (int kb = 0; kb < K / DSV_QBLOCK; kb++) {
            _Alignas(64) uint8_t q[16][DSV_QBLOCK];
            for (int i = 0; i < 16; i++) {
                const int row = 16 * mt + i;
                if (row >= m) {
                    memset(q[i], 0, DSV_QBLOCK);
                    xsT[(size_t)kb * Mp + row] = 0;
                    continue;
                }
                __m512 v[8];
                for (int j = 0; j < 8; j++) v[j] = bf16x16_load(x + (size_t)row * K + kb * DSV_QBLOCK + 16 * j);
                xsT[(size_t)kb * Mp + row] = act_quant_group(q[i], v, scale_fmt);
            }
            for (int h = 0; h < 2; h++) { /* steps 2h, 2h+1: 64 codes in the fp8 K order */
                __m512i ra[16], rb[16];
                for (int i = 0; i < 16; i++) e4m3x64_bf16(_mm512_load_si512(q[i] + 64 * h), &ra[i], &rb[i]);
                store_b_tile(x_tile(xp, Kp, mt, kb * 4 + 2 * h), ra);
                store_b_tile(x_tile(xp, Kp, mt, kb * 4 + 2 * h + 1), rb);
            }
        }
}

/* ---- weight tiles ---------------------------------------------------------
 * 16 rows of W from row n (rows >= N zero) and 32 * kts values of K from
 * k0 (zeros past K), as bf16 A tiles [kts][16][32] at dst. */
static void w_tiles(uint8_t *dst, const dsv_linear *w, int n, int k0, int kts) {
    const int K = w->n_in, rows = w->n_out - n < 16 ? w->n_out - n : 16;
    for (int i = 0; i < 16; i++) {
        uint8_t *d = dst + 64 * i;
        if (i >= rows) {
            for (int kt = 0; kt < kts; kt++) _mm512_store_si512(d + (size_t)kt * 1024, _mm512_setzero_si512());
            continue;
        }
        const size_t r = (size_t)(n + i) * w->ld + k0;
        if (w->dtype == DSV_DT_F8_E4M3) {
            /* K is a multiple of 128, k0 of 64 and kts even: steps come in
             * pairs of 64 codes, in the fp8 K order. */
            const uint8_t *src = (const uint8_t *)w->w + r;
            for (int kt = 0; kt < kts; kt += 2) {
                __m512i a, b;
                e4m3x64_bf16(_mm512_loadu_si512(src + 32 * kt), &a, &b);
                _mm512_store_si512(d + (size_t)kt * 1024, a);
                _mm512_store_si512(d + (size_t)(kt + 1) * 1024, b);
            }
        } else if (w->dtype == DSV_DT_BF16 && k0 + 32 * kts <= K) {
            const dsv_bf16 *src = (const dsv_bf16 *)w->w + r;
            for (int kt = 0; kt < kts; kt++) _mm512_store_si512(d + (size_t)kt * 1024, _mm512_loadu_si512(src + 32 * kt));
        } else {
            for (int kt = 0; kt < kts; kt++) {
                const int k = k0 + 32 * kt;
                _mm512_store_si512(d + (size_t)kt * 1024, k < K ? w32_bf16(w, r + 32 * (size_t)kt, K - k)
                                                                : _mm512_setzero_si512());
            }
        }
    }
}

/* Asks for line `line` (64 bytes) of rows n..n+rows, within values
 * k0..k0+32*kts, of the weight to be brought into L2 while the current
 * block is used; spread over the compute loop, a few at a time, since a
 * burst of prefetches stalls on the line fill buffers. */
static inline void w_prefetch(const dsv_linear *w, int n, int rows, int k0, int kts, int line) {
    const size_t es = w->dtype == DSV_DT_F8_E4M3 ? 1 : w->dtype == DSV_DT_F32 ? 4 : 2;
    const size_t row = (size_t)w->ld * es, off = (size_t)k0 * es + (size_t)line * 64;
    if (rows <= 0 || (size_t)line * 64 >= (size_t)32 * kts * es || off >= row) return;
    const char *p = (const char *)w->w + (size_t)n * row + off;
    for (int i = 0; i < rows; i++) _mm_prefetch(p + (size_t)i * row, _MM_HINT_T1);
}

/* ---- results --------------------------------------------------------------
 * acc [n][ld] holds fp32 results for nn outputs and mr input rows:
 * y[r][n0 + j] = bf16(acc[j][r]), written 16 x 16 at a time through a
 * register transpose. */
static void write_out(dsv_bf16 *y, int ldy, const float *acc, int ld, int n0, int nn, int mr) {
    /* Even 16-bit halves of two vectors of 32-bit lanes: the bf16 bits of
     * 32 results, in order. */
    static const uint16_t even_idx[32] = {0,  2,  4,  6,  8,  10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30,
                                          32, 34, 36, 38, 40, 42, 44, 46, 48, 50, 52, 54, 56, 58, 60, 62};
    const __m512i even = _mm512_loadu_si512(even_idx);
    /* Rows outer: the 16 output rows' lines are completed while in L1. */
    for (int r0 = 0; r0 < mr; r0 += 16)
        for (int j = 0; j < nn; j += 32) {
            __m512i a[16], b[16];
            for (int i = 0; i < 16; i++) {
                a[i] = j + i < nn ? _mm512_castps_si512(_mm512_loadu_ps(acc + (size_t)(j + i) * ld + r0))
                                  : _mm512_setzero_si512();
                b[i] = j + 16 + i < nn ? _mm512_castps_si512(_mm512_loadu_ps(acc + (size_t)(j + 16 + i) * ld + r0))
                                       : _mm512_setzero_si512();
            }
            transpose16(a);
            transpose16(b);
            const int nj = nn - j < 32 ? nn - j : 32;
            const __mmask32 km = nj == 32 ? (__mmask32)0xffffffffu : (__mmask32)((1u << nj) - 1);
            for (int r = 0; r < 16 && r0 + r < mr; r++) {
                const __m512i v = _mm512_permutex2var_epi16(f32x16_bf16_bits(_mm512_castsi512_ps(a[r])), even,
                                                            f32x16_bf16_bits(_mm512_castsi512_ps(b[r])));
                _mm512_mask_storeu_epi16(y + (size_t)(r0 + r) * ldy + n0 + j, km, v);
            }
        }
}

/* fp8_gemm's promotion of one block's tile c [16][16] (16 outputs of one
 * 128-row scale block, 16 input rows): acc += c * (xs * ws). */
static inline void promote(float *acc, int ld, const float *c, const float *xs, float ws) {
    const __m512 t = _mm512_mul_ps(_mm512_loadu_ps(xs), _mm512_set1_ps(ws));
    for (int r = 0; r < 16; r++)
        _mm512_storeu_ps(acc + (size_t)r * ld, _mm512_fmadd_ps(_mm512_loadu_ps(c + 16 * r), t,
                                                               _mm512_loadu_ps(acc + (size_t)r * ld)));
}

/* Tile registers: C 0..3 (C[2*nt + mt]), A 4..5, B 6..7. */

/* Scratch layout (DSV_LIN_SCRATCH): weight tiles, then the fp32 totals,
 * then four 1 KB result tiles. */
#define KC 256 /* K chunk of the blocked order (a multiple of 128) */
#define NB 128 /* weight rows per block */
#define MC 512 /* input rows per chunk: a whole default batch reads each weight once */
#define SCR_W 0
#define SCR_ACC (NB * KC * 2)
#define ACC_LD (MC + 16) /* totals row stride: not a power of two, which would alias rows in L1 */
#define SCR_C (SCR_ACC + NB * ACC_LD * 4)

/* Tile loads cannot overlap the way vector loads do (a tile register is
 * not renamed, so the next load into it waits for the product that reads
 * it): streaming the weights from memory needs software prefetches. The
 * line at byte offset `off` of the pair's rows n.. (rows < n1) is requested
 * a few steps ahead, running on into the next pair's rows near the end of
 * a row. */
#define PF_STEPS 8
static inline void prefetch_rows(const dsv_linear *w, int n, int n1, size_t off) {
    const size_t row = (size_t)w->ld * (w->dtype == DSV_DT_F8_E4M3 ? 1 : w->dtype == DSV_DT_F32 ? 4 : 2);
    if (off >= row) { /* past this pair's rows: the next pair's first lines */
        off -= row;
        n += 32;
    }
    const int rows = n1 - n < 32 ? n1 - n : 32;
    const char *p = (const char *)w->w + (size_t)n * row + off;
    for (int i = 0; i < rows; i++) _mm_prefetch(p + i * row, _MM_HINT_T0);
}

/* ---- fp8 weights, one tile of input rows (decoding) -------------------------
 * Passes of 64 weight rows (four A tiles) over the whole K, 128-wide blocks
 * in order, software-pipelined so that no step waits on the one before:
 * while the tile unit multiplies block kb (widened into one buffer), the
 * vector units widen the next block into the other, one row tile per k
 * step, and promote block kb-1's results, stored one block earlier. Each
 * block still gets fresh accumulators and is promoted on its own, in
 * order, as fp8_gemm does; only the schedule differs from the blocked
 * order, not any element's arithmetic. The results and input tiles are
 * m columns wide (tile_cfg_m), so a block's results store as [16][m]. */
#define FR 64      /* weight rows per pass */
/* Widens row tile t (rows 16t.. of the pass at row n, fewer than 16 when
 * the weight ends) of block kb into dst [4 tiles][4 steps][16][32], and
 * asks for 2 KB from pf (when not NULL) to be brought into L2: the next
 * pass's rows, in address order, a little per row widened. Prefetching
 * the next pass as one sequential stream, interleaved with the work,
 * keeps DRAM busy while the vector units widen (per-row prefetches into
 * L1 only fill the line buffers that the widening's loads need). */
static inline void fp8_widen_tile(uint8_t *dst, const dsv_linear *w, int n, int rows, int t, int kb, const char *pf) {
    const uint8_t *src = (const uint8_t *)w->w + (size_t)(n + 16 * t) * w->ld + (size_t)kb * DSV_QBLOCK;
    uint8_t *d = dst + (size_t)t * 4096;
    const int nr = rows - 16 * t < 16 ? rows - 16 * t : 16;
    for (int i = 0; i < nr; i++) {
        __m512i a, b, c, e;
        if (pf) { _mm_prefetch(pf + 128 * i, _MM_HINT_T1); _mm_prefetch(pf + 128 * i + 64, _MM_HINT_T1); }
        e4m3x64_bf16(_mm512_loadu_si512(src + (size_t)i * w->ld), &a, &b);
        e4m3x64_bf16(_mm512_loadu_si512(src + (size_t)i * w->ld + 64), &c, &e);
        _mm512_store_si512(d + 64 * i, a);
        _mm512_store_si512(d + 1024 + 64 * i, b);
        _mm512_store_si512(d + 2048 + 64 * i, c);
        _mm512_store_si512(d + 3072 + 64 * i, e);
    }
    for (int i = nr; i < 16; i++)
        for (int s = 0; s < 4; s++) _mm512_store_si512(d + 1024 * s + 64 * i, _mm512_setzero_si512());
}

/* acc [rows][m] += c [rows][m] * (xs[i] * ws) per column i, one row tile. */
static inline void promote_m(float *acc, const float *c, const float *xs, float ws, int m) {
    if (m == 1) { /* the tile's column: 16 outputs of the one row */
        const __m512 t = _mm512_set1_ps(xs[0] * ws);
        _mm512_storeu_ps(acc, _mm512_fmadd_ps(_mm512_loadu_ps(c), t, _mm512_loadu_ps(acc)));
        return;
    }
    const __mmask16 k = (__mmask16)((1u << m) - 1);
    const __m512 t = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, xs), _mm512_set1_ps(ws));
    if (16 % m == 0) { /* whole vectors: lane l holds column l % m */
        const __m512 tp = _mm512_permutexvar_ps(
            _mm512_and_si512(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0), _mm512_set1_epi32(m - 1)), t);
        for (int v = 0; v < m; v++)
            _mm512_storeu_ps(acc + 16 * v, _mm512_fmadd_ps(_mm512_loadu_ps(c + 16 * v), tp, _mm512_loadu_ps(acc + 16 * v)));
        return;
    }
    for (int r = 0; r < 16; r++)
        _mm512_mask_storeu_ps(acc + r * m, k, _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, c + r * m), t,
                                                             _mm512_maskz_loadu_ps(k, acc + r * m)));
}

static void fp8_decode(dsv_bf16 *y, int ldy, const void *xp, const dsv_linear *w, int m, int n0, int n1, uint8_t *scr) {
    const int K = w->n_in, nb = K / DSV_QBLOCK;
    const float *xsT = x_scales(xp, m, K);
    uint8_t *buf[2] = {scr, scr + 16384};
    float *ct[2] = {(float *)(scr + 32768), (float *)(scr + 32768 + 4096)};
    float *acc = (float *)(scr + 32768 + 8192); /* [64][m] */
    tiles_use(&tile_cfg_m[m]);
    int cur = 0;
    {
        const int rows = n1 - n0 < FR ? n1 - n0 : FR;
        for (int t = 0; t < (rows + 15) / 16; t++) fp8_widen_tile(buf[0], w, n0, rows, t, 0, NULL);
    }
    for (int n = n0; n < n1; n += FR) {
        const int rows = n1 - n < FR ? n1 - n : FR, nt = (rows + 15) / 16;
        const float *ws[4];
        for (int t = 0; t < 4; t++) ws[t] = w->scale + (size_t)((n + 16 * (t < nt ? t : 0)) / DSV_QBLOCK) * w->scale_ld;
        memset(acc, 0, (size_t)FR * m * 4);
        for (int kb = 0; kb <= nb; kb++) {
            if (kb < nb) {
                /* the block widened meanwhile: the next of this pass, or the next pass's first */
                const int nx_n = kb + 1 < nb ? n : n + FR, nx_kb = kb + 1 < nb ? kb + 1 : 0;
                const int nx_rows = nx_n < n1 ? (n1 - nx_n < FR ? n1 - nx_n : FR) : 0;
                const uint8_t *bc = buf[cur];
                _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
                for (int s = 0; s < 4; s++) {
                    _tile_loadd(6, x_tile(xp, K, 0, kb * 4 + s), 64);
                    _tile_loadd(4, bc + 1024 * s, 64);
                    _tile_dpbf16ps(0, 4, 6);
                    if (nt > 1) { _tile_loadd(5, bc + 4096 + 1024 * s, 64); _tile_dpbf16ps(1, 5, 6); }
                    if (nt > 2) { _tile_loadd(4, bc + 8192 + 1024 * s, 64); _tile_dpbf16ps(2, 4, 6); }
                    if (nt > 3) { _tile_loadd(5, bc + 12288 + 1024 * s, 64); _tile_dpbf16ps(3, 5, 6); }
                    /* the pass after the next block's, 2 KB per row tile (8 KB a block) */
                    const char *pf = (const char *)w->w + (size_t)(n + FR) * w->ld + (size_t)(kb * 4 + s) * 2048;
                    if (pf + 2048 > (const char *)w->w + (size_t)n1 * w->ld) pf = NULL;
                    if (16 * s < nx_rows) fp8_widen_tile(buf[cur ^ 1], w, nx_n, nx_rows, s, nx_kb, pf);
                }
            }
            /* block kb-1's results, stored a block ago (before this block's
             * stores, which later loads could otherwise wait for) */
            if (kb > 0)
                for (int t = 0; t < nt; t++)
                    promote_m(acc + 16 * m * t, ct[cur ^ 1] + 16 * m * t, xsT + (size_t)(kb - 1) * 16, ws[t][kb - 1], m);
            if (kb == nb) break;
            float *c = ct[cur];
            _tile_stored(0, c, 4 * m);
            if (nt > 1) _tile_stored(1, c + 16 * m, 4 * m);
            if (nt > 2) _tile_stored(2, c + 32 * m, 4 * m);
            if (nt > 3) _tile_stored(3, c + 48 * m, 4 * m);
            cur ^= 1;
        }
        if (m == 1) {
            for (int j = 0; j < rows; j += 16) {
                if (rows - j >= 16) bf16x16_store(y + n + j, _mm512_loadu_ps(acc + j));
                else bf16x16_store_n(y + n + j, _mm512_loadu_ps(acc + j), rows - j);
            }
        } else {
            write_out(y, ldy, acc, m, n, rows, m);
        }
    }
}

/* The streaming order for m <= 32: weight rows in pairs of 16, the whole K
 * at once, every row of W read once. */
static void stream(dsv_bf16 *y, int ldy, const void *xp, const dsv_linear *w, int m, int n0, int n1, uint8_t *scr) {
    const int K = w->n_in, Kp = round32(K), KT = Kp / 32, fp8 = w->dtype == DSV_DT_F8_E4M3;
    const int mts = (m + 15) / 16, Mp = round16(m);
    const float *xsT = fp8 ? x_scales(xp, m, K) : NULL;
    uint8_t *wt = scr + SCR_W;
    float *acc = (float *)(scr + SCR_ACC), *ct = (float *)(scr + SCR_C);
    const int direct = w->dtype == DSV_DT_BF16 && K % 32 == 0;
    for (int n = n0; n < n1; n += 32) {
        const int nts = n1 - n > 16 ? 2 : 1;
        if (!fp8) {
            _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
            const int d0 = direct && n + 16 <= w->n_out, d1 = direct && n + 32 <= w->n_out;
            const dsv_bf16 *w0 = (const dsv_bf16 *)w->w + (size_t)n * w->ld, *w1 = w0 + (size_t)16 * w->ld;
            for (int kt = 0; kt < KT; kt++) {
                prefetch_rows(w, n, n1, (size_t)(kt + PF_STEPS) * 64);
                _tile_loadd(6, x_tile(xp, Kp, 0, kt), 64);
                if (mts > 1) _tile_loadd(7, x_tile(xp, Kp, 1, kt), 64);
                if (d0) {
                    _tile_loadd(4, w0 + 32 * kt, w->ld * 2);
                } else {
                    w_tiles(wt, w, n, 32 * kt, 1);
                    _tile_loadd(4, wt, 64);
                }
                _tile_dpbf16ps(0, 4, 6);
                if (mts > 1) _tile_dpbf16ps(1, 4, 7);
                if (nts > 1) {
                    if (d1) {
                        _tile_loadd(5, w1 + 32 * kt, w->ld * 2);
                    } else {
                        w_tiles(wt + 1024, w, n + 16, 32 * kt, 1);
                        _tile_loadd(5, wt + 1024, 64);
                    }
                    _tile_dpbf16ps(2, 5, 6);
                    if (mts > 1) _tile_dpbf16ps(3, 5, 7);
                }
            }
            /* acc [32][32]: C tile (nt, mt) at rows 16nt, columns 16mt. */
            _tile_stored(0, acc, 128);
            _tile_stored(1, acc + 16, 128);
            _tile_stored(2, acc + 16 * 32, 128);
            _tile_stored(3, acc + 16 * 32 + 16, 128);
        } else {
            memset(acc, 0, 32 * 32 * 4);
            const float *ws = w->scale + (size_t)(n / DSV_QBLOCK) * w->scale_ld;
            const float *ws1 = nts > 1 ? w->scale + (size_t)((n + 16) / DSV_QBLOCK) * w->scale_ld : ws;
            for (int kb = 0; kb < K / DSV_QBLOCK; kb++) {
                prefetch_rows(w, n, n1, (size_t)(kb + 4) * DSV_QBLOCK);
                prefetch_rows(w, n, n1, (size_t)(kb + 4) * DSV_QBLOCK + 64);
                w_tiles(wt, w, n, kb * DSV_QBLOCK, 4);
                if (nts > 1) w_tiles(wt + 4096, w, n + 16, kb * DSV_QBLOCK, 4);
                _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
                for (int s = 0; s < 4; s++) {
                    _tile_loadd(6, x_tile(xp, Kp, 0, kb * 4 + s), 64);
                    if (mts > 1) _tile_loadd(7, x_tile(xp, Kp, 1, kb * 4 + s), 64);
                    _tile_loadd(4, wt + 1024 * s, 64);
                    _tile_dpbf16ps(0, 4, 6);
                    if (mts > 1) _tile_dpbf16ps(1, 4, 7);
                    if (nts > 1) {
                        _tile_loadd(5, wt + 4096 + 1024 * s, 64);
                        _tile_dpbf16ps(2, 5, 6);
                        if (mts > 1) _tile_dpbf16ps(3, 5, 7);
                    }
                }
                _tile_stored(0, ct, 64);
                promote(acc, 32, ct, xsT + (size_t)kb * Mp, ws[kb]);
                if (mts > 1) {
                    _tile_stored(1, ct + 256, 64);
                    promote(acc + 16, 32, ct + 256, xsT + (size_t)kb * Mp + 16, ws[kb]);
                }
                if (nts > 1) {
                    _tile_stored(2, ct + 512, 64);
                    promote(acc + 16 * 32, 32, ct + 512, xsT + (size_t)kb * Mp, ws1[kb]);
                    if (mts > 1) {
                        _tile_stored(3, ct + 768, 64);
                        promote(acc + 16 * 32 + 16, 32, ct + 768, xsT + (size_t)kb * Mp + 16, ws1[kb]);
                    }
                }
            }
        }
        write_out(y, ldy, acc, 32, n, (n1 - n < 32 ? n1 - n : 32), m);
    }
}

/* The blocked order for m > 32: chunks of MC input rows x blocks of NB
 * weight rows x chunks of KC of K, so that the weight block, the input
 * chunk and the totals stay in L2 while 2x2 tiles sweep them. */
static void blocked(dsv_bf16 *y, int ldy, const void *xp, const dsv_linear *w, int m, int n0, int n1, uint8_t *scr) {
    const int K = w->n_in, Kp = round32(K), fp8 = w->dtype == DSV_DT_F8_E4M3, Mp = round16(m);
    const float *xsT = fp8 ? x_scales(xp, m, K) : NULL;
    uint8_t *wt = scr + SCR_W;
    float *acc = (float *)(scr + SCR_ACC), *ct = (float *)(scr + SCR_C);
    for (int mc = 0; mc < m; mc += MC) {
        const int mr = m - mc < MC ? m - mc : MC, mtn = (mr + 15) / 16;
        for (int nb = n0; nb < n1; nb += NB) {
            const int nr = n1 - nb < NB ? n1 - nb : NB, ntn = (nr + 15) / 16;
            if (fp8) memset(acc, 0, (size_t)NB * ACC_LD * 4);
            for (int kc = 0; kc < Kp; kc += KC) {
                const int kts = (Kp - kc < KC ? Kp - kc : KC) / 32;
                /* bf16 weights whose tiles are whole are read in place (rows
                 * ld*2 bytes apart); others are widened into tiles. */
                const int direct = w->dtype == DSV_DT_BF16 && K % 32 == 0 && nb + 16 * ntn <= w->n_out;
                const size_t a_ld = direct ? (size_t)w->ld * 2 : 64, a_step = direct ? 64 : 1024;
                if (!direct)
                    for (int nt = 0; nt < ntn; nt++) w_tiles(wt + (size_t)nt * kts * 1024, w, nb + 16 * nt, kc, kts);
                /* The next weight block, prefetched a line per row per step below. */
                const int pf_n = kc + KC < Kp ? nb : nb + NB, pf_k = kc + KC < Kp ? kc + KC : 0;
                const int pf_kts = (Kp - pf_k < KC ? Kp - pf_k : KC) / 32;
                /* A weight pair (16 KB) stays in L1 while the input tiles stream from L2. */
                for (int nt = 0; nt < ntn; nt += 2) {
                    const int two_n = nt + 1 < ntn;
                    const int pf_rows = pf_n < n1 ? (n1 - pf_n - 16 * nt < 32 ? n1 - pf_n - 16 * nt : 32) : 0;
                    for (int mt = 0; mt < mtn; mt += 2) {
                        const int two_m = mt + 1 < mtn;
                        w_prefetch(w, pf_n + 16 * nt, pf_rows, pf_k, pf_kts, mt / 2);
                        if (mt + 2 >= mtn)
                            for (int l = mt / 2 + 1; l < 32; l++) w_prefetch(w, pf_n + 16 * nt, pf_rows, pf_k, pf_kts, l);
                        float *c00 = acc + (size_t)nt * 16 * ACC_LD + mt * 16;
                        const uint8_t *a0 = direct ? (const uint8_t *)w->w + ((size_t)(nb + 16 * nt) * w->ld + kc) * 2
                                                   : wt + (size_t)nt * kts * 1024;
                        const uint8_t *a1 = direct ? a0 + (size_t)16 * w->ld * 2 : a0 + (size_t)kts * 1024;
                        if (!fp8) {
                            if (kc == 0) {
                                _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
                            } else {
                                _tile_loadd(0, c00, ACC_LD * 4);
                                _tile_loadd(1, c00 + 16, ACC_LD * 4);
                                _tile_loadd(2, c00 + 16 * ACC_LD, ACC_LD * 4);
                                _tile_loadd(3, c00 + 16 * ACC_LD + 16, ACC_LD * 4);
                            }
                            for (int kt = 0; kt < kts; kt++) {
                                _tile_loadd(4, a0 + kt * a_step, a_ld);
                                _tile_loadd(6, x_tile(xp, Kp, (mc / 16) + mt, kc / 32 + kt), 64);
                                _tile_dpbf16ps(0, 4, 6);
                                if (two_m) {
                                    _tile_loadd(7, x_tile(xp, Kp, (mc / 16) + mt + 1, kc / 32 + kt), 64);
                                    _tile_dpbf16ps(1, 4, 7);
                                }
                                if (two_n) {
                                    _tile_loadd(5, a1 + kt * a_step, a_ld);
                                    _tile_dpbf16ps(2, 5, 6);
                                    if (two_m) _tile_dpbf16ps(3, 5, 7);
                                }
                            }
                            _tile_stored(0, c00, ACC_LD * 4);
                            _tile_stored(1, c00 + 16, ACC_LD * 4);
                            _tile_stored(2, c00 + 16 * ACC_LD, ACC_LD * 4);
                            _tile_stored(3, c00 + 16 * ACC_LD + 16, ACC_LD * 4);
                            continue;
                        }
                        const int n = nb + 16 * nt;
                        const float *ws = w->scale + (size_t)(n / DSV_QBLOCK) * w->scale_ld;
                        const float *ws1 = two_n ? w->scale + (size_t)((n + 16) / DSV_QBLOCK) * w->scale_ld : ws;
                        for (int b = 0; b < kts / 4; b++) {
                            const int kb = kc / DSV_QBLOCK + b;
                            _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
                            for (int s = 4 * b; s < 4 * b + 4; s++) {
                                _tile_loadd(4, a0 + s * 1024, 64);
                                _tile_loadd(6, x_tile(xp, Kp, (mc / 16) + mt, kc / 32 + s), 64);
                                _tile_dpbf16ps(0, 4, 6);
                                if (two_m) {
                                    _tile_loadd(7, x_tile(xp, Kp, (mc / 16) + mt + 1, kc / 32 + s), 64);
                                    _tile_dpbf16ps(1, 4, 7);
                                }
                                if (two_n) {
                                    _tile_loadd(5, a1 + s * 1024, 64);
                                    _tile_dpbf16ps(2, 5, 6);
                                    if (two_m) _tile_dpbf16ps(3, 5, 7);
                                }
                            }
                            const float *xs = xsT + (size_t)kb * Mp + mc + mt * 16;
                            _tile_stored(0, ct, 64);
                            promote(c00, ACC_LD, ct, xs, ws[kb]);
                            if (two_m) {
                                _tile_stored(1, ct + 256, 64);
                                promote(c00 + 16, ACC_LD, ct + 256, xs + 16, ws[kb]);
                            }
                            if (two_n) {
                                _tile_stored(2, ct + 512, 64);
                                promote(c00 + 16 * ACC_LD, ACC_LD, ct + 512, xs, ws1[kb]);
                                if (two_m) {
                                    _tile_stored(3, ct + 768, 64);
                                    promote(c00 + 16 * ACC_LD + 16, ACC_LD, ct + 768, xs + 16, ws1[kb]);
                                }
                            }
                        }
                    }
                }
            }
            write_out(y + (size_t)mc * ldy, ldy, acc, ACC_LD, nb, nr, mr);
        }
    }
}

static void linear(dsv_bf16 *y, int ldy, const void *xp, const dsv_linear *w, int m, int n0, int n1, void *scratch) {
    if (m <= 16 && w->dtype == DSV_DT_F8_E4M3) {
        fp8_decode(y, ldy, xp, w, m, n0, n1, scratch);
        return;
    }
    tiles_configure();
    if (m <= 32) stream(y, ldy, xp, w, m, n0, n1, scratch);
    else blocked(y, ldy, xp, w, m, n0, n1, scratch);
}

/* ---- indexer scores on tiles ------------------------------------------------
 * Sᵀ = K·Qᵀ per query: 16 keys x 32 dims of e4m3 codes widened to bf16
 * (exact) are the A operand, 16 heads x 32 dims of the query's codes, in
 * VNNI pairs, the B operand; four head groups (64 heads) accumulate side by
 * side. Keys and queries are both widened in the fp8 K order (a dot product
 * only needs its two sides to agree). Each result tile row is one key's 16
 * head dots: ReLU, times the head weights, added over the groups in order;
 * then a transpose turns 16 keys' head sums into one vector per head lane,
 * added in lane order, times the keys' scales. A score depends only on its
 * query and key. The next key tile's products are issued before this
 * tile's sums are taken, so the tile unit and the vector units overlap. */

/* Packed query: for each group of 16 heads (zeros past n_heads) and each of
 * the 4 dim steps, one B tile: row j holds the 16 heads' pair j of the
 * step's 32 dims (fp8 K order). */
static void index_q_pack(void *qp, const uint8_t *q8, int n_heads) {
    for (int g = 0; g < (n_heads + 15) / 16; g++)
        for (int h = 0; h < 2; h++) {
            __m512i ra[16], rb[16];
            for (int i = 0; i < 16; i++) {
                if (16 * g + i < n_heads) e4m3x64_bf16(_mm512_loadu_si512(q8 + (size_t)(16 * g + i) * 128 + 64 * h), &ra[i], &rb[i]);
                else ra[i] = rb[i] = _mm512_setzero_si512();
            }
            store_b_tile((uint8_t *)qp + ((size_t)g * 4 + 2 * h) * 1024, ra);
            store_b_tile((uint8_t *)qp + ((size_t)g * 4 + 2 * h + 1) * 1024, rb);
        }
}

/* Widens keys [j0, j0 + 16) (zeros past n) into A tiles kt [4 steps][16][32]. */
static inline void index_keys(uint8_t *kt, const uint8_t *k8, int j0, int n) {
    for (int i = 0; i < 16; i++) {
        __m512i a, b, c, d;
        if (j0 + i < n) {
            e4m3x64_bf16(_mm512_loadu_si512(k8 + (size_t)(j0 + i) * 128), &a, &b);
            e4m3x64_bf16(_mm512_loadu_si512(k8 + (size_t)(j0 + i) * 128 + 64), &c, &d);
        } else {
            a = b = c = d = _mm512_setzero_si512();
        }
        _mm512_store_si512(kt + 64 * i, a);
        _mm512_store_si512(kt + 1024 + 64 * i, b);
        _mm512_store_si512(kt + 2048 + 64 * i, c);
        _mm512_store_si512(kt + 3072 + 64 * i, d);
    }
}

/* The 16 head dots of one group for 16 keys: ct [16 keys][16 heads];
 * sum[r] += max(0, dot) * w, per head lane. */
static inline void index_relu_add(__m512 sum[16], const float *ct, __m512 wv) {
    for (int r = 0; r < 16; r++)
        sum[r] = _mm512_fmadd_ps(_mm512_max_ps(_mm512_load_ps(ct + 16 * r), _mm512_setzero_ps()), wv, sum[r]);
}

/* Scores of one query t for key tiles [a0, a1) of the chunk whose widened
 * tiles are at kt (tile a at kt + a*4096); with `next` (one query only),
 * tile a+1 is widened from k8 during tile a's products. */
static inline void index_tiles(float *o, const uint8_t *q, const float *wt, int n_heads, const float *ks, const uint8_t *k8,
                               int n, uint8_t *kt, int a0, int a1, int next, float *ct) {
    const int ng = (n_heads + 15) / 16;
    for (int a = a0; a < a1; a++) {
        const uint8_t *ka = kt + (size_t)a * 4096;
        __m512 sum[16];
        for (int r = 0; r < 16; r++) sum[r] = _mm512_setzero_ps();
        for (int g0 = 0; g0 < ng; g0 += 4) {
            const int gn = ng - g0 < 4 ? ng - g0 : 4;
            _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
            for (int st = 0; st < 4; st++) {
                const uint8_t *b = q + ((size_t)g0 * 4 + st) * 1024;
                _tile_loadd(4, ka + (size_t)st * 1024, 64);
                _tile_loadd(5, b, 64);
                _tile_dpbf16ps(0, 4, 5);
                if (gn > 1) { _tile_loadd(6, b + 4096, 64); _tile_dpbf16ps(1, 4, 6); }
                if (gn > 2) { _tile_loadd(7, b + 8192, 64); _tile_dpbf16ps(2, 4, 7); }
                if (gn > 3) { _tile_loadd(5, b + 12288, 64); _tile_dpbf16ps(3, 4, 5); }
            }
            if (next && g0 + 4 >= ng && a + 1 < a1) index_keys(kt + (size_t)(a + 1) * 4096, k8, 16 * (a + 1), n);
            _tile_stored(0, ct, 64);
            if (gn > 1) _tile_stored(1, ct + 256, 64);
            if (gn > 2) _tile_stored(2, ct + 512, 64);
            if (gn > 3) _tile_stored(3, ct + 768, 64);
            for (int g = 0; g < gn; g++) {
                const int hb = 16 * (g0 + g);
                const __m512 wv = _mm512_maskz_loadu_ps(n_heads - hb >= 16 ? (__mmask16)0xffff
                                                                           : (__mmask16)((1u << (n_heads - hb)) - 1),
                                                        wt + hb);
                index_relu_add(sum, ct + 256 * g, wv);
            }
        }
        /* Per key r: the sum of sum[r]'s lanes, in lane order. */
        __m512i r[16];
        for (int i = 0; i < 16; i++) r[i] = _mm512_castps_si512(sum[i]);
        transpose16(r);
        __m512 tot = _mm512_castsi512_ps(r[0]);
        for (int i = 1; i < 16; i++) tot = _mm512_add_ps(tot, _mm512_castsi512_ps(r[i]));
        const int nk = n - 16 * a < 16 ? n - 16 * a : 16;
        const __mmask16 km = (__mmask16)((1u << nk) - 1);
        _mm512_mask_storeu_ps(o + 16 * a, km, _mm512_mul_ps(tot, _mm512_maskz_loadu_ps(km, ks + 16 * a)));
    }
}

static void index_score(float *out, int ldo, const void *qp, const float *w, int n_heads, int nq, const uint8_t *k8,
                        const float *ks, int n, void *scratch) {
    float *ct = (float *)scratch;                /* 4 result tiles [16 keys][16 heads] */
    uint8_t *kt = (uint8_t *)scratch + 4096;     /* key tiles of 64 keys [4][4 steps][16][32] */
    const size_t qb = dsv_index_q_bytes(n_heads);
    tiles_configure();
    for (int j0 = 0; j0 < n; j0 += 64) {
        const int nk = n - j0 < 64 ? n - j0 : 64, nt = (nk + 15) / 16;
        if (nq == 1) {
            index_keys(kt, k8 + (size_t)j0 * 128, 0, nk);
            index_tiles(out + j0, qp, w, n_heads, ks + j0, k8 + (size_t)j0 * 128, nk, kt, 0, nt, 1, ct);
            continue;
        }
        for (int a = 0; a < nt; a++) index_keys(kt + (size_t)a * 4096, k8 + (size_t)j0 * 128, 16 * a, nk);
        for (int t = 0; t < nq; t++)
            index_tiles(out + (size_t)t * ldo + j0, (const uint8_t *)qp + (size_t)t * qb, w + (size_t)t * n_heads,
                        n_heads, ks + j0, NULL, nk, kt, 0, nt, 0, ct);
    }
}

/* ---- MQA (decode) attention on tiles -------------------------------------------
 * Scores Sᵀ = KV·Q_absᵀ and PE·Q_peᵀ, 16 keys by 16 heads a tile: 16 latent
 * rows as stored are the A operand, the heads' absorbed queries
 * transposed into VNNI pairs the B operand, into two accumulators (the
 * reference rounds the two einsums separately); the transposed result rows
 * are each head's scores. O = P·KV: the heads' weight rows (A, 32 keys a
 * step) against the latent rows packed into pairs of consecutive keys (B,
 * mqa_pack), for 64 columns at a time.
 * An element depends only on its head: its own tile column of scores over
 * the same 32-dim steps, its own weight row over the same 32-key steps from
 * key 0 (zeros past n add nothing). */

/* 16 rows (zeros past nh) of width D from src (row stride ld elements),
 * as D/32 B tiles of pairs at dst. */
static void b_tiles(uint8_t *dst, const dsv_bf16 *src, size_t ld, int nh, int D) {
    for (int st = 0; st < D / 32; st++) {
        __m512i r[16];
        for (int i = 0; i < 16; i++) r[i] = i < nh ? _mm512_loadu_si512(src + (size_t)i * ld + 32 * st) : _mm512_setzero_si512();
        transpose16(r);
        for (int j = 0; j < 16; j++) _mm512_store_si512(dst + (size_t)st * 1024 + 64 * j, r[j]);
    }
}

/* Head layouts the tiles do not divide take the AVX-512 steps, in every
 * step alike (the choice depends on C and R only). */
static inline int mqa_tiled(int C, int R) { return C % 64 == 0 && R % 32 == 0; }

static void mqa_scores(float *S, int lds, const dsv_bf16 *q_abs, const dsv_bf16 *q_pe, const dsv_bf16 *kv,
                       const dsv_bf16 *pe, int H, int C, int R, float scale, int j0, int j1, const dsv_prefetch *pf,
                       float *scratch) {
    if (!mqa_tiled(C, R)) {
        dsv_avx512_mqa_scores(S, lds, q_abs, q_pe, kv, pe, H, C, R, scale, j0, j1, pf, scratch);
        return;
    }
    /* The tiles' loop is not split to spread pf: asked for at once. */
    int next = 0;
    dsv_prefetch_rows(pf, &next, pf ? pf->n : 0);
    tiles_configure();
    uint8_t *qa = (uint8_t *)scratch;                          /* C/32 B tiles */
    uint8_t *qr = qa + (size_t)C / 32 * 1024;                  /* R/32 B tiles */
    dsv_bf16 *kpad = (dsv_bf16 *)(qr + (size_t)R / 32 * 1024); /* [16][C + R]: a last, partial key tile */
    float *ct = (float *)(kpad + (size_t)16 * (C + R));        /* 2 x [16][16] */
    const __m512 sc = _mm512_set1_ps(scale);
    for (int hb = 0; hb < H; hb += 16) {
        const int nh = H - hb < 16 ? H - hb : 16;
        b_tiles(qa, q_abs + (size_t)hb * C, (size_t)C, nh, C);
        b_tiles(qr, q_pe + (size_t)hb * R, (size_t)R, nh, R);
        for (int k0 = j0; k0 < j1; k0 += 16) {
            const int nk = j1 - k0 < 16 ? j1 - k0 : 16;
            const uint8_t *ka, *kr;
            size_t kas, krs;
            if (nk == 16) {
                ka = (const uint8_t *)(kv + (size_t)k0 * C);
                kr = (const uint8_t *)(pe + (size_t)k0 * R);
                kas = (size_t)C * 2;
                krs = (size_t)R * 2;
            } else {
                for (int i = 0; i < 16; i++) {
                    dsv_bf16 *d = kpad + (size_t)i * (C + R);
                    if (i < nk) {
                        memcpy(d, kv + (size_t)(k0 + i) * C, (size_t)C * 2);
                        memcpy(d + C, pe + (size_t)(k0 + i) * R, (size_t)R * 2);
                    } else {
                        memset(d, 0, (size_t)(C + R) * 2);
                    }
                }
                ka = (const uint8_t *)kpad;
                kr = (const uint8_t *)(kpad + C);
                kas = krs = (size_t)(C + R) * 2;
            }
            _tile_zero(0);
            _tile_zero(1);
            for (int st = 0; st < C / 32; st++) {
                _tile_loadd(4, ka + 64 * st, kas);
                _tile_loadd(6, qa + (size_t)st * 1024, 64);
                _tile_dpbf16ps(0, 4, 6);
            }
            for (int st = 0; st < R / 32; st++) {
                _tile_loadd(5, kr + 64 * st, krs);
                _tile_loadd(7, qr + (size_t)st * 1024, 64);
                _tile_dpbf16ps(1, 5, 7);
            }
            _tile_stored(0, ct, 64);
            _tile_stored(1, ct + 256, 64);
            /* (einsum(q_abs, kv) + einsum(q_pe, pe)) * scale, each a bf16 tensor;
             * a row is one key's 16 heads. */
            __m512i r[16];
            for (int i = 0; i < 16; i++) {
                const __m512 a = f32x16_round_bf16(_mm512_load_ps(ct + 16 * i));
                const __m512 b = f32x16_round_bf16(_mm512_load_ps(ct + 256 + 16 * i));
                r[i] = _mm512_castps_si512(f32x16_round_bf16(_mm512_mul_ps(f32x16_round_bf16(_mm512_add_ps(a, b)), sc)));
            }
            transpose16(r);
            const __mmask16 km = (__mmask16)((1u << nk) - 1);
            for (int h = 0; h < nh; h++) _mm512_mask_storeu_epi32(S + (size_t)(hb + h) * lds + k0, km, r[h]);
        }
    }
}

/* Keys in pairs: row jp of column tile ct holds (kv[2jp][16ct+c],
 * kv[2jp+1][16ct+c]) for c = 0..15, at kvp + (ct * np/2 + jp) * 64;
 * zeros past n. */
static void mqa_pack(void *kvp, const dsv_bf16 *kv, int n, int C, int j0, int j1) {
    if (!mqa_tiled(C, 32)) return;
    static const uint16_t lo_idx[32] = {0, 32, 1, 33, 2, 34, 3, 35, 4, 36, 5, 37, 6, 38, 7, 39,
                                        8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
    static const uint16_t hi_idx[32] = {16, 48, 17, 49, 18, 50, 19, 51, 20, 52, 21, 53, 22, 54, 23, 55,
                                        24, 56, 25, 57, 26, 58, 27, 59, 28, 60, 29, 61, 30, 62, 31, 63};
    const __m512i lo = _mm512_loadu_si512(lo_idx), hi = _mm512_loadu_si512(hi_idx);
    const int np = dsv_mqa_keys_padded(n), end = j1 >= n ? np : j1;
    uint8_t *vp = kvp;
    for (int jp = j0 / 2; jp < end / 2; jp++)
        for (int c = 0; c < C; c += 32) {
            const __m512i a = 2 * jp < n ? _mm512_loadu_si512(kv + (size_t)(2 * jp) * C + c) : _mm512_setzero_si512();
            const __m512i b = 2 * jp + 1 < n ? _mm512_loadu_si512(kv + (size_t)(2 * jp + 1) * C + c) : _mm512_setzero_si512();
            _mm512_store_si512(vp + ((size_t)(c / 16) * (np / 2) + jp) * 64, _mm512_permutex2var_epi16(a, lo, b));
            _mm512_store_si512(vp + ((size_t)(c / 16 + 1) * (np / 2) + jp) * 64, _mm512_permutex2var_epi16(a, hi, b));
        }
}

/* O = P·V for up to 4 column tiles of 16 values: P's 16 rows (ldp elements
 * apart) against value tiles that hold pairs of consecutive keys (vcol: the
 * first column tile, bt bytes between column tiles, 32 keys a step) into
 * accumulators 0..ng-1. */
static inline void pv_tiles(const dsv_bf16 *p, size_t ldp, const uint8_t *vcol, size_t bt, int steps, int ng) {
    _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
    for (int a = 0; a < steps; a++) {
        const uint8_t *b = vcol + 16 * (size_t)a * 64;
        _tile_loadd(4, p + 32 * (size_t)a, ldp * 2);
        _tile_loadd(5, b, 64);
        _tile_dpbf16ps(0, 4, 5);
        if (ng > 1) { _tile_loadd(6, b + bt, 64); _tile_dpbf16ps(1, 4, 6); }
        if (ng > 2) { _tile_loadd(7, b + 2 * bt, 64); _tile_dpbf16ps(2, 4, 7); }
        if (ng > 3) { _tile_loadd(5, b + 3 * bt, 64); _tile_dpbf16ps(3, 4, 5); }
    }
}

/* Accumulator i (0..3) to ct [16][16]. */
static inline void store_acc(int i, float *ct) {
    switch (i) {
    case 0: _tile_stored(0, ct, 64); break;
    case 1: _tile_stored(1, ct, 64); break;
    case 2: _tile_stored(2, ct, 64); break;
    default: _tile_stored(3, ct, 64); break;
    }
}

static void mqa_pv(dsv_bf16 *o_lat, const dsv_bf16 *P, int ldp, const dsv_bf16 *kv, const void *kvp, int n, int H, int C,
                   int c0, int c1, float *scratch) {
    if (!mqa_tiled(C, 32)) {
        dsv_avx512_mqa_pv(o_lat, P, ldp, kv, kvp, n, H, C, c0, c1, scratch);
        return;
    }
    tiles_configure();
    const int np = dsv_mqa_keys_padded(n);
    const uint8_t *vp = kvp;
    float *ct = scratch;
    const size_t bt = (size_t)(np / 2) * 64; /* between column tiles */
    for (int hb = 0; hb < H; hb += 16) {
        const int nh = H - hb < 16 ? H - hb : 16;
        const dsv_bf16 *ph = P + (size_t)hb * ldp;
        for (int g = c0 / 16; g < c1 / 16; g += 4) {
            const int ng = c1 / 16 - g < 4 ? c1 / 16 - g : 4;
            /* rows past nh read other heads' weights (or padding): their results are not kept */
            pv_tiles(ph, (size_t)ldp, vp + (size_t)g * (np / 2) * 64, bt, np / 32, ng);
            for (int i = 0; i < ng; i++) {
                store_acc(i, ct);
                for (int h = 0; h < nh; h++) bf16x16_store(o_lat + (size_t)(hb + h) * C + 16 * (g + i), _mm512_load_ps(ct + 16 * h));
            }
        }
    }
}

/* ---- MHA (prefill) attention on tiles ----------------------------------------
 * Per head, 16 queries at a time. Scores Sᵀ = K·Qᵀ: the key rows as stored
 * in kvb/pe are the A operand (16 positions x 32 dims), the 16 queries
 * transposed into VNNI pairs the B operand; the result tile (16 positions x
 * 16 queries) is transposed into per-query score rows. Each query then
 * takes the scores of its own positions, rounds and scales them, and runs
 * its softmax alone; its weights are written back at their positions in a
 * row of zeros. O = P·V: the weight rows (16 queries x 32 positions) are
 * the A operand, the head's values, repacked once per call into pairs of
 * consecutive positions, the B operand.
 *
 * A query's result is independent of the others: its scores are its own
 * tile column; its output row sums the products of its own weight row,
 * 32 positions per step at fixed absolute positions, and a batch only adds
 * steps where that row's weights are all zero, which leave the row's
 * accumulator unchanged (adding exact zeros). */

static void mha_head(dsv_bf16 *o, const dsv_bf16 *q, int T, const int32_t *idx, int ldi, const int32_t *n_sel,
                     const dsv_bf16 *kvb, const dsv_bf16 *pe, int E, int H, int N, int R, int V, float scale, int h,
                     float *scratch) {
    const int D = N + R, Ep = round32(E), VT = V / 16;
    const size_t krow = (size_t)H * (N + V); /* elements between two positions' rows */
    uint8_t *vp = (uint8_t *)scratch;                           /* [VT][Ep/2][16][2] bf16 */
    float *S = (float *)(vp + (size_t)Ep * V * 2);              /* [16][Ep] */
    dsv_bf16 *P = (dsv_bf16 *)(S + (size_t)16 * Ep);            /* [16][Ep] */
    uint8_t *qt = (uint8_t *)(P + (size_t)16 * Ep);             /* [D/32] B tiles */
    dsv_bf16 *kpad = (dsv_bf16 *)(qt + (size_t)D / 32 * 1024);  /* [16][D]: a last, partial key tile */
    float *ct = (float *)(kpad + (size_t)16 * D);               /* [16][16] */
    float *sc = ct + 256;                                       /* [Ep] one query's scores */

    /* Values of head h, positions paired: row jp of tile column ct holds
     * (v[2jp][16ct+c], v[2jp+1][16ct+c]) for c = 0..15; zeros past E. */
    static const uint16_t lo_idx[32] = {0, 32, 1, 33, 2, 34, 3, 35, 4, 36, 5, 37, 6, 38, 7, 39,
                                        8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
    static const uint16_t hi_idx[32] = {16, 48, 17, 49, 18, 50, 19, 51, 20, 52, 21, 53, 22, 54, 23, 55,
                                        24, 56, 25, 57, 26, 58, 27, 59, 28, 60, 29, 61, 30, 62, 31, 63};
    const __m512i lo = _mm512_loadu_si512(lo_idx), hi = _mm512_loadu_si512(hi_idx);
    for (int jp = 0; jp < Ep / 2; jp++) {
        const dsv_bf16 *v0 = kvb + (size_t)(2 * jp) * krow + (size_t)h * (N + V) + N, *v1 = v0 + krow;
        for (int c = 0; c < V; c += 32) {
            const __mmask32 m = V - c >= 32 ? (__mmask32)0xffffffffu : (__mmask32)0xffff;
            const __m512i a = 2 * jp < E ? _mm512_maskz_loadu_epi16(m, v0 + c) : _mm512_setzero_si512();
            const __m512i b = 2 * jp + 1 < E ? _mm512_maskz_loadu_epi16(m, v1 + c) : _mm512_setzero_si512();
            _mm512_store_si512(vp + ((size_t)(c / 16) * (Ep / 2) + jp) * 64, _mm512_permutex2var_epi16(a, lo, b));
            if (V - c > 16)
                _mm512_store_si512(vp + ((size_t)(c / 16 + 1) * (Ep / 2) + jp) * 64, _mm512_permutex2var_epi16(a, hi, b));
        }
    }

    for (int t0 = 0; t0 < T; t0 += 16) {
        const int nt = T - t0 < 16 ? T - t0 : 16;
        int Eb = 1;
        for (int t = 0; t < nt; t++)
            if (n_sel[t0 + t] > 0 && idx[(size_t)(t0 + t) * ldi + n_sel[t0 + t] - 1] + 1 > Eb)
                Eb = idx[(size_t)(t0 + t) * ldi + n_sel[t0 + t] - 1] + 1;
        const int Ebp = round32(Eb);
        /* The queries as B tiles: 16 queries x 32 dims per step, in pairs. */
        for (int st = 0; st < D / 32; st++) {
            __m512i r[16];
            for (int i = 0; i < 16; i++)
                r[i] = i < nt ? _mm512_loadu_si512(q + ((size_t)(t0 + i) * H + h) * D + 32 * st) : _mm512_setzero_si512();
            transpose16(r);
            for (int j = 0; j < 16; j++) _mm512_store_si512(qt + (size_t)st * 1024 + 64 * j, r[j]);
        }
        /* Scores of positions [0, Ebp) for the 16 queries. */
        for (int j0 = 0; j0 < Ebp; j0 += 16) {
            const uint8_t *kn, *kr;
            size_t kns, krs;
            if (j0 + 16 <= E) {
                kn = (const uint8_t *)(kvb + (size_t)j0 * krow + (size_t)h * (N + V));
                kr = (const uint8_t *)(pe + (size_t)j0 * R);
                kns = krow * 2;
                krs = (size_t)R * 2;
            } else {
                for (int i = 0; i < 16; i++) {
                    dsv_bf16 *d = kpad + (size_t)i * D;
                    if (j0 + i < E) {
                        memcpy(d, kvb + (size_t)(j0 + i) * krow + (size_t)h * (N + V), (size_t)N * 2);
                        memcpy(d + N, pe + (size_t)(j0 + i) * R, (size_t)R * 2);
                    } else {
                        memset(d, 0, (size_t)D * 2);
                    }
                }
                kn = (const uint8_t *)kpad;
                kr = (const uint8_t *)(kpad + N);
                kns = krs = (size_t)D * 2;
            }
            _tile_zero(0);
            for (int st = 0; st < N / 32; st++) {
                _tile_loadd(4, kn + 64 * st, kns);
                _tile_loadd(6, qt + (size_t)st * 1024, 64);
                _tile_dpbf16ps(0, 4, 6);
            }
            for (int st = 0; st < R / 32; st++) {
                _tile_loadd(5, kr + 64 * st, krs);
                _tile_loadd(7, qt + (size_t)(N / 32 + st) * 1024, 64);
                _tile_dpbf16ps(0, 5, 7);
            }
            _tile_stored(0, ct, 64);
            __m512i r[16];
            for (int i = 0; i < 16; i++) r[i] = _mm512_load_si512(ct + 16 * i);
            transpose16(r);
            for (int t = 0; t < nt; t++) _mm512_storeu_si512(S + (size_t)t * Ep + j0, r[t]);
        }
        /* Each query's softmax over its own positions; weights back in place. */
        for (int t = 0; t < 16; t++) {
            dsv_bf16 *pr = P + (size_t)t * Ep;
            memset(pr, 0, (size_t)Ebp * 2);
            if (t >= nt) continue;
            const int n = n_sel[t0 + t];
            const int32_t *sel = idx + (size_t)(t0 + t) * ldi;
            const float *st = S + (size_t)t * Ep;
            for (int j = 0; j < n; j++) sc[j] = dsv_round_bf16(dsv_round_bf16(st[sel[j]]) * scale);
            dsv_avx512_softmax_bf16(sc, n);
            for (int j = 0; j < n; j++) pr[sel[j]] = (dsv_bf16)(dsv_f32_bits(sc[j]) >> 16); /* bf16 values */
        }
        /* Outputs, 4 column tiles (64 values) at a time. */
        for (int g = 0; g < VT; g += 4) {
            const int ng = VT - g < 4 ? VT - g : 4;
            pv_tiles(P, (size_t)Ep, vp + (size_t)g * (Ep / 2) * 64, (size_t)(Ep / 2) * 64, Ebp / 32, ng);
            for (int i = 0; i < ng; i++) {
                store_acc(i, ct);
                for (int t = 0; t < nt; t++)
                    bf16x16_store(o + ((size_t)(t0 + t) * H + h) * V + 16 * (g + i), _mm512_load_ps(ct + 16 * t));
            }
        }
    }
}

static void mha_attn(dsv_bf16 *o, const dsv_bf16 *q, int T, const int32_t *idx, int ldi, const int32_t *n_sel,
                     const dsv_bf16 *kvb, const dsv_bf16 *pe, int E, int H, int N, int R, int V, float scale, int h0,
                     int h1, float *scratch) {
    /* Head layouts the tiles do not divide (dims in steps of 32, values in
     * columns of 16) take the AVX-512 kernel, for every query alike. */
    if (N % 32 || R % 32 || V % 16) {
        dsv_avx512_mha_attn(o, q, T, idx, ldi, n_sel, kvb, pe, E, H, N, R, V, scale, h0, h1, scratch);
        return;
    }
    tiles_configure();
    for (int h = h0; h < h1; h++) mha_head(o, q, T, idx, ldi, n_sel, kvb, pe, E, H, N, R, V, scale, h, scratch);
}

_Static_assert(SCR_C + 4096 <= DSV_LIN_SCRATCH, "AMX linear scratch");

const dsv_kernels dsv_kernels_amx = {
    .name = "amx",
    .act_quant = dsv_avx512_act_quant,
    .dequant = dsv_avx512_dequant,
    .lin_pack_fp8 = lin_pack_fp8,
    .linear_fp8 = linear,
    .lin_pack_fp8x = dsv_avx512_lin_pack_fp8x, /* no AMX variant: AVX-512's, with its packing */
    .linear_fp8x = dsv_avx512_linear_fp8x,
    .lin_pack_bf16 = lin_pack_bf16,
    .linear_bf16 = linear,
    .linear_f32 = dsv_avx512_linear_f32,
    .index_q_pack = index_q_pack,
    .index_score = index_score,
    .mqa_scores = mqa_scores,
    .mqa_pack = mqa_pack,
    .mqa_pv = mqa_pv,
    .softmax_bf16 = dsv_avx512_softmax_bf16,
    .mha_attn = mha_attn,
    .rmsnorm = dsv_avx512_rmsnorm,
    .rmsnorm_residual = dsv_avx512_rmsnorm_residual,
    .rope = dsv_avx512_rope,
    .hadamard128 = dsv_avx512_hadamard128,
    .swiglu = dsv_avx512_swiglu,
    .axpy_bf16 = dsv_avx512_axpy_bf16,
    .absorb_q = dsv_avx512_absorb_q,
    .absorb_o = dsv_avx512_absorb_o,
};
