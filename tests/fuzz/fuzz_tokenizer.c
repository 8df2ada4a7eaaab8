/* fuzz_tokenizer.c: libFuzzer target for tokenizer.json (dsv_tokenizer_open).
 * The input is the file (written to a private temporary folder: the reader
 * takes a path). A tokenizer that opens must encode and decode: a fixed text
 * with bytes of every kind round-trips byte for byte, and every id below
 * n_vocab either has a piece or none, without reading past anything. */
#include <unistd.h>

#include "dsv32_tokenizer.h"
#include "fuzz.h"

static char dir[64], path[96];

static void cleanup(void) {
    unlink(path);
    rmdir(dir);
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
    if (!dir[0]) {
        const char *tmp = getenv("TMPDIR");
        snprintf(dir, sizeof dir, "%s/dsv32-fuzz-XXXXXX", tmp && strlen(tmp) < 32 ? tmp : "/tmp");
        fuzz_check(mkdtemp(dir) != NULL, "mkdtemp");
        snprintf(path, sizeof path, "%s/tokenizer.json", dir);
        atexit(cleanup);
    }
    FILE *f = fopen(path, "wb");
    fuzz_check(f && fwrite(data, 1, size, f) == size && fclose(f) == 0, "writing the input");
    dsv_tokenizer *t = NULL;
    int rc = dsv_tokenizer_open(&t, path);
    fuzz_check_status(rc);
    if (rc != DSV_OK) return 0;
    static const char text[] = "Hello, world! 123 caf\xc3\xa9 \xf0\x9f\x98\x80 \xff\xfe\n\t  x<think>y";
    const size_t len = sizeof text - 1;
    int32_t ids[sizeof text];
    size_t n = 0;
    rc = dsv_tokenize(t, text, len, ids, len, &n);
    fuzz_check_status(rc);
    if (rc == DSV_OK) {
        fuzz_check(n <= len, "no more ids than bytes");
        char out[4 * sizeof text];
        size_t got = 0;
        int d = dsv_detokenize(t, ids, n, 0, out, sizeof out, &got);
        fuzz_check_status(d);
        /* A tokenizer may lack byte tokens (then encoding fails above), but
         * what encodes must decode to the same bytes. */
        if (d == DSV_OK) fuzz_check(got == len && !memcmp(out, text, len), "round trip");
    }
    const int32_t nv = dsv_tokenizer_n_vocab(t);
    for (int32_t id = 0; id < nv && id < 4096; id++) {
        size_t pl = 0;
        const char *p = dsv_token_piece(t, id, &pl);
        volatile char sink = 0;
        if (p && pl) sink ^= p[0] ^ p[pl - 1];
        (void)sink;
    }
    dsv_tokenizer_close(t);
    return 0;
}
