/* fuzz_config.c: libFuzzer target for config.json (dsv_config_parse). The
 * input is the JSON text. What parses must be usable: every size positive
 * where the model needs it, and the products the loader forms (heads x head
 * dims, shared experts x expert width, indexer heads x 128) inside int. */
#include <stdint.h>

#include "fuzz.h"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
    char *json = fuzz_copy(data, size);
    if (!json) return 0;
    dsv_config c;
    int rc = dsv_config_parse(&c, json, "fuzz.json");
    fuzz_check_status(rc);
    if (rc == DSV_OK) {
        fuzz_check(c.vocab_size > 0 && c.dim > 0 && c.n_layers > 0 && c.n_heads > 0, "sizes > 0");
        fuzz_check(c.bos_id >= 0 && c.bos_id < c.vocab_size && c.eos_id >= 0 && c.eos_id < c.vocab_size,
                   "bos/eos in the vocabulary");
        const int64_t qh = (int64_t)c.n_heads * (c.qk_nope_head_dim + c.qk_rope_head_dim);
        const int64_t kvh = (int64_t)c.n_heads * (c.qk_nope_head_dim + c.v_head_dim);
        const int64_t sh = (int64_t)c.n_shared_experts * c.moe_inter_dim;
        const int64_t ih = (int64_t)c.index_n_heads * c.index_head_dim;
        fuzz_check(qh <= INT32_MAX && kvh <= INT32_MAX && sh <= INT32_MAX && ih <= INT32_MAX,
                   "products of config fields fit in int");
        fuzz_check(c.softmax_scale > 0 && c.softmax_scale < 1e30f, "softmax scale finite");
    }
    free(json);
    return 0;
}
