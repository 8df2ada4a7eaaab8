/* test_safetensors.c: the safetensors reader and writer.
 *
 * Real checkpoints (the conformance models) are opened and spot-checked; the
 * writer is checked by round trips and by reproducing those checkpoints byte
 * for byte; every malformed-file case has its own expected status and message;
 * truncated copies and a deterministic mutation loop show that no input
 * crashes the reader (run under `make asan` to also catch stray reads). */
#include <errno.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "format/safetensors.h"
#include "test.h"
#include "base/util.h"

/* ---- helpers ---- */

static const char *tmp_path(const char *name) {
    static char bufs[4][1024];
    static int slot;
    char *b = bufs[slot++ & 3];
    snprintf(b, sizeof bufs[0], "%s/%s", test_tmpdir(), name);
    return b;
}


static int file_exists(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0;
}

/* A safetensors image from a header string and n_data data bytes (0, 1, 2...). */
static uint8_t *make_image(const char *header, size_t hlen, size_t n_data, size_t *size) {
    *size = 8 + hlen + n_data;
    uint8_t *b = malloc(*size ? *size : 1);
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
    memcpy(b + 8, header, hlen);
    for (size_t i = 0; i < n_data; i++) b[8 + hlen + i] = (uint8_t)i;
    return b;
}

/* Opens buf from memory and expects status and a message containing needle. */
static void expect_bad_mem(const char *what, const void *buf, size_t n, int status, const char *needle,
                           int line) {
    dsv_st *st = NULL;
    dsv_error_clear();
    int rc = dsv_st_open_memory(&st, buf, n, "bad.safetensors");
    if (rc == DSV_OK) dsv_st_close(st);
    if (rc != status || !strstr(dsv_errmsg(), needle))
        test_fail(__FILE__, line, "%s: got %d \"%s\", want %d with \"%s\"", what, rc, dsv_errmsg(), status,
                  needle);
}

static void expect_bad_path(const char *what, const char *path, int status, const char *needle, int line) {
    dsv_st *st = NULL;
    dsv_error_clear();
    int rc = dsv_st_open(&st, path);
    if (rc == DSV_OK) dsv_st_close(st);
    if (rc != status || !strstr(dsv_errmsg(), needle))
        test_fail(__FILE__, line, "%s: got %d \"%s\", want %d with \"%s\"", what, rc, dsv_errmsg(), status,
                  needle);
}

#define EXPECT_BAD_PATH(what, path, status, needle) expect_bad_path(what, path, status, needle, __LINE__)

/* Checks what an opened image promises: every tensor inside buf, sized by
 * its shape, findable by name. */
static void check_invariants(const dsv_st *st, const uint8_t *buf, size_t n) {
    for (int i = 0; i < dsv_st_count(st); i++) {
        const dsv_st_tensor *t = dsv_st_at(st, i);
        REQUIRE(t && t->name);
        const uint8_t *d = t->data;
        REQUIRE(d >= buf + 8 && d + t->nbytes <= buf + n);
        uint64_t el = 1;
        for (int k = 0; k < t->n_dims; k++) el *= (uint64_t)t->shape[k];
        REQUIRE(el * dsv_dtype_size(t->dtype) == t->nbytes);
        REQUIRE(dsv_st_find(st, t->name) == t);
        volatile uint8_t sink = 0;
        if (t->nbytes) sink ^= d[0] ^ d[t->nbytes - 1];
        (void)sink;
    }
}

static uint64_t rng_state;
static uint32_t rng(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 16);
}

/* A small valid file written by the writer: several dtypes, a zero-element
 * tensor, a scalar and metadata. Returns its bytes (caller frees). */
static uint8_t *small_valid_file(size_t *n) {
    static const float a[6] = {1, 2, 3, 4, 5, 6};
    static const uint16_t b[4] = {0x3f80, 0x4000, 0x4040, 0x4080};
    static const int64_t s = 42;
    dsv_st_writer *w;
    REQUIRE(dsv_st_writer_init(&w) == DSV_OK);
    REQUIRE(dsv_st_writer_add(w, "a", DSV_DT_F32, 2, (int64_t[]){2, 3}, a) == DSV_OK);
    REQUIRE(dsv_st_writer_add(w, "b", DSV_DT_BF16, 1, (int64_t[]){4}, b) == DSV_OK);
    REQUIRE(dsv_st_writer_add(w, "empty", DSV_DT_F8_E4M3, 2, (int64_t[]){0, 5}, NULL) == DSV_OK);
    REQUIRE(dsv_st_writer_add(w, "s", DSV_DT_I64, 0, NULL, &s) == DSV_OK);
    REQUIRE(dsv_st_writer_set_metadata(w, "format", "pt") == DSV_OK);
    const char *path = tmp_path("small.safetensors");
    REQUIRE(dsv_st_writer_write(w, path) == DSV_OK);
    dsv_st_writer_free(w);
    uint8_t *buf = test_read_file(path, n);
    REQUIRE(buf);
    return buf;
}

static const char *fp8_dir(void) { return test_shared("conformance/public_sparse_fp8/hf"); }
static const char *bf16_dir(void) { return test_shared("conformance/public_sparse_bf16/hf"); }

static void require_fixture(const char *dir) {
    char p[1100];
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    REQUIREF(file_exists(p), "missing fixture %s", p);
}

/* ---- dtypes ---- */

TEST(st_dtype_names_and_sizes) {
    for (int i = 0; i < DSV_DT_COUNT; i++) {
        dsv_dtype d;
        CHECK_EQ_INT(dsv_dtype_from_name(dsv_dtype_name((dsv_dtype)i), &d), DSV_OK);
        CHECK_EQ_INT(d, i);
        CHECK(dsv_dtype_size((dsv_dtype)i) >= 1 && dsv_dtype_size((dsv_dtype)i) <= 8);
    }
    CHECK_STR(dsv_dtype_name(DSV_DT_F8_E4M3), "F8_E4M3");
    CHECK_STR(dsv_dtype_name(DSV_DT_BF16), "BF16");
    CHECK_EQ_INT(dsv_dtype_size(DSV_DT_BF16), 2);
    CHECK_EQ_INT(dsv_dtype_size(DSV_DT_C64), 8);
    CHECK_EQ_INT(dsv_dtype_size(DSV_DT_COUNT), 0);
    CHECK_EQ_INT(dsv_dtype_size((dsv_dtype)-1), 0);
    CHECK_STR(dsv_dtype_name(DSV_DT_COUNT), "?");
    dsv_dtype d;
    CHECK_EQ_INT(dsv_dtype_from_name("F4", &d), DSV_ERR_UNSUPPORTED);
    CHECK_EQ_INT(dsv_dtype_from_name("f32", &d), DSV_ERR_FORMAT);
    CHECK_EQ_INT(dsv_dtype_from_name("", &d), DSV_ERR_FORMAT);
}

/* ---- the conformance checkpoints ---- */

TEST(st_open_conformance_fp8) {
    require_fixture(fp8_dir());
    dsv_st *st = NULL;
    REQUIREF(dsv_st_open(&st, fp8_dir()) == DSV_OK, "%s", dsv_errmsg());
    CHECK_EQ_INT(dsv_st_count(st), 184);
    CHECK_EQ_INT(dsv_st_file_count(st), 1);
    CHECK_STR(dsv_st_metadata(st, 0, "format"), "pt");
    CHECK(dsv_st_metadata(st, 0, "nope") == NULL);
    CHECK(dsv_st_metadata(st, 1, "format") == NULL);
    CHECK(strstr(dsv_st_file_path(st, 0), "model.safetensors") != NULL);
    CHECK(dsv_st_file_path(st, 1) == NULL);

    int n_f8 = 0, n_f32 = 0, n_bf16 = 0;
    for (int i = 0; i < dsv_st_count(st); i++) {
        const dsv_st_tensor *t = dsv_st_at(st, i);
        n_f8 += t->dtype == DSV_DT_F8_E4M3;
        n_f32 += t->dtype == DSV_DT_F32;
        n_bf16 += t->dtype == DSV_DT_BF16;
        CHECK(dsv_st_find(st, t->name) == t);
    }
    CHECK_EQ_INT(n_f8, 78);
    CHECK_EQ_INT(n_f32, 80);
    CHECK_EQ_INT(n_bf16, 26);
    CHECK(dsv_st_at(st, 184) == NULL && dsv_st_at(st, -1) == NULL);

    const dsv_st_tensor *q = dsv_st_find(st, "model.layers.0.self_attn.q_a_proj.weight");
    REQUIRE(q);
    CHECK_EQ_INT(q->dtype, DSV_DT_F8_E4M3);
    CHECK_EQ_INT(q->n_dims, 2);
    CHECK_EQ_INT(q->shape[0], 256);
    CHECK_EQ_INT(q->shape[1], 384);
    CHECK_EQ_INT(q->nbytes, 256 * 384);
    const dsv_st_tensor *s = dsv_st_find(st, "model.layers.0.self_attn.q_a_proj.weight_scale_inv");
    REQUIRE(s);
    CHECK_EQ_INT(s->dtype, DSV_DT_F32);
    CHECK_EQ_INT(s->n_dims, 2);
    CHECK_EQ_INT(s->shape[0], 2);
    CHECK_EQ_INT(s->shape[1], 3);
    CHECK_EQ_INT(s->nbytes, 24);
    const dsv_st_tensor *bias = dsv_st_find(st, "model.layers.1.mlp.gate.e_score_correction_bias");
    REQUIRE(bias);
    CHECK(bias->dtype == DSV_DT_F32 && bias->n_dims == 1 && bias->shape[0] == 8);
    CHECK(dsv_st_find(st, "model.layers.0.self_attn.q_a_proj") == NULL);
    CHECK(dsv_st_find(st, "") == NULL);

    /* The pointers are into the file: compare with the bytes read plainly.
     * The header is 21600 bytes; q_a_proj starts at data offset 2938196. */
    size_t len;
    char p[1100];
    snprintf(p, sizeof p, "%s/model.safetensors", fp8_dir());
    uint8_t *raw = test_read_file(p, &len);
    REQUIRE(raw);
    CHECK(memcmp(q->data, raw + 8 + 21600 + 2938196, q->nbytes) == 0);
    size_t total = 0;
    for (int i = 0; i < dsv_st_count(st); i++) {
        const dsv_st_tensor *t = dsv_st_at(st, i);
        total += t->nbytes;
        CHECK(memcmp(t->data,
                     raw + ((const uint8_t *)t->data - (const uint8_t *)dsv_st_at(st, 0)->data) + 8 + 21600,
                     t->nbytes) == 0);
    }
    CHECK_EQ_INT(total, len - 8 - 21600);
    CHECK_EQ_INT(dsv_st_prefetch(st, q), DSV_OK);
    CHECK_EQ_INT(dsv_st_prefetch(st, NULL), DSV_ERR_ARG);
    free(raw);
    dsv_st_close(st);
    dsv_st_close(NULL);
}

TEST(st_open_conformance_bf16_file_and_dir_agree) {
    require_fixture(bf16_dir());
    char p[1100];
    snprintf(p, sizeof p, "%s/model.safetensors", bf16_dir());
    dsv_st *a = NULL, *b = NULL;
    REQUIREF(dsv_st_open(&a, bf16_dir()) == DSV_OK, "%s", dsv_errmsg());
    REQUIREF(dsv_st_open(&b, p) == DSV_OK, "%s", dsv_errmsg());
    CHECK_EQ_INT(dsv_st_count(a), 63);
    CHECK_EQ_INT(dsv_st_count(b), 63);
    int n_f32 = 0;
    for (int i = 0; i < dsv_st_count(a); i++) {
        const dsv_st_tensor *x = dsv_st_at(a, i), *y = dsv_st_at(b, i);
        CHECK_STR(x->name, y->name);
        CHECK(x->nbytes == y->nbytes && !memcmp(x->data, y->data, x->nbytes));
        CHECK(x->dtype == DSV_DT_BF16 || x->dtype == DSV_DT_F32);
        n_f32 += x->dtype == DSV_DT_F32;
    }
    CHECK_EQ_INT(n_f32, 1);
    const dsv_st_tensor *q = dsv_st_find(a, "model.layers.0.self_attn.q_a_proj.weight");
    REQUIRE(q);
    CHECK(q->dtype == DSV_DT_BF16 && q->n_dims == 2 && q->shape[0] == 128 && q->shape[1] == 256);
    CHECK(dsv_st_find(a, "model.layers.0.self_attn.q_a_proj.weight_scale_inv") == NULL);
    dsv_st_close(a);
    dsv_st_close(b);
}

/* ---- writer ---- */

TEST(st_writer_round_trip) {
    float f32[12];
    uint16_t bf[5];
    uint8_t f8[7];
    double f64[2] = {1.5, -2.25};
    for (int i = 0; i < 12; i++) f32[i] = (float)i * 0.5f;
    for (int i = 0; i < 5; i++) bf[i] = (uint16_t)(0x3f00 + i);
    for (int i = 0; i < 7; i++) f8[i] = (uint8_t)(i * 37);
    const char *odd = "odd \"name\" \\ with\ttabs\nnewline and \xc3\xa9";
    dsv_st_writer *w;
    REQUIRE(dsv_st_writer_init(&w) == DSV_OK);
    /* Insertion order deliberately not sorted: the file keeps it. */
    REQUIRE(dsv_st_writer_add(w, "z.weight", DSV_DT_F32, 3, (int64_t[]){2, 3, 2}, f32) == DSV_OK);
    REQUIRE(dsv_st_writer_add(w, "a.bias", DSV_DT_BF16, 1, (int64_t[]){5}, bf) == DSV_OK);
    REQUIRE(dsv_st_writer_add(w, "empty", DSV_DT_F32, 3, (int64_t[]){4, 0, 9}, NULL) == DSV_OK);
    REQUIRE(dsv_st_writer_add(w, odd, DSV_DT_F8_E4M3, 1, (int64_t[]){7}, f8) == DSV_OK);
    REQUIRE(dsv_st_writer_add(w, "scalar", DSV_DT_F64, 0, NULL, &f64[1]) == DSV_OK);
    REQUIRE(dsv_st_writer_add(w, "pair", DSV_DT_F64, 8, (int64_t[]){1, 1, 1, 1, 1, 1, 1, 2}, f64) == DSV_OK);
    REQUIRE(dsv_st_writer_set_metadata(w, "format", "np") == DSV_OK);
    REQUIRE(dsv_st_writer_set_metadata(w, "note", "line1\nline2 \"q\"") == DSV_OK);
    REQUIRE(dsv_st_writer_set_metadata(w, "format", "pt") == DSV_OK); /* replaces */
    CHECK_EQ_INT(dsv_st_writer_data_size(w), 48 + 10 + 0 + 7 + 8 + 16);
    const char *path = tmp_path("rt.safetensors");
    REQUIREF(dsv_st_writer_write(w, path) == DSV_OK, "%s", dsv_errmsg());
    CHECK(!file_exists(tmp_path("rt.safetensors.tmp")));
    CHECK_EQ_INT(dsv_st_writer_add(w, "late", DSV_DT_F32, 0, NULL, f32), DSV_ERR_ARG);
    dsv_st_writer_free(w);

    size_t len;
    uint8_t *raw = test_read_file(path, &len);
    REQUIRE(raw);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | raw[i];
    CHECK_EQ_INT((8 + hlen) % 8, 0);
    CHECK_EQ_INT(len, 8 + hlen + 89);
    size_t last = 8 + hlen - 1;
    while (raw[last] == ' ') last--;
    CHECK(raw[8] == '{' && raw[last] == '}' && 8 + hlen - 1 - last < 8);

    dsv_st *st;
    REQUIREF(dsv_st_open(&st, path) == DSV_OK, "%s", dsv_errmsg());
    const char *order[] = {"z.weight", "a.bias", "empty", odd, "scalar", "pair"};
    REQUIRE(dsv_st_count(st) == 6);
    for (int i = 0; i < 6; i++) CHECK_STR(dsv_st_at(st, i)->name, order[i]);
    const dsv_st_tensor *t = dsv_st_find(st, "z.weight");
    CHECK(t && t->dtype == DSV_DT_F32 && t->n_dims == 3 && t->shape[2] == 2 && !memcmp(t->data, f32, 48));
    CHECK(!memcmp(raw + 8 + hlen, f32, 48)); /* first in data order */
    t = dsv_st_find(st, "a.bias");
    CHECK(t && t->dtype == DSV_DT_BF16 && t->nbytes == 10 && !memcmp(t->data, bf, 10));
    t = dsv_st_find(st, "empty");
    CHECK(t && t->nbytes == 0 && t->n_dims == 3 && t->shape[0] == 4 && t->shape[1] == 0);
    t = dsv_st_find(st, odd);
    CHECK(t && t->dtype == DSV_DT_F8_E4M3 && !memcmp(t->data, f8, 7));
    t = dsv_st_find(st, "scalar");
    CHECK(t && t->n_dims == 0 && t->nbytes == 8 && !memcmp(t->data, &f64[1], 8));
    t = dsv_st_find(st, "pair");
    CHECK(t && t->n_dims == 8 && t->shape[7] == 2 && !memcmp(t->data, f64, 16));
    CHECK_STR(dsv_st_metadata(st, 0, "format"), "pt");
    CHECK_STR(dsv_st_metadata(st, 0, "note"), "line1\nline2 \"q\"");
    dsv_st_close(st);

    /* An empty writer makes a valid empty file. */
    REQUIRE(dsv_st_writer_init(&w) == DSV_OK);
    REQUIRE(dsv_st_writer_write(w, tmp_path("empty.safetensors")) == DSV_OK);
    dsv_st_writer_free(w);
    REQUIREF(dsv_st_open(&st, tmp_path("empty.safetensors")) == DSV_OK, "%s", dsv_errmsg());
    CHECK_EQ_INT(dsv_st_count(st), 0);
    CHECK(dsv_st_find(st, "a") == NULL);
    dsv_st_close(st);
    free(raw);
}

/* Re-writing every tensor of a reference file in its order, with its
 * metadata, must give back the identical bytes: the writer spells headers
 * exactly as the reference library does. */
static void reproduce(const char *dir) {
    require_fixture(dir);
    char p[1100];
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    dsv_st *st;
    REQUIREF(dsv_st_open(&st, p) == DSV_OK, "%s", dsv_errmsg());
    dsv_st_writer *w;
    REQUIRE(dsv_st_writer_init(&w) == DSV_OK);
    for (int i = 0; i < dsv_st_count(st); i++) {
        const dsv_st_tensor *t = dsv_st_at(st, i);
        REQUIRE(dsv_st_writer_add(w, t->name, t->dtype, t->n_dims, t->shape, t->data) == DSV_OK);
    }
    REQUIRE(dsv_st_writer_set_metadata(w, "format", dsv_st_metadata(st, 0, "format")) == DSV_OK);
    const char *out = tmp_path("copy.safetensors");
    REQUIREF(dsv_st_writer_write(w, out) == DSV_OK, "%s", dsv_errmsg());
    dsv_st_writer_free(w);
    dsv_st_close(st);
    size_t n1, n2;
    uint8_t *a = test_read_file(p, &n1), *b = test_read_file(out, &n2);
    REQUIRE(a && b);
    CHECK_EQ_INT(n1, n2);
    CHECK(n1 == n2 && memcmp(a, b, n1) == 0);
    free(a);
    free(b);
}

TEST(st_writer_reproduces_conformance_fp8) { reproduce(fp8_dir()); }
TEST(st_writer_reproduces_conformance_bf16) { reproduce(bf16_dir()); }

TEST(st_writer_streaming) {
    enum { N = 1000 };
    static float big[N];
    for (int i = 0; i < N; i++) big[i] = (float)i;
    uint8_t tail[3] = {7, 8, 9};
    dsv_st_writer *w;
    REQUIRE(dsv_st_writer_init(&w) == DSV_OK);
    REQUIRE(dsv_st_writer_add(w, "big", DSV_DT_F32, 2, (int64_t[]){10, 100}, NULL) == DSV_OK);
    REQUIRE(dsv_st_writer_add(w, "tail", DSV_DT_U8, 1, (int64_t[]){3}, NULL) == DSV_OK);
    CHECK_EQ_INT(dsv_st_writer_write(w, tmp_path("never.safetensors")), DSV_ERR_ARG); /* no data */
    CHECK(strstr(dsv_errmsg(), "has no data"));
    CHECK(!file_exists(tmp_path("never.safetensors")) && !file_exists(tmp_path("never.safetensors.tmp")));
    const char *path = tmp_path("stream.safetensors");
    CHECK_EQ_INT(dsv_st_writer_put(w, tail, 3), DSV_ERR_ARG); /* before begin */
    REQUIRE(dsv_st_writer_begin(w, path) == DSV_OK);
    CHECK(file_exists(tmp_path("stream.safetensors.tmp")) && !file_exists(path));
    CHECK_EQ_INT(dsv_st_writer_add(w, "late", DSV_DT_U8, 0, NULL, tail), DSV_ERR_ARG);
    CHECK_EQ_INT(dsv_st_writer_set_metadata(w, "k", "v"), DSV_ERR_ARG);
    /* Chunks that straddle the tensor boundary are fine: it is one stream. */
    const uint8_t *src = (const uint8_t *)big;
    size_t off = 0, sizes[] = {1, 7, 1000, 2991};
    for (int i = 0; i < 4; i++, off += sizes[i - 1])
        REQUIRE(dsv_st_writer_put(w, src + off, sizes[i]) == DSV_OK);
    REQUIRE(off == 3999);
    REQUIRE(dsv_st_writer_put(w, src + off, 1) == DSV_OK);
    REQUIRE(dsv_st_writer_put(w, tail, 3) == DSV_OK);
    REQUIREF(dsv_st_writer_finish(w) == DSV_OK, "%s", dsv_errmsg());
    CHECK_EQ_INT(dsv_st_writer_finish(w), DSV_ERR_ARG);
    dsv_st_writer_free(w);
    CHECK(!file_exists(tmp_path("stream.safetensors.tmp")));
    dsv_st *st;
    REQUIREF(dsv_st_open(&st, path) == DSV_OK, "%s", dsv_errmsg());
    CHECK(!memcmp(dsv_st_find(st, "big")->data, big, sizeof big));
    CHECK(!memcmp(dsv_st_find(st, "tail")->data, tail, 3));
    dsv_st_close(st);

    /* Too few bytes: finish fails and nothing is left behind. */
    REQUIRE(dsv_st_writer_init(&w) == DSV_OK);
    REQUIRE(dsv_st_writer_add(w, "t", DSV_DT_U8, 1, (int64_t[]){3}, NULL) == DSV_OK);
    REQUIRE(dsv_st_writer_begin(w, tmp_path("short.safetensors")) == DSV_OK);
    REQUIRE(dsv_st_writer_put(w, tail, 2) == DSV_OK);
    CHECK_EQ_INT(dsv_st_writer_finish(w), DSV_ERR_ARG);
    CHECK(strstr(dsv_errmsg(), "only 2 of 3 data bytes"));
    CHECK(!file_exists(tmp_path("short.safetensors")) && !file_exists(tmp_path("short.safetensors.tmp")));
    dsv_st_writer_free(w);

    /* Too many bytes: the put fails and the file is abandoned. */
    REQUIRE(dsv_st_writer_init(&w) == DSV_OK);
    REQUIRE(dsv_st_writer_add(w, "t", DSV_DT_U8, 1, (int64_t[]){2}, NULL) == DSV_OK);
    REQUIRE(dsv_st_writer_begin(w, tmp_path("long.safetensors")) == DSV_OK);
    CHECK_EQ_INT(dsv_st_writer_put(w, tail, 3), DSV_ERR_ARG);
    CHECK(strstr(dsv_errmsg(), "exceeds the declared data size"));
    CHECK(!file_exists(tmp_path("long.safetensors.tmp")));
    dsv_st_writer_free(w);

    /* Freed mid-file: the temporary file goes too. */
    REQUIRE(dsv_st_writer_init(&w) == DSV_OK);
    REQUIRE(dsv_st_writer_add(w, "t", DSV_DT_U8, 1, (int64_t[]){2}, NULL) == DSV_OK);
    REQUIRE(dsv_st_writer_begin(w, tmp_path("freed.safetensors")) == DSV_OK);
    dsv_st_writer_free(w);
    CHECK(!file_exists(tmp_path("freed.safetensors")) && !file_exists(tmp_path("freed.safetensors.tmp")));

    /* An unwritable place is an i/o error. */
    REQUIRE(dsv_st_writer_init(&w) == DSV_OK);
    CHECK_EQ_INT(dsv_st_writer_begin(w, tmp_path("no/such/dir.safetensors")), DSV_ERR_IO);
    CHECK(strstr(dsv_errmsg(), "cannot create"));
    dsv_st_writer_free(w);
    dsv_st_writer_free(NULL);
}

TEST(st_writer_rejects_bad_arguments) {
    dsv_st_writer *w;
    float x[4] = {0};
    REQUIRE(dsv_st_writer_init(&w) == DSV_OK);
    REQUIRE(dsv_st_writer_add(w, "x", DSV_DT_F32, 1, (int64_t[]){4}, x) == DSV_OK);
    CHECK_EQ_INT(dsv_st_writer_add(w, "x", DSV_DT_F32, 1, (int64_t[]){4}, x), DSV_ERR_ARG);
    CHECK(strstr(dsv_errmsg(), "added twice"));
    CHECK_EQ_INT(dsv_st_writer_add(w, "__metadata__", DSV_DT_F32, 1, (int64_t[]){4}, x), DSV_ERR_ARG);
    CHECK_EQ_INT(dsv_st_writer_add(w, "y", DSV_DT_F32, 9, (int64_t[]){1, 1, 1, 1, 1, 1, 1, 1, 1}, x),
                 DSV_ERR_ARG);
    CHECK_EQ_INT(dsv_st_writer_add(w, "y", DSV_DT_F32, -1, NULL, x), DSV_ERR_ARG);
    CHECK_EQ_INT(dsv_st_writer_add(w, "y", DSV_DT_F32, 1, (int64_t[]){-4}, x), DSV_ERR_ARG);
    CHECK_EQ_INT(dsv_st_writer_add(w, "y", DSV_DT_COUNT, 1, (int64_t[]){4}, x), DSV_ERR_ARG);
    CHECK_EQ_INT(dsv_st_writer_add(w, "y", DSV_DT_F32, 3, (int64_t[]){1 << 30, 1 << 30, 1 << 30}, x),
                 DSV_ERR_ARG);
    CHECK_EQ_INT(dsv_st_writer_add(w, "bad \xff utf8", DSV_DT_F32, 1, (int64_t[]){4}, x), DSV_ERR_ARG);
    CHECK_EQ_INT(dsv_st_writer_add(w, NULL, DSV_DT_F32, 1, (int64_t[]){4}, x), DSV_ERR_ARG);
    CHECK_EQ_INT(dsv_st_writer_set_metadata(w, "k", "\xc0\x80"), DSV_ERR_ARG); /* overlong NUL */
    CHECK_EQ_INT(dsv_st_writer_init(NULL), DSV_ERR_ARG);
    /* The failed adds left the writer intact. */
    CHECK_EQ_INT(dsv_st_writer_data_size(w), 16);
    REQUIRE(dsv_st_writer_write(w, tmp_path("ok.safetensors")) == DSV_OK);
    dsv_st_writer_free(w);
    dsv_st *st;
    REQUIRE(dsv_st_open(&st, tmp_path("ok.safetensors")) == DSV_OK);
    CHECK_EQ_INT(dsv_st_count(st), 1);
    dsv_st_close(st);
}

/* Replacing a file that a reader has mapped leaves the reader's view intact
 * (the writer renames a new file into place rather than truncating). */
TEST(st_writer_replaces_mapped_file_safely) {
    uint32_t v1[4] = {1, 2, 3, 4}, v2[4] = {9, 9, 9, 9};
    const char *path = tmp_path("m.safetensors");
    dsv_st_writer *w;
    REQUIRE(dsv_st_writer_init(&w) == DSV_OK);
    REQUIRE(dsv_st_writer_add(w, "v", DSV_DT_U32, 1, (int64_t[]){4}, v1) == DSV_OK);
    REQUIRE(dsv_st_writer_write(w, path) == DSV_OK);
    dsv_st_writer_free(w);
    dsv_st *old, *cur;
    REQUIRE(dsv_st_open(&old, path) == DSV_OK);
    REQUIRE(dsv_st_writer_init(&w) == DSV_OK);
    REQUIRE(dsv_st_writer_add(w, "v", DSV_DT_U32, 1, (int64_t[]){4}, v2) == DSV_OK);
    REQUIRE(dsv_st_writer_write(w, path) == DSV_OK);
    dsv_st_writer_free(w);
    REQUIRE(dsv_st_open(&cur, path) == DSV_OK);
    CHECK(!memcmp(dsv_st_find(old, "v")->data, v1, 16));
    CHECK(!memcmp(dsv_st_find(cur, "v")->data, v2, 16));
    dsv_st_close(old);
    dsv_st_close(cur);
}

TEST(st_many_tensors_hash_lookup) {
    enum { N = 5000 };
    static uint16_t vals[N];
    dsv_st_writer *w;
    REQUIRE(dsv_st_writer_init(&w) == DSV_OK);
    char name[64];
    for (int i = 0; i < N; i++) {
        vals[i] = (uint16_t)i;
        snprintf(name, sizeof name, "model.layers.%d.mlp.experts.%d.w", i / 256, i % 256);
        REQUIRE(dsv_st_writer_add(w, name, DSV_DT_U16, 1, (int64_t[]){1}, &vals[i]) == DSV_OK);
    }
    REQUIRE(dsv_st_writer_write(w, tmp_path("many.safetensors")) == DSV_OK);
    dsv_st_writer_free(w);
    dsv_st *st;
    REQUIREF(dsv_st_open(&st, tmp_path("many.safetensors")) == DSV_OK, "%s", dsv_errmsg());
    CHECK_EQ_INT(dsv_st_count(st), N);
    int bad = 0;
    for (int i = 0; i < N; i++) {
        snprintf(name, sizeof name, "model.layers.%d.mlp.experts.%d.w", i / 256, i % 256);
        const dsv_st_tensor *t = dsv_st_find(st, name);
        uint16_t v;
        if (t) memcpy(&v, t->data, 2);
        bad += !t || v != i;
        snprintf(name, sizeof name, "model.layers.%d.mlp.experts.%d.x", i / 256, i % 256);
        bad += dsv_st_find(st, name) != NULL;
    }
    CHECK_EQ_INT(bad, 0);
    dsv_st_close(st);
}

/* ---- sharded directories ---- */

/* Writes shard `name` in dir with tensors named in names (the k-th a U8
 * [k+1] filled with k+1). */
static void write_shard(const char *dir, const char *name, const char *const *names, int n) {
    static const uint8_t fill[16] = {1, 2, 2, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 5, 6};
    dsv_st_writer *w;
    REQUIRE(dsv_st_writer_init(&w) == DSV_OK);
    for (int i = 0; i < n; i++)
        REQUIRE(dsv_st_writer_add(w, names[i], DSV_DT_U8, 1, (int64_t[]){i + 1}, fill + i * (i + 1) / 2) ==
                DSV_OK);
    REQUIRE(dsv_st_writer_set_metadata(w, "shard", name) == DSV_OK);
    char p[1200];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    REQUIREF(dsv_st_writer_write(w, p) == DSV_OK, "%s", dsv_errmsg());
    dsv_st_writer_free(w);
}

struct progress_log {
    int calls, monotonic;
    uint64_t last_done, last_total;
};

static void on_progress(uint64_t done, uint64_t total, void *user) {
    struct progress_log *l = user;
    if (done < l->last_done || done > total) l->monotonic = 0;
    l->calls++;
    l->last_done = done;
    l->last_total = total;
}

TEST(st_sharded_index_round_trip) {
    const char *dir = test_tmpdir();
    const char *s1[] = {"model.embed_tokens.weight", "model.layers.0.w"};
    const char *s2[] = {"model.layers.1.w", "model.layers.1.v", "lm_head.weight"};
    const char *s3[] = {"model.norm.weight"};
    write_shard(dir, "model-00001-of-00003.safetensors", s1, 2);
    write_shard(dir, "model-00002-of-00003.safetensors", s2, 3);
    write_shard(dir, "model-00003-of-00003.safetensors", s3, 1);
    const char *shards[] = {"model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                            "model-00003-of-00003.safetensors"};
    REQUIREF(dsv_st_write_index(dir, shards, 3) == DSV_OK, "%s", dsv_errmsg());

    /* The index: sorted names, total size = sum of tensor bytes. */
    size_t n;
    char *text = test_read_file(tmp_path("model.safetensors.index.json"), &n);
    REQUIRE(text);
    cJSON *j = cJSON_Parse(text);
    REQUIRE(j);
    CHECK_EQ_INT(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "metadata"), "total_size")->valuedouble,
                 (1 + 2) + (1 + 2 + 3) + 1);
    cJSON *wm = cJSON_GetObjectItem(j, "weight_map");
    CHECK_EQ_INT(cJSON_GetArraySize(wm), 6);
    CHECK_STR(wm->child->string, "lm_head.weight");
    CHECK_STR(wm->child->valuestring, "model-00002-of-00003.safetensors");
    cJSON_Delete(j);
    free(text);

    struct progress_log log = {0, 1, 0, 0};
    dsv_st_open_params params = {on_progress, &log};
    dsv_st *st;
    REQUIREF(dsv_st_open_ex(&st, dir, &params) == DSV_OK, "%s", dsv_errmsg());
    CHECK_EQ_INT(dsv_st_count(st), 6);
    CHECK_EQ_INT(dsv_st_file_count(st), 3);
    CHECK_EQ_INT(log.calls, 3);
    CHECK(log.monotonic && log.last_done == log.last_total && log.last_total > 0);
    for (int f = 0; f < 3; f++) {
        CHECK(strstr(dsv_st_file_path(st, f), shards[f]) != NULL);
        CHECK_STR(dsv_st_metadata(st, f, "shard"), shards[f]);
    }
    const dsv_st_tensor *t = dsv_st_find(st, "lm_head.weight");
    REQUIRE(t);
    CHECK_EQ_INT(t->file, 1);
    CHECK(t->nbytes == 3 && !memcmp(t->data, "\x03\x03\x03", 3));
    t = dsv_st_find(st, "model.norm.weight");
    CHECK(t && t->file == 2 && ((const uint8_t *)t->data)[0] == 1);
    dsv_st_close(st);

    /* The index file itself is accepted as the path. */
    REQUIREF(dsv_st_open(&st, tmp_path("model.safetensors.index.json")) == DSV_OK, "%s", dsv_errmsg());
    CHECK_EQ_INT(dsv_st_count(st), 6);
    dsv_st_close(st);

    /* Duplicates across shards are refused by the index writer too. */
    write_shard(dir, "dup.safetensors", s3, 1);
    const char *dup_shards[] = {"model-00003-of-00003.safetensors", "dup.safetensors"};
    CHECK_EQ_INT(dsv_st_write_index(dir, dup_shards, 2), DSV_ERR_FORMAT);
    CHECK(strstr(dsv_errmsg(), "is in both"));
    const char *bad_name[] = {"../x.safetensors"};
    CHECK_EQ_INT(dsv_st_write_index(dir, bad_name, 1), DSV_ERR_ARG);
    const char *missing[] = {"nope.safetensors"};
    CHECK_EQ_INT(dsv_st_write_index(dir, missing, 1), DSV_ERR_IO);
}

TEST(st_directory_without_index) {
    const char *dir = test_tmpdir();
    const char *b[] = {"b1", "b2"}, *a[] = {"a1"}, *h[] = {"hidden"};
    write_shard(dir, "b.safetensors", b, 2);
    write_shard(dir, "a.safetensors", a, 1);
    write_shard(dir, "._a.safetensors", h, 1); /* dot files are not shards */
    test_write_file(tmp_path("notes.txt"), "x", 1);
    dsv_st *st;
    REQUIREF(dsv_st_open(&st, dir) == DSV_OK, "%s", dsv_errmsg());
    CHECK_EQ_INT(dsv_st_file_count(st), 2);
    CHECK(strstr(dsv_st_file_path(st, 0), "/a.safetensors") != NULL);
    CHECK(strstr(dsv_st_file_path(st, 1), "/b.safetensors") != NULL);
    CHECK_EQ_INT(dsv_st_count(st), 3);
    CHECK_STR(dsv_st_at(st, 0)->name, "a1");
    CHECK(dsv_st_find(st, "hidden") == NULL);
    CHECK_EQ_INT(dsv_st_find(st, "b2")->file, 1);
    dsv_st_close(st);

    /* model.safetensors, when present, is the whole model. */
    const char *m[] = {"m"};
    write_shard(dir, "model.safetensors", m, 1);
    REQUIREF(dsv_st_open(&st, dir) == DSV_OK, "%s", dsv_errmsg());
    CHECK_EQ_INT(dsv_st_file_count(st), 1);
    CHECK_EQ_INT(dsv_st_count(st), 1);
    CHECK(dsv_st_find(st, "m") != NULL);
    dsv_st_close(st);

    /* Duplicate names across the scanned files. */
    REQUIRE(unlink(tmp_path("model.safetensors")) == 0);
    const char *c[] = {"a1"};
    write_shard(dir, "c.safetensors", c, 1);
    EXPECT_BAD_PATH("dup across files", dir, DSV_ERR_FORMAT, "tensor \"a1\" is in both");
}

TEST(st_bad_index_files) {
    const char *dir = test_tmpdir();
    const char *a[] = {"x", "y"}, *b[] = {"z"};
    write_shard(dir, "a.safetensors", a, 2);
    write_shard(dir, "b.safetensors", b, 1);
    test_write_file(tmp_path("junk.safetensors"), "not a safetensors file", 22);
    static const struct {
        const char *what, *json;
        int status;
        const char *needle;
    } cases[] = {
        {"not json", "{\"weight_map\": {", DSV_ERR_FORMAT, "index is not valid JSON"},
        {"empty file", "", DSV_ERR_FORMAT, "index is not valid JSON"},
        {"trailing junk", "{\"weight_map\": {\"x\": \"a.safetensors\"}} }", DSV_ERR_FORMAT,
         "trailing characters"},
        {"not an object", "[\"a.safetensors\"]", DSV_ERR_FORMAT, "index is not a JSON object"},
        {"no weight_map", "{\"metadata\": {\"total_size\": 6}}", DSV_ERR_FORMAT, "no \"weight_map\" object"},
        {"weight_map array", "{\"weight_map\": [\"a.safetensors\"]}", DSV_ERR_FORMAT,
         "no \"weight_map\" object"},
        {"empty weight_map", "{\"weight_map\": {}}", DSV_ERR_FORMAT, "\"weight_map\" is empty"},
        {"non-string shard", "{\"weight_map\": {\"x\": 1}}", DSV_ERR_FORMAT, "entry \"x\" is not a string"},
        {"path escape", "{\"weight_map\": {\"x\": \"../a.safetensors\"}}", DSV_ERR_FORMAT,
         "not a plain file name"},
        {"absolute path", "{\"weight_map\": {\"x\": \"/etc/passwd\"}}", DSV_ERR_FORMAT,
         "not a plain file name"},
        {"empty shard name", "{\"weight_map\": {\"x\": \"\"}}", DSV_ERR_FORMAT, "not a plain file name"},
        {"missing shard", "{\"weight_map\": {\"x\": \"a.safetensors\", \"z\": \"c.safetensors\"}}",
         DSV_ERR_IO, "shard \"c.safetensors\" listed in the index"},
        {"malformed shard", "{\"weight_map\": {\"x\": \"junk.safetensors\"}}", DSV_ERR_FORMAT,
         "junk.safetensors: header length"},
        {"wrong shard",
         "{\"weight_map\": {\"x\": \"b.safetensors\", \"z\": \"b.safetensors\", \"y\": \"a.safetensors\"}}",
         DSV_ERR_FORMAT, "puts tensor \"x\" in \"b.safetensors\", but it is in \"a.safetensors\""},
        {"absent tensor", "{\"weight_map\": {\"x\": \"a.safetensors\", \"w\": \"a.safetensors\"}}",
         DSV_ERR_FORMAT, "puts tensor \"w\" in \"a.safetensors\", which does not contain it"},
        {"bad utf8", "{\"weight_map\": {\"x\": \"a\xfe.safetensors\"}}", DSV_ERR_FORMAT,
         "index is not valid UTF-8"},
    };
    const char *idx = tmp_path("model.safetensors.index.json");
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        test_write_file(idx, cases[i].json, strlen(cases[i].json));
        expect_bad_path(cases[i].what, dir, cases[i].status, cases[i].needle, __LINE__);
    }
    /* Good: a subset of tensors listed (unlisted ones are kept). */
    const char *ok = "{\"metadata\": {}, \"weight_map\": {\"x\": \"a.safetensors\"}}";
    test_write_file(idx, ok, strlen(ok));
    dsv_st *st;
    REQUIREF(dsv_st_open(&st, dir) == DSV_OK, "%s", dsv_errmsg());
    CHECK_EQ_INT(dsv_st_file_count(st), 1);
    CHECK(dsv_st_find(st, "y") != NULL);
    dsv_st_close(st);
}

/* ---- malformed single files ---- */

#define F32_1 "{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}"

static const struct bad_case {
    const char *what, *header;
    size_t n_data;
    int status;
    const char *needle;
} bad_cases[] = {
    {"empty header", "", 0, DSV_ERR_FORMAT, "header is not valid JSON"},
    {"truncated json", "{\"a\":" F32_1, 4, DSV_ERR_FORMAT, "header is not valid JSON"},
    {"json array", "[1,2]", 0, DSV_ERR_FORMAT, "header is not a JSON object"},
    {"json string", "\"x\"", 0, DSV_ERR_FORMAT, "header is not a JSON object"},
    {"trailing text", "{} x", 0, DSV_ERR_FORMAT, "trailing characters after the JSON value (byte 3)"},
    {"bad utf8", "{\"a\xff\":" F32_1 "}", 4, DSV_ERR_FORMAT, "header is not valid UTF-8 (byte 3)"},
    {"surrogate utf8", "{\"a\xed\xa0\x80\":" F32_1 "}", 4, DSV_ERR_FORMAT, "not valid UTF-8"},
    {"entry not object", "{\"a\":5}", 0, DSV_ERR_FORMAT, "tensor \"a\": entry is not an object"},
    {"missing dtype", "{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, DSV_ERR_FORMAT,
     "tensor \"a\": missing \"dtype\""},
    {"missing shape", "{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, DSV_ERR_FORMAT,
     "missing \"shape\""},
    {"missing offsets", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, DSV_ERR_FORMAT,
     "missing \"data_offsets\""},
    {"dtype twice", "{\"a\":{\"dtype\":\"F32\",\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
     DSV_ERR_FORMAT, "field \"dtype\" appears twice"},
    {"dtype number", "{\"a\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, DSV_ERR_FORMAT,
     "\"dtype\" is not a string"},
    {"unknown dtype", "{\"a\":{\"dtype\":\"F17\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, DSV_ERR_FORMAT,
     "unknown dtype \"F17\""},
    {"lowercase dtype", "{\"a\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, DSV_ERR_FORMAT,
     "unknown dtype \"f32\""},
    {"sub-byte dtype", "{\"a\":{\"dtype\":\"F4\",\"shape\":[8],\"data_offsets\":[0,4]}}", 4,
     DSV_ERR_UNSUPPORTED, "sub-byte dtype \"F4\""},
    {"shape object", "{\"a\":{\"dtype\":\"F32\",\"shape\":{},\"data_offsets\":[0,4]}}", 4, DSV_ERR_FORMAT,
     "\"shape\" is not an array"},
    {"negative dim", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,-1],\"data_offsets\":[0,4]}}", 4, DSV_ERR_FORMAT,
     "shape[1] is negative"},
    {"fractional dim", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4,
     DSV_ERR_FORMAT, "shape[0] is not an integer"},
    {"string dim", "{\"a\":{\"dtype\":\"F32\",\"shape\":[\"1\"],\"data_offsets\":[0,4]}}", 4, DSV_ERR_FORMAT,
     "shape[0] is not a number"},
    {"null dim", "{\"a\":{\"dtype\":\"F32\",\"shape\":[null],\"data_offsets\":[0,4]}}", 4, DSV_ERR_FORMAT,
     "shape[0] is not a number"},
    {"huge dim", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1e300],\"data_offsets\":[0,4]}}", 4, DSV_ERR_FORMAT,
     "shape[0] is too large"},
    {"infinite dim", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1e999],\"data_offsets\":[0,4]}}", 4,
     DSV_ERR_FORMAT, "shape[0] is too large"},
    {"nine dims", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4,
     DSV_ERR_UNSUPPORTED, "9 dimensions"},
    {"shape overflow",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],\"data_offsets\":[0,4]}}", 4,
     DSV_ERR_FORMAT, "shape product overflows"},
    {"bytes overflow", "{\"a\":{\"dtype\":\"F64\",\"shape\":[2147483648,2147483648],\"data_offsets\":[0,4]}}",
     4, DSV_ERR_FORMAT, "shape product overflows"},
    {"offsets number", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":4}}", 4, DSV_ERR_FORMAT,
     "\"data_offsets\" is not [begin, end]"},
    {"offsets triple", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,4]}}", 4,
     DSV_ERR_FORMAT, "\"data_offsets\" is not [begin, end]"},
    {"offsets single", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4]}}", 4, DSV_ERR_FORMAT,
     "\"data_offsets\" is not [begin, end]"},
    {"negative begin", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 4, DSV_ERR_FORMAT,
     "data_offsets begin is negative"},
    {"fractional end", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4.5]}}", 4,
     DSV_ERR_FORMAT, "data_offsets end is not an integer"},
    {"string end", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,\"4\"]}}", 4, DSV_ERR_FORMAT,
     "data_offsets end is not a number"},
    {"begin after end", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", 4, DSV_ERR_FORMAT,
     "data_offsets begin 4 > end 0"},
    {"end past data", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4, DSV_ERR_FORMAT,
     "data_offsets end 8 is beyond the data section (4 bytes)"},
    {"end far past data",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[9007199254740988,9007199254740992]}}", 4,
     DSV_ERR_FORMAT, "is beyond the data section"},
    {"size mismatch", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4, DSV_ERR_FORMAT,
     "data_offsets span 4 bytes but 1-d F32 needs 8"},
    {"overlap",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
     "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
     12, DSV_ERR_FORMAT, "tensor \"b\" (bytes 4..12) overlaps tensor \"a\" (bytes 0..8)"},
    {"same range", "{\"a\":" F32_1 ",\"b\":" F32_1 "}", 4, DSV_ERR_FORMAT, "overlaps tensor"},
    {"empty inside other",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
     "\"e\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]}}",
     8, DSV_ERR_FORMAT, "tensor \"e\" (bytes 4..4) overlaps"},
    {"gap", "{\"a\":" F32_1 ",\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}", 12,
     DSV_ERR_FORMAT, "4 bytes before tensor \"b\" belong to no tensor"},
    {"leading gap", "{\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, DSV_ERR_FORMAT,
     "4 bytes before tensor \"b\""},
    {"trailing bytes", "{\"a\":" F32_1 "}", 9, DSV_ERR_FORMAT,
     "the last 5 bytes of the data section belong to no tensor"},
    {"data without tensors", "{}", 3, DSV_ERR_FORMAT, "the last 3 bytes"},
    {"name twice", "{\"a\":" F32_1 ",\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8,
     DSV_ERR_FORMAT, "tensor \"a\" appears twice in the header"},
    {"metadata number", "{\"__metadata__\":5}", 0, DSV_ERR_FORMAT, "__metadata__ is not an object"},
    {"metadata value", "{\"__metadata__\":{\"format\":\"pt\",\"n\":1}}", 0, DSV_ERR_FORMAT,
     "__metadata__ value \"n\" is not a string"},
    {"metadata twice", "{\"__metadata__\":{},\"__metadata__\":{}}", 0, DSV_ERR_FORMAT,
     "__metadata__ appears twice"},
    {"metadata key twice", "{\"__metadata__\":{\"k\":\"1\",\"j\":\"\",\"k\":\"2\"}}", 0, DSV_ERR_FORMAT,
     "__metadata__ key \"k\" appears twice"},
    {"control char in name", "{\"a\\nb\":{\"dtype\":\"F17\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
     DSV_ERR_FORMAT, "tensor \"a?b\": unknown dtype"},
};

TEST(st_each_malformed_header_has_its_error) {
    for (size_t i = 0; i < sizeof bad_cases / sizeof *bad_cases; i++) {
        const struct bad_case *c = &bad_cases[i];
        size_t n;
        uint8_t *img = make_image(c->header, strlen(c->header), c->n_data, &n);
        expect_bad_mem(c->what, img, n, c->status, c->needle, __LINE__);
        /* The same through a real file: the message names it. */
        const char *path = tmp_path("bad.safetensors");
        test_write_file(path, img, n);
        expect_bad_path(c->what, path, c->status, c->needle, __LINE__);
        expect_bad_path(c->what, path, c->status, "bad.safetensors: ", __LINE__);
        free(img);
    }
}

TEST(st_malformed_length_field) {
    uint8_t b[64] = {0};
    for (size_t n = 0; n < 8; n++)
        expect_bad_mem("short file", b, n, DSV_ERR_FORMAT, "file is too short", __LINE__);
    expect_bad_mem("short file", b, 5, DSV_ERR_FORMAT, "(5 bytes) to hold the 8-byte header length",
                   __LINE__);

    uint64_t lens[] = {100000001ull, 1ull << 32, UINT64_MAX, 1ull << 63};
    for (int i = 0; i < 4; i++) {
        for (int k = 0; k < 8; k++) b[k] = (uint8_t)(lens[i] >> (8 * k));
        expect_bad_mem("absurd header length", b, sizeof b, DSV_ERR_FORMAT,
                       "exceeds the 100000000-byte limit", __LINE__);
    }
    /* 100 MB is allowed by the limit but not by this 64-byte file. */
    uint64_t l = 100000000;
    for (int k = 0; k < 8; k++) b[k] = (uint8_t)(l >> (8 * k));
    expect_bad_mem("header past end", b, sizeof b, DSV_ERR_FORMAT,
                   "header length 100000000 runs past the end of the file (64 bytes)", __LINE__);
    b[0] = 57;
    for (int k = 1; k < 8; k++) b[k] = 0;
    expect_bad_mem("header past end by one", b, sizeof b, DSV_ERR_FORMAT, "runs past the end", __LINE__);

    size_t n;
    uint8_t *img = make_image("{\"a\":" F32_1 "}", 5 + strlen(F32_1) + 1, 4, &n);
    img[8 + 3] = 0; /* a NUL inside the key */
    expect_bad_mem("nul in header", img, n, DSV_ERR_FORMAT, "header contains a NUL byte (byte 3)", __LINE__);
    free(img);

    const char *path = tmp_path("empty.safetensors");
    test_write_file(path, "", 0);
    EXPECT_BAD_PATH("empty file", path, DSV_ERR_FORMAT, "empty.safetensors: file is too short (0 bytes)");
}

/* Inputs the format allows, however odd, must open. */
TEST(st_accepts_valid_edge_cases) {
    static const struct {
        const char *what, *header;
        size_t n_data;
        int n_tensors;
    } ok[] = {
        {"empty object", "{}", 0, 0},
        {"only metadata", "{\"__metadata__\":{\"format\":\"pt\"}}", 0, 0},
        {"padding", "{\"a\":" F32_1 "}  \n\t\r   ", 4, 1},
        {"unknown fields", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":[{}]}}", 4,
         1},
        {"scalar", "{\"s\":{\"dtype\":\"I32\",\"shape\":[],\"data_offsets\":[0,4]}}", 4, 1},
        {"zero-element at end",
         "{\"a\":" F32_1 ",\"e\":{\"dtype\":\"BF16\",\"shape\":[0,7],\"data_offsets\":[4,4]}}", 4, 2},
        {"zero-element first",
         "{\"e\":{\"dtype\":\"BF16\",\"shape\":[3,0],\"data_offsets\":[0,0]},\"a\":" F32_1 "}", 4, 2},
        {"two empties, same offset",
         "{\"e\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]},"
         "\"f\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]}}",
         0, 2},
        {"out of order offsets",
         "{\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[4,6]},\"a\":" F32_1 "}", 6, 2},
        {"integral float", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1.0],\"data_offsets\":[0,4e0]}}", 4, 1},
        {"unicode name", "{\"\xe5\xb1\x82.\\u00e9\\ud83d\\ude00\":" F32_1 "}", 4, 1},
        {"empty name", "{\"\":" F32_1 "}", 4, 1},
        {"eight dims", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4,
         1},
        {"huge dim times zero",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[0,9007199254740992],\"data_offsets\":[0,0]}}", 0, 1},
        {"every dtype",
         "{\"a\":{\"dtype\":\"C64\",\"shape\":[1],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"F8_E8M0\",\"shape\":[1],\"data_offsets\":[8,9]},"
         "\"c\":{\"dtype\":\"BOOL\",\"shape\":[1],\"data_offsets\":[9,10]},"
         "\"d\":{\"dtype\":\"U64\",\"shape\":[1],\"data_offsets\":[10,18]}}",
         18, 4},
    };
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
        size_t n;
        uint8_t *img = make_image(ok[i].header, strlen(ok[i].header), ok[i].n_data, &n);
        dsv_st *st = NULL;
        int rc = dsv_st_open_memory(&st, img, n, ok[i].what);
        CHECKF(rc == DSV_OK, "%s: %s", ok[i].what, dsv_errmsg());
        if (rc == DSV_OK) {
            CHECKF(dsv_st_count(st) == ok[i].n_tensors, "%s: %d tensors", ok[i].what, dsv_st_count(st));
            check_invariants(st, img, n);
            dsv_st_close(st);
        }
        free(img);
    }
    size_t n;
    const char *h = "{\"\xe5\xb1\x82.\\u00e9\":" F32_1 "}";
    uint8_t *img = make_image(h, strlen(h), 4, &n);
    dsv_st *st;
    REQUIRE(dsv_st_open_memory(&st, img, n, NULL) == DSV_OK);
    CHECK(dsv_st_find(st, "\xe5\xb1\x82.\xc3\xa9") != NULL);
    CHECK_STR(dsv_st_file_path(st, 0), "<memory>");
    dsv_st_close(st);
    free(img);
    CHECK_EQ_INT(dsv_st_open_memory(NULL, "", 0, NULL), DSV_ERR_ARG);
    CHECK_EQ_INT(dsv_st_open_memory(&st, NULL, 8, NULL), DSV_ERR_ARG);
}

TEST(st_io_errors) {
    dsv_st *st;
    CHECK_EQ_INT(dsv_st_open(&st, NULL), DSV_ERR_ARG);
    EXPECT_BAD_PATH("missing file", tmp_path("nope.safetensors"), DSV_ERR_IO,
                    "nope.safetensors: cannot open: No such file");
    EXPECT_BAD_PATH("missing index", tmp_path("nope.index.json"), DSV_ERR_IO, "cannot open");
    EXPECT_BAD_PATH("empty dir", test_tmpdir(), DSV_ERR_IO,
                    "no model.safetensors.index.json, model.safetensors");
    const char *fifo = tmp_path("fifo.safetensors");
    REQUIRE(mkfifo(fifo, 0600) == 0);
    EXPECT_BAD_PATH("fifo", fifo, DSV_ERR_IO, "fifo.safetensors: not a regular file");
    REQUIRE(mkdir(tmp_path("sub"), 0700) == 0);
    REQUIRE(mkdir(tmp_path("sub/model.safetensors"), 0700) == 0);
    EXPECT_BAD_PATH("directory as file", tmp_path("sub"), DSV_ERR_IO,
                    "model.safetensors: not a regular file");
}

/* ---- robustness ---- */

/* Every prefix of a real file must fail cleanly. Each prefix is a buffer of
 * exactly that size, so `make asan` sees any read past it. */
static void truncations(const char *dir) {
    require_fixture(dir);
    char p[1100];
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    size_t size;
    uint8_t *raw = test_read_file(p, &size);
    REQUIRE(raw);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | raw[i];
    size_t head = 8 + (size_t)hlen;
    int opened = 0, tried = 0;
    /* Every length near the start and around the end of the header (the
     * interesting boundaries), a stride elsewhere. */
    for (size_t len = 0; len < size;
         len += len < 256 || (len + 64 > head && len < head + 64) ? 1 : len < head ? 37 : size / 97 + 1) {
        /* Only the header is ever read, so only it needs copying. */
        uint8_t *buf = malloc(len ? len : 1);
        memcpy(buf, raw, DSV_MIN(len, head + 64));
        dsv_st *st = NULL;
        dsv_error_clear();
        int rc = dsv_st_open_memory(&st, buf, len, "t");
        if (rc == DSV_OK) { opened++; dsv_st_close(st); }
        else CHECKF(dsv_errmsg()[0], "empty message at length %zu", len);
        tried++;
        free(buf);
    }
    CHECK_EQ_INT(opened, 0);
    CHECK(tried > 500);

    /* Truncated JSON with a length field that agrees: the parser itself
     * meets the cut (and a header cut only in its padding is valid JSON
     * whose tensors then lie past the file). */
    for (size_t k = 0; k <= hlen; k += k < 512 || k + 64 > hlen ? 1 : 31) {
        uint8_t *buf = malloc(8 + k);
        for (int i = 0; i < 8; i++) buf[i] = (uint8_t)((uint64_t)k >> (8 * i));
        memcpy(buf + 8, raw + 8, k);
        dsv_st *st = NULL;
        int rc = dsv_st_open_memory(&st, buf, 8 + k, "t");
        CHECKF(rc != DSV_OK, "cut JSON at %zu opened", k);
        if (rc == DSV_OK) dsv_st_close(st);
        free(buf);
    }

    /* A few cuts through real files, for the mmap path. */
    size_t cuts[] = {0, 4, 7, 8, 9, head / 2, head - 1, head, head + 1, size / 2, size - 1};
    const char *path = tmp_path("cut.safetensors");
    for (size_t i = 0; i < sizeof cuts / sizeof *cuts; i++) {
        test_write_file(path, raw, cuts[i]);
        dsv_st *st = NULL;
        int rc = dsv_st_open(&st, path);
        CHECKF(rc == DSV_ERR_FORMAT && strstr(dsv_errmsg(), "cut.safetensors"), "cut at %zu: %d %s", cuts[i],
               rc, dsv_errmsg());
        if (rc == DSV_OK) dsv_st_close(st);
    }
    free(raw);
}

TEST(st_truncated_conformance_bf16_never_opens) { truncations(bf16_dir()); }
TEST(st_truncated_conformance_fp8_never_opens) { truncations(fp8_dir()); }

/* 2000 seeded random mutations of a small valid file: each must open (and
 * then keep every promise) or fail with a message; none may crash. */
TEST(st_mutation_fuzz) {
    size_t n0;
    uint8_t *orig = small_valid_file(&n0);
    static const char interesting[] = "{}[]\",:0123456789-.eE \\u\x80\xff";
    rng_state = 0x9e3779b97f4a7c15ull;
    int opened = 0, failed = 0;
    for (int iter = 0; iter < 2000; iter++) {
        size_t cap = n0 + 64, n = n0;
        uint8_t *m = malloc(cap);
        memcpy(m, orig, n0);
        int n_mut = 1 + (int)(rng() % 4);
        for (int k = 0; k < n_mut && n > 0; k++) {
            size_t at = rng() % n; /* (DSV_MIN evaluates twice: no rng() in it) */
            switch (rng() % 7) {
            case 0: m[at] ^= (uint8_t)(1u << (rng() % 8)); break;
            case 1: m[at] = (uint8_t)rng(); break;
            case 2: m[at] = (uint8_t)interesting[rng() % (sizeof interesting - 1)]; break;
            case 3: { /* a nearby or wild header length */
                uint64_t l = rng() % 2 ? (uint64_t)(rng() % (n + 16)) : (uint64_t)rng() << 32 | rng();
                for (int i = 0; i < 8; i++) m[i] = (uint8_t)(l >> (8 * i));
                break;
            }
            case 4: { /* delete a run */
                size_t r = 1 + rng() % 8, len = DSV_MIN(n - at, r);
                memmove(m + at, m + at + len, n - at - len);
                n -= len;
                break;
            }
            case 5: { /* insert a run */
                size_t r = 1 + rng() % 8, len = DSV_MIN(cap - n, r);
                memmove(m + at + len, m + at, n - at);
                for (size_t i = 0; i < len; i++)
                    m[at + i] = (uint8_t)interesting[rng() % (sizeof interesting - 1)];
                n += len;
                break;
            }
            default: /* cut the file */
                n = at;
                break;
            }
        }
        /* Exactly n bytes, so ASAN can see a read past the end. */
        uint8_t *buf = malloc(n ? n : 1);
        memcpy(buf, m, n);
        free(m);
        dsv_st *st = NULL;
        dsv_error_clear();
        int rc = dsv_st_open_memory(&st, buf, n, "mutant");
        if (rc == DSV_OK) {
            opened++;
            check_invariants(st, buf, n);
            (void)dsv_st_metadata(st, 0, "format");
            dsv_st_close(st);
        } else {
            failed++;
            CHECKF(rc < 0 && dsv_errmsg()[0], "iteration %d: status %d, message \"%s\"", iter, rc,
                   dsv_errmsg());
        }
        free(buf);
    }
    /* Both outcomes occur, or the loop is not exploring anything. */
    CHECKF(opened > 20 && failed > 1000, "opened %d, failed %d", opened, failed);
    free(orig);
}
