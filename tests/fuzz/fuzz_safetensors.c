/* fuzz_safetensors.c: libFuzzer target for the safetensors reader (make
 * fuzz; by hand: build-fuzz/fuzz_safetensors -max_len=4096 CORPUS
 * tests/fuzz/seeds/safetensors).
 *
 * Input layout: byte 0 picks the surface, the rest is the payload.
 *   even: a safetensors image, opened in memory (dsv_st_open_memory) from a
 *         buffer of exactly its size, so any read past it is caught;
 *   odd:  a model.safetensors.index.json, written next to two small valid
 *         shards (a.safetensors: x, y; b.safetensors: z) and opened as a
 *         directory.
 * Whatever opens must keep the reader's promises, checked below; anything
 * else must fail with a status and a message. */
#include <unistd.h>

#include "base/util.h"
#include "format/safetensors.h"
#include "fuzz.h"

static char dir[64];

#define check fuzz_check

/* Every tensor lies in its file, is sized by its shape and is found by name;
 * touching its first and last byte lets ASAN check the bounds. */
static void check_opened(const dsv_st *st) {
    for (int i = 0; i < dsv_st_count(st); i++) {
        const dsv_st_tensor *t = dsv_st_at(st, i);
        check(t && t->name, "dsv_st_at");
        check(dsv_st_find(st, t->name) == t, "find(name) returns the tensor");
        check(dsv_st_file_path(st, t->file) != NULL, "tensor's file exists");
        uint64_t el = 1;
        for (int k = 0; k < t->n_dims; k++) el *= (uint64_t)t->shape[k];
        check(el * dsv_dtype_size(t->dtype) == t->nbytes, "nbytes == product(shape) * dtype size");
        volatile unsigned char sink = 0;
        if (t->nbytes)
            sink ^= ((const unsigned char *)t->data)[0] ^ ((const unsigned char *)t->data)[t->nbytes - 1];
        (void)sink;
    }
    for (int f = 0; f < dsv_st_file_count(st); f++) (void)dsv_st_metadata(st, f, "format");
}

static void remove_dir(void) {
    const char *names[] = {"a.safetensors", "b.safetensors", "model.safetensors.index.json"};
    char p[128];
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, names[i]);
        unlink(p);
    }
    rmdir(dir);
}

static void write_shard(const char *name, const char *const *tensors, int n) {
    static const unsigned char bytes[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    dsv_st_writer *w;
    char p[128];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    check(dsv_st_writer_init(&w) == DSV_OK, "writer init");
    for (int i = 0; i < n; i++)
        check(dsv_st_writer_add(w, tensors[i], DSV_DT_U8, 1, (int64_t[]){i + 1}, bytes) == DSV_OK,
              "writer add");
    check(dsv_st_writer_write(w, p) == DSV_OK, "writing a shard");
    dsv_st_writer_free(w);
}

/* The shards for index inputs, made once per process. */
static void make_shards(void) {
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/dsv32-fuzz-XXXXXX", tmp && strlen(tmp) < 32 ? tmp : "/tmp");
    check(mkdtemp(dir) != NULL, "mkdtemp");
    atexit(remove_dir);
    const char *a[] = {"x", "y"}, *b[] = {"z"};
    write_shard("a.safetensors", a, 2);
    write_shard("b.safetensors", b, 1);
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
    if (size < 1) return 0;
    dsv_st *st = NULL;
    int rc;
    if (data[0] % 2 == 0) {
        /* A private copy of exactly the payload's size: libFuzzer's buffer
         * may sit inside a larger allocation. */
        size_t n = size - 1;
        unsigned char *buf = malloc(n ? n : 1);
        if (!buf) return 0;
        memcpy(buf, data + 1, n);
        rc = dsv_st_open_memory(&st, buf, n, "fuzz");
        if (rc == DSV_OK) { check_opened(st); dsv_st_close(st); }
        free(buf);
    } else {
        if (!dir[0]) make_shards();
        char p[128];
        snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
        FILE *f = fopen(p, "wb");
        check(f && fwrite(data + 1, 1, size - 1, f) == size - 1 && fclose(f) == 0, "writing the index");
        rc = dsv_st_open(&st, dir);
        if (rc == DSV_OK) { check_opened(st); dsv_st_close(st); }
    }
    fuzz_check_status(rc);
    return 0;
}
