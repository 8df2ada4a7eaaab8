/* qtypes.c: the ggml type table (codes, names, block geometry) and which
 * types the engine computes with (quant.h). Apart from the codecs so that
 * the GGUF reader and its fuzz target need nothing else. */
#include <string.h>
#include <strings.h>

#include "quant.h"
#include "base/util.h"

static const struct { const char *name; int blck; int bsize; } ggml_types[DSV_GGML_NTYPES] = {
    [DSV_GGML_F32] = {"F32", 1, 4},         [DSV_GGML_F16] = {"F16", 1, 2},
    [DSV_GGML_Q4_0] = {"Q4_0", 32, 18},     [DSV_GGML_Q4_1] = {"Q4_1", 32, 20},
    [DSV_GGML_Q5_0] = {"Q5_0", 32, 22},     [DSV_GGML_Q5_1] = {"Q5_1", 32, 24},
    [DSV_GGML_Q8_0] = {"Q8_0", 32, 34},     [DSV_GGML_Q8_1] = {"Q8_1", 32, 36},
    [DSV_GGML_Q2_K] = {"Q2_K", 256, 84},    [DSV_GGML_Q3_K] = {"Q3_K", 256, 110},
    [DSV_GGML_Q4_K] = {"Q4_K", 256, 144},   [DSV_GGML_Q5_K] = {"Q5_K", 256, 176},
    [DSV_GGML_Q6_K] = {"Q6_K", 256, 210},   [DSV_GGML_Q8_K] = {"Q8_K", 256, 292},
    [DSV_GGML_IQ2_XXS] = {"IQ2_XXS", 256, 66}, [DSV_GGML_IQ2_XS] = {"IQ2_XS", 256, 74},
    [DSV_GGML_IQ3_XXS] = {"IQ3_XXS", 256, 98}, [DSV_GGML_IQ1_S] = {"IQ1_S", 256, 50},
    [DSV_GGML_IQ4_NL] = {"IQ4_NL", 32, 18}, [DSV_GGML_IQ3_S] = {"IQ3_S", 256, 110},
    [DSV_GGML_IQ2_S] = {"IQ2_S", 256, 82},  [DSV_GGML_IQ4_XS] = {"IQ4_XS", 256, 136},
    [DSV_GGML_I8] = {"I8", 1, 1},           [DSV_GGML_I16] = {"I16", 1, 2},
    [DSV_GGML_I32] = {"I32", 1, 4},         [DSV_GGML_I64] = {"I64", 1, 8},
    [DSV_GGML_F64] = {"F64", 1, 8},         [DSV_GGML_IQ1_M] = {"IQ1_M", 256, 56},
    [DSV_GGML_BF16] = {"BF16", 1, 2},       [DSV_GGML_TQ1_0] = {"TQ1_0", 256, 54},
    [DSV_GGML_TQ2_0] = {"TQ2_0", 256, 66},  [DSV_GGML_MXFP4] = {"MXFP4", 32, 17},
};

int dsv_ggml_blck(uint32_t type) { return type < DSV_GGML_NTYPES ? ggml_types[type].blck : 0; }
size_t dsv_ggml_bsize(uint32_t type) { return type < DSV_GGML_NTYPES ? (size_t)ggml_types[type].bsize : 0; }
const char *dsv_ggml_name(uint32_t type) {
    return type < DSV_GGML_NTYPES && ggml_types[type].name ? ggml_types[type].name : "?";
}
int dsv_ggml_from_name(const char *name) {
    for (int t = 0; t < DSV_GGML_NTYPES; t++)
        if (ggml_types[t].name && !strcasecmp(ggml_types[t].name, name)) return t;
    return -1;
}
size_t dsv_ggml_row_size(uint32_t type, int64_t n) {
    DSV_ASSERT(dsv_ggml_blck(type) > 0 && n >= 0 && n % dsv_ggml_blck(type) == 0);
    return (size_t)(n / dsv_ggml_blck(type)) * dsv_ggml_bsize(type);
}

int dsv_q_supported(uint32_t type) {
    switch (type) {
    case DSV_GGML_F32: case DSV_GGML_F16: case DSV_GGML_BF16: case DSV_GGML_Q8_0: case DSV_GGML_Q4_0:
    case DSV_GGML_Q4_1: case DSV_GGML_Q5_0: case DSV_GGML_Q5_1: case DSV_GGML_IQ4_NL: case DSV_GGML_Q2_K:
    case DSV_GGML_Q3_K: case DSV_GGML_Q4_K: case DSV_GGML_Q5_K: case DSV_GGML_Q6_K: return 1;
    }
    return 0;
}

int dsv_q_absorb_fast(uint32_t t) {
    switch (t) {
    case DSV_GGML_Q8_0: case DSV_GGML_Q4_0: case DSV_GGML_Q4_1: case DSV_GGML_Q5_0: case DSV_GGML_Q5_1:
    case DSV_GGML_IQ4_NL: case DSV_GGML_Q4_K: case DSV_GGML_Q5_K: case DSV_GGML_Q6_K: return 1;
    default: return 0;
    }
}

int dsv_q_absorb_ok(uint32_t t, int K) {
    const int bk = dsv_ggml_blck(t);
    return t != DSV_GGML_F32 && t != DSV_GGML_F16 && t != DSV_GGML_BF16 && dsv_q_supported(t) && bk > 0 &&
           K > 0 && K % bk == 0 && K <= DSV_Q_ABSORB_KMAX;
}
