/* test_gguf.c: the GGUF reader and writer (src/format/gguf.c): a file
 * written and read back field by field; hand-made corruptions that must
 * fail with a message naming the tensor; random byte flips and every
 * truncation of a small file (clean errors, never a read outside the
 * buffer: run under `make asan` to have that checked); split sets. */
#include "test.h"

#include <unistd.h>

#include "base/util.h"
#include "format/gguf.h"

static const char *TOKENS[] = {"<s>", "hello", "\xc4\xa0world"};

/* Writes a small file: metadata of every kind and three tensors. */
static void write_small(const char *path, int split_no, int split_count) {
    dsv_gguf_writer *w;
    REQUIRE(dsv_gguf_writer_init(&w) == DSV_OK);
    REQUIRE(dsv_gguf_set_str(w, "general.architecture", "deepseek32") == DSV_OK);
    REQUIRE(dsv_gguf_set_u32(w, "deepseek32.block_count", 7) == DSV_OK);
    REQUIRE(dsv_gguf_set_f32(w, "deepseek32.rope.freq_base", 10000.0f) == DSV_OK);
    REQUIRE(dsv_gguf_set_bool(w, "tokenizer.ggml.add_bos_token", 1) == DSV_OK);
    REQUIRE(dsv_gguf_set_arr_str(w, "tokenizer.ggml.tokens", TOKENS, 3) == DSV_OK);
    const int32_t types[3] = {3, 1, 1};
    REQUIRE(dsv_gguf_set_arr(w, "tokenizer.ggml.token_type", DSV_GGUF_I32, types, 3) == DSV_OK);
    if (split_count > 1) {
        REQUIRE(dsv_gguf_set_u16(w, "split.no", (uint16_t)split_no) == DSV_OK);
        REQUIRE(dsv_gguf_set_u16(w, "split.count", (uint16_t)split_count) == DSV_OK);
        REQUIRE(dsv_gguf_set_i32(w, "split.tensors.count", 6) == DSV_OK);
    }
    char n[3][64];
    snprintf(n[0], 64, "blk.%d.attn_norm.weight", split_no);
    snprintf(n[1], 64, "blk.%d.ffn_down.weight", split_no);
    snprintf(n[2], 64, "blk.%d.attn_q_a.weight", split_no);
    const int64_t ne0[1] = {5}, ne1[2] = {64, 2}, ne2[2] = {8, 3};
    REQUIRE(dsv_gguf_writer_add(w, n[0], DSV_GGML_F32, 1, ne0) == DSV_OK);
    REQUIRE(dsv_gguf_writer_add(w, n[1], DSV_GGML_Q8_0, 2, ne1) == DSV_OK);
    REQUIRE(dsv_gguf_writer_add(w, n[2], DSV_GGML_F16, 2, ne2) == DSV_OK);
    CHECK_EQ_INT(dsv_gguf_writer_data_size(w), 32 + 160 + 64);
    REQUIRE(dsv_gguf_writer_begin(w, path) == DSV_OK);
    float f[5] = {1, 2, 3, 4, 5};
    uint8_t q[136], h[48];
    for (int i = 0; i < 136; i++) q[i] = (uint8_t)(i * 7 + split_no);
    for (int i = 0; i < 48; i++) h[i] = (uint8_t)i;
    REQUIRE(dsv_gguf_writer_put(w, f, sizeof f) == DSV_OK);
    REQUIRE(dsv_gguf_writer_put(w, q, 100) == DSV_OK); /* chunks across tensors */
    REQUIRE(dsv_gguf_writer_put(w, q + 100, 36) == DSV_OK);
    REQUIRE(dsv_gguf_writer_put(w, h, 48) == DSV_OK);
    REQUIRE(dsv_gguf_writer_finish(w) == DSV_OK);
    dsv_gguf_writer_free(w);
}

static const char *small_path(void) {
    static char p[600];
    snprintf(p, sizeof p, "%s/small.gguf", test_tmpdir());
    return p;
}

TEST(gguf_round_trip) {
    const char *path = small_path();
    write_small(path, 0, 1);
    dsv_gguf *g;
    REQUIREF(dsv_gguf_open(&g, path) == DSV_OK, "%s", dsv_errmsg());
    CHECK_EQ_INT(dsv_gguf_version(g), 3);
    CHECK_EQ_INT(dsv_gguf_alignment(g), 32);
    CHECK_EQ_INT(dsv_gguf_count(g), 3);
    CHECK_EQ_INT(dsv_gguf_kv_count(g), 6);
    const char *s;
    size_t len;
    REQUIRE(dsv_gguf_get_str(g, "general.architecture", &s, &len) == DSV_OK);
    CHECK(len == 10 && !memcmp(s, "deepseek32", 10));
    int64_t v;
    CHECK(dsv_gguf_get_int(g, "deepseek32.block_count", 0, 100, &v) == DSV_OK && v == 7);
    CHECK(dsv_gguf_get_int(g, "deepseek32.block_count", 8, 100, &v) == DSV_ERR_MODEL);
    CHECK(strstr(dsv_errmsg(), "deepseek32.block_count") != NULL);
    float f;
    CHECK(dsv_gguf_get_f32(g, "deepseek32.rope.freq_base", &f) == DSV_OK && f == 10000.0f);
    CHECK(dsv_gguf_get_int(g, "deepseek32.rope.freq_base", 0, 1, &v) == DSV_ERR_MODEL); /* wrong type */
    CHECK(dsv_gguf_get_str(g, "missing.key", &s, &len) == DSV_ERR_MODEL);
    int b;
    CHECK(dsv_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &b) == DSV_OK && b == 1);
    int ti = dsv_gguf_kv_find(g, "tokenizer.ggml.tokens");
    REQUIRE(ti >= 0 && dsv_gguf_kv_type(g, ti) == DSV_GGUF_ARRAY && dsv_gguf_arr_type(g, ti) == DSV_GGUF_STRING);
    REQUIRE(dsv_gguf_arr_n(g, ti) == 3);
    for (int i = 0; i < 3; i++) {
        s = dsv_gguf_arr_str(g, ti, (uint64_t)i, &len);
        CHECK(len == strlen(TOKENS[i]) && !memcmp(s, TOKENS[i], len));
    }
    int tt = dsv_gguf_kv_find(g, "tokenizer.ggml.token_type");
    REQUIRE(tt >= 0 && dsv_gguf_arr_n(g, tt) == 3);
    CHECK(dsv_gguf_arr_num(g, tt, 0) == 3 && dsv_gguf_arr_num(g, tt, 2) == 1);

    const dsv_gguf_tensor *t = dsv_gguf_find(g, "blk.0.ffn_down.weight");
    REQUIRE(t != NULL);
    CHECK_EQ_INT(t->type, DSV_GGML_Q8_0);
    CHECK(t->n_dims == 2 && t->ne[0] == 64 && t->ne[1] == 2 && t->ne[2] == 1);
    CHECK_EQ_INT(t->nbytes, 136);
    CHECK_EQ_INT((uintptr_t)t->data % 32, 0);
    CHECK_EQ_INT(((const uint8_t *)t->data)[135], (uint8_t)(135 * 7));
    t = dsv_gguf_find(g, "blk.0.attn_norm.weight");
    REQUIRE(t != NULL);
    float x[5];
    memcpy(x, t->data, sizeof x);
    CHECK(x[0] == 1 && x[4] == 5);
    CHECK(dsv_gguf_find(g, "nope") == NULL);
    CHECK(dsv_gguf_at(g, 2) == dsv_gguf_find(g, "blk.0.attn_q_a.weight"));
    dsv_gguf_close(g);
}

TEST(gguf_types_table) {
    CHECK_EQ_INT(dsv_ggml_blck(DSV_GGML_Q4_K), 256);
    CHECK_EQ_INT(dsv_ggml_bsize(DSV_GGML_Q4_K), 144);
    CHECK_EQ_INT(dsv_ggml_bsize(DSV_GGML_Q6_K), 210);
    CHECK_EQ_INT(dsv_ggml_bsize(DSV_GGML_IQ4_NL), 18);
    CHECK_EQ_INT(dsv_ggml_blck(4), 0); /* a retired code */
    CHECK_STR(dsv_ggml_name(DSV_GGML_Q2_K), "Q2_K");
    CHECK_EQ_INT(dsv_ggml_from_name("q4_k"), DSV_GGML_Q4_K);
    CHECK_EQ_INT(dsv_ggml_from_name("Q4_K_M"), -1);
    CHECK_EQ_INT(dsv_ggml_row_size(DSV_GGML_Q5_0, 128), 4 * 22);
}

/* Finds the tensor info of `name` in an image: the offset just past the name. */
static size_t info_of(const uint8_t *buf, size_t n, const char *name) {
    size_t k = strlen(name);
    for (size_t i = 8; i + k <= n; i++)
        if (!memcmp(buf + i, name, k)) {
            uint64_t len;
            memcpy(&len, buf + i - 8, 8);
            if (len == k) return i + k;
        }
    return 0;
}

/* Opens a modified copy of the small file in memory; returns the status. */
static int open_modified(const uint8_t *buf, size_t n, dsv_gguf **g) {
    uint8_t *copy = malloc(n ? n : 1);
    memcpy(copy, buf, n);
    int st = dsv_gguf_open_memory(g, copy, n, "small.gguf");
    if (st == DSV_OK) dsv_gguf_close(*g);
    free(copy);
    return st;
}

TEST(gguf_corrupt_named_errors) {
    const char *path = small_path();
    write_small(path, 0, 1);
    size_t n;
    uint8_t *buf = test_read_file(path, &n), *b = malloc(n);
    REQUIRE(buf && b);
    dsv_gguf *g;
    const char *name = "blk.0.ffn_down.weight";
    size_t at = info_of(buf, n, name); /* n_dims, ne[0], ne[1], type, offset */
    REQUIRE(at > 0);

    memcpy(b, buf, n);
    b[0] = 'X';
    CHECK(open_modified(b, n, &g) == DSV_ERR_FORMAT && strstr(dsv_errmsg(), "magic"));

    memcpy(b, buf, n);
    b[4] = 1;
    CHECK(open_modified(b, n, &g) == DSV_ERR_UNSUPPORTED && strstr(dsv_errmsg(), "version 1"));

    memcpy(b, buf, n);
    uint32_t ty = 99;
    memcpy(b + at + 4 + 16, &ty, 4);
    CHECK(open_modified(b, n, &g) == DSV_ERR_FORMAT && strstr(dsv_errmsg(), name) && strstr(dsv_errmsg(), "type 99"));

    memcpy(b, buf, n);
    uint64_t off;
    memcpy(&off, b + at + 24, 8);
    off += 4;
    memcpy(b + at + 24, &off, 8);
    CHECK(open_modified(b, n, &g) == DSV_ERR_FORMAT && strstr(dsv_errmsg(), name) && strstr(dsv_errmsg(), "alignment"));

    memcpy(b, buf, n);
    off = 0; /* onto the first tensor */
    memcpy(b + at + 24, &off, 8);
    CHECK(open_modified(b, n, &g) == DSV_ERR_FORMAT && strstr(dsv_errmsg(), "overlaps"));

    memcpy(b, buf, n);
    int64_t ne0 = 48; /* not a multiple of Q8_0's 32 */
    memcpy(b + at + 4, &ne0, 8);
    CHECK(open_modified(b, n, &g) == DSV_ERR_FORMAT && strstr(dsv_errmsg(), name) && strstr(dsv_errmsg(), "block"));

    memcpy(b, buf, n);
    int64_t ne1 = (int64_t)1 << 60; /* a size that overflows */
    memcpy(b + at + 12, &ne1, 8);
    CHECK(open_modified(b, n, &g) == DSV_ERR_FORMAT && strstr(dsv_errmsg(), name));

    memcpy(b, buf, n);
    ne1 = 1000; /* runs past the data section */
    memcpy(b + at + 12, &ne1, 8);
    CHECK(open_modified(b, n, &g) == DSV_ERR_FORMAT && strstr(dsv_errmsg(), name) && strstr(dsv_errmsg(), "past"));

    memcpy(b, buf, n);
    uint64_t big = (uint64_t)1 << 40; /* tensor count */
    memcpy(b + 8, &big, 8);
    CHECK(open_modified(b, n, &g) == DSV_ERR_FORMAT && strstr(dsv_errmsg(), "tensor count"));

    /* A duplicated tensor name: rename the third tensor to the second's. */
    memcpy(b, buf, n);
    size_t at3 = info_of(buf, n, "blk.0.attn_q_a.weight");
    REQUIRE(at3 > 0 && strlen("blk.0.attn_q_a.weight") == strlen(name));
    memcpy(b + at3 - strlen(name), name, strlen(name));
    CHECK(open_modified(b, n, &g) == DSV_ERR_FORMAT && strstr(dsv_errmsg(), "twice"));
    free(b);
    free(buf);
}

/* Every tensor an opened image reports lies inside it. */
static void check_inside(const dsv_gguf *g, const uint8_t *buf, size_t n) {
    for (int i = 0; i < dsv_gguf_count(g); i++) {
        const dsv_gguf_tensor *t = dsv_gguf_at(g, i);
        const uint8_t *d = t->data;
        REQUIRE(d >= buf && d <= buf + n && t->nbytes <= (size_t)(buf + n - d));
        REQUIRE(dsv_gguf_find(g, t->name) == t);
    }
    for (int i = 0; i < dsv_gguf_kv_count(g); i++)
        if (dsv_gguf_kv_type(g, i) == DSV_GGUF_ARRAY && dsv_gguf_arr_type(g, i) == DSV_GGUF_STRING)
            for (uint64_t k = 0; k < dsv_gguf_arr_n(g, i); k++) {
                size_t len;
                const uint8_t *s = (const uint8_t *)dsv_gguf_arr_str(g, i, k, &len);
                REQUIRE(s >= buf && len <= (size_t)(buf + n - s));
            }
}

TEST(gguf_fuzz_flips_and_truncations) {
    const char *path = small_path();
    write_small(path, 0, 1);
    size_t n;
    uint8_t *buf = test_read_file(path, &n);
    REQUIRE(buf);
    dsv_gguf *g;
    /* The end of the last tensor's bytes: any shorter file must fail. */
    REQUIRE(dsv_gguf_open_memory(&g, buf, n, "small.gguf") == DSV_OK);
    size_t need = 0;
    for (int i = 0; i < dsv_gguf_count(g); i++) {
        const dsv_gguf_tensor *t = dsv_gguf_at(g, i);
        need = DSV_MAX(need, (size_t)((const uint8_t *)t->data - buf) + t->nbytes);
    }
    dsv_gguf_close(g);
    int opened = 0;
    for (size_t len = 0; len < n; len++) {
        uint8_t *c = malloc(len ? len : 1); /* exactly len bytes: ASAN sees any overread */
        memcpy(c, buf, len);
        int st = dsv_gguf_open_memory(&g, c, len, "small.gguf");
        if (st == DSV_OK) {
            opened++;
            check_inside(g, c, len);
            dsv_gguf_close(g);
        } else {
            CHECK(*dsv_errmsg() && !strchr(dsv_errmsg(), '\n'));
        }
        CHECKF(len >= need || st != DSV_OK, "truncated to %zu of %zu bytes and still opened", len, n);
        free(c);
    }
    CHECK(opened <= (int)(n - need)); /* only the trailing padding may go */
    /* Random flips of one to four bytes, mostly in the header. */
    uint64_t seed = 12345;
    int ok = 0, failed = 0;
    for (int it = 0; it < 3000; it++) {
        uint8_t *c = malloc(n);
        memcpy(c, buf, n);
        int flips = 1 + it % 4;
        for (int k = 0; k < flips; k++) {
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            size_t pos = (size_t)(seed >> 33) % (it % 8 ? need : n);
            c[pos] ^= (uint8_t)(1u << ((seed >> 20) & 7));
        }
        int st = dsv_gguf_open_memory(&g, c, n, "small.gguf");
        if (st == DSV_OK) {
            ok++;
            check_inside(g, c, n);
            dsv_gguf_close(g);
        } else {
            failed++;
            CHECK(*dsv_errmsg() && !strchr(dsv_errmsg(), '\n'));
        }
        free(c);
    }
    CHECK(failed > 0 && ok > 0); /* flips in tensor data must still open */
    free(buf);
}

TEST(gguf_split_set) {
    char p1[600], p2[600];
    snprintf(p1, sizeof p1, "%s/m-00001-of-00002.gguf", test_tmpdir());
    snprintf(p2, sizeof p2, "%s/m-00002-of-00002.gguf", test_tmpdir());
    write_small(p1, 0, 2);
    dsv_gguf *g;
    CHECK(dsv_gguf_open(&g, p1) == DSV_ERR_IO && strstr(dsv_errmsg(), "m-00002-of-00002.gguf"));
    write_small(p2, 1, 2);
    REQUIREF(dsv_gguf_open(&g, p1) == DSV_OK, "%s", dsv_errmsg());
    CHECK_EQ_INT(dsv_gguf_file_count(g), 2);
    CHECK_EQ_INT(dsv_gguf_count(g), 6);
    const dsv_gguf_tensor *t = dsv_gguf_find(g, "blk.1.ffn_down.weight");
    REQUIRE(t != NULL);
    CHECK_EQ_INT(t->file, 1);
    CHECK_EQ_INT(((const uint8_t *)t->data)[1], 8);
    dsv_gguf_close(g);
    /* Opening the second part is an error that says which to open. */
    CHECK(dsv_gguf_open(&g, p2) == DSV_ERR_ARG && strstr(dsv_errmsg(), "first part"));
    /* A part with the wrong number. */
    write_small(p2, 0, 2);
    CHECK(dsv_gguf_open(&g, p1) != DSV_OK && strstr(dsv_errmsg(), "split.no"));
}
