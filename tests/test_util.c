/* test_util.c: the error-message plumbing and the whole-file reader. */
#include "test.h"
#include "base/util.h"

TEST(error_message_and_prefix) {
    CHECK_EQ_INT(dsv_error(DSV_ERR_MODEL, "tensor %s missing", "x.weight"), DSV_ERR_MODEL);
    CHECK_STR(dsv_errmsg(), "tensor x.weight missing");
    dsv_error_prefix(DSV_ERR_MODEL, "%s", "model.safetensors");
    CHECK_STR(dsv_errmsg(), "model.safetensors: tensor x.weight missing");
    CHECK_STR(dsv_status_str(DSV_ERR_IO), "i/o error");
}

/* Writes n bytes of a pattern (with NULs in it) to path. */
static int write_pattern(const char *path, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    for (size_t i = 0; i < n; i++) fputc((int)(i * 7 % 251), f);
    return fclose(f);
}

TEST(read_file_whole_limits_and_errors) {
    char path[1200];
    snprintf(path, sizeof path, "%s/read_file.bin", test_tmpdir());
    /* Past the reader's first 64 KiB buffer, so it has to grow. */
    const size_t n = (1 << 17) + 3;
    REQUIRE(write_pattern(path, n) == 0);
    char *buf = NULL;
    size_t len = 0;
    CHECK_EQ_INT(dsv_read_file(path, 0, &buf, &len), DSV_OK);
    REQUIRE(buf != NULL);
    CHECK(len == n);
    int same = 1;
    for (size_t i = 0; i < n && same; i++) same = (unsigned char)buf[i] == i * 7 % 251;
    CHECK(same);
    CHECK(buf[n] == 0);
    free(buf);
    /* Exactly at the limit is fine, one byte past it is refused. */
    buf = NULL;
    CHECK_EQ_INT(dsv_read_file(path, n, &buf, &len), DSV_OK);
    free(buf);
    buf = NULL;
    CHECK_EQ_INT(dsv_read_file(path, n - 1, &buf, &len), DSV_ERR_FORMAT);
    CHECK(buf == NULL);
    CHECK(strstr(dsv_errmsg(), path) && strstr(dsv_errmsg(), "larger than"));
    /* A missing file names the path; an empty one reads as "". */
    snprintf(path, sizeof path, "%s/read_file.missing", test_tmpdir());
    CHECK_EQ_INT(dsv_read_file(path, 0, &buf, &len), DSV_ERR_IO);
    CHECK(strstr(dsv_errmsg(), path) && strstr(dsv_errmsg(), "cannot open"));
    snprintf(path, sizeof path, "%s/read_file.empty", test_tmpdir());
    REQUIRE(write_pattern(path, 0) == 0);
    len = 1;
    CHECK_EQ_INT(dsv_read_file(path, 0, &buf, &len), DSV_OK);
    CHECK(len == 0 && buf && buf[0] == 0);
    free(buf);
    /* A directory opens but cannot be read. */
    CHECK_EQ_INT(dsv_read_file(test_tmpdir(), 0, &buf, &len), DSV_ERR_IO);
    CHECK(strstr(dsv_errmsg(), "read error"));
}
