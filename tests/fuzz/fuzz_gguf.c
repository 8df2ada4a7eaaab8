/* fuzz_gguf.c: libFuzzer target for the GGUF reader (src/format/gguf.c).
 *
 * Built and run by `make fuzz` (target gguf); seeds in tests/fuzz/seeds/gguf/
 * (small.gguf: a string key, a string array, general.alignment,
 * a Q8_0 and an F32 tensor). The input is opened in memory from a buffer
 * of exactly its size, so ASAN catches any read past it; whatever opens
 * must keep the reader's promises, checked below, and anything else must
 * fail with a message. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/util.h"
#include "format/gguf.h"

static void check(int ok, const char *what) {
    if (!ok) {
        fprintf(stderr, "fuzz_gguf: broken promise: %s\n", what);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
    unsigned char *buf = malloc(size ? size : 1);
    if (!buf) return 0;
    memcpy(buf, data, size);
    dsv_gguf *g;
    if (dsv_gguf_open_memory(&g, buf, size, "fuzz") != DSV_OK) {
        check(dsv_errmsg()[0] != 0, "an error without a message");
        free(buf);
        return 0;
    }
    volatile unsigned char sink = 0;
    for (int i = 0; i < dsv_gguf_count(g); i++) {
        const dsv_gguf_tensor *t = dsv_gguf_at(g, i);
        const unsigned char *d = t->data;
        check(d >= buf && d <= buf + size && t->nbytes <= (size_t)(buf + size - d), "a tensor outside the file");
        check(dsv_gguf_find(g, t->name) == t, "a tensor not found by its name");
        if (t->nbytes) sink ^= d[0] ^ d[t->nbytes - 1];
    }
    for (int i = 0; i < dsv_gguf_kv_count(g); i++) {
        size_t len;
        const unsigned char *v = dsv_gguf_kv_bytes(g, i, &len);
        check(v >= buf && len <= (size_t)(buf + size - v), "a value outside the file");
        if (len) sink ^= v[len - 1];
    }
    for (int i = 0; i < dsv_gguf_kv_count(g); i++)
        if (dsv_gguf_kv_type(g, i) == DSV_GGUF_ARRAY && dsv_gguf_arr_type(g, i) == DSV_GGUF_STRING)
            for (uint64_t k = 0; k < dsv_gguf_arr_n(g, i); k++) {
                size_t len;
                const unsigned char *s = (const unsigned char *)dsv_gguf_arr_str(g, i, k, &len);
                check(s >= buf && len <= (size_t)(buf + size - s), "a string outside the file");
                if (len) sink ^= s[len - 1];
            }
    (void)sink;
    dsv_gguf_close(g);
    free(buf);
    return 0;
}
