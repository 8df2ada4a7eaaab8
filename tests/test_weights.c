/* test_weights.c: dsv_model_weight_types and dsv_model_touch (model/
 * weights.c) on the embedded model (models/tiny, fp8) and on GGUF copies of
 * it written by `dsv32 quantize`: the labels name what the file holds, the
 * mix adds up, and touching maps every weight page (page faults counted by
 * the kernel, not timed); `dsv32 bench` reports both. */
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "dsv32.h"
#include "test.h"

static long minor_faults(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_minflt;
}

/* The percentages of a mix ("A 58%, B 42%") in order; returns how many. */
static int mix_shares(const char *mix, int *pct, int cap) {
    int n = 0;
    for (const char *p = mix; n < cap && (p = strchr(p, ' ')); p++) {
        char *end;
        long v = strtol(p + 1, &end, 10);
        if (end > p + 1 && *end == '%') pct[n++] = (int)v;
    }
    return n;
}

TEST(weights_types_and_touch) {
    dsv_model *m = NULL;
    REQUIRE(dsv_model_open(&m, "models/tiny", NULL) == DSV_OK);
    char label[64], mix[256];
    dsv_model_weight_types(m, label, sizeof label, mix, sizeof mix);
    CHECK_STR(label, "fp8");
    /* fp8 matrices (with their scales) and the bf16/fp32 ones, largest first. */
    CHECKF(!strncmp(mix, "F8_E4M3 ", 8) && strstr(mix, "BF16 "), "%s", mix);
    int pct[16], n = mix_shares(mix, pct, 16), sum = 0;
    for (int i = 0; i < n; i++) {
        sum += pct[i];
        if (i) CHECKF(pct[i] <= pct[i - 1], "%s", mix);
    }
    CHECKF(n >= 2 && sum >= 100 - n && sum <= 100 + n, "%s", mix);
    /* Cut to the capacity, still terminated. */
    char small[8];
    dsv_model_weight_types(m, NULL, 0, small, sizeof small);
    CHECK(strlen(small) == 7);

    /* The first touch maps the pages (a fault per page or per fault-around
     * group); the second finds them mapped. */
    long f0 = minor_faults();
    uint64_t bytes = dsv_model_touch(m, NULL, NULL);
    long f1 = minor_faults();
    uint64_t again = dsv_model_touch(m, NULL, NULL);
    long f2 = minor_faults();
    CHECKF(bytes >= dsv_model_weight_bytes(m) && again == bytes, "%llu %llu %llu", (unsigned long long)bytes,
           (unsigned long long)again, (unsigned long long)dsv_model_weight_bytes(m));
    CHECKF(f1 - f0 > 20 && f2 - f1 < (f1 - f0) / 4, "faults: first touch %ld, second %ld", f1 - f0, f2 - f1);
    dsv_model_close(m);
}

/* Progress reaches the total, never passes it, and comes at least once. */
static void on_progress(uint64_t done, uint64_t total, void *user) {
    uint64_t *s = user;
    if (done > total) s[2] = 1;
    s[0] = done;
    s[1] = total;
    s[3]++;
}

TEST(weights_gguf_label) {
    char path[1024], cmd[2048], *out = NULL;
    snprintf(path, sizeof path, "%s/q8.gguf", test_tmpdir());
    snprintf(cmd, sizeof cmd, "%s quantize -m models/tiny -o %s --type Q8_0 2>&1", test_bin(), path);
    REQUIRE(test_run(cmd, &out) == 0);
    free(out);
    dsv_model *m = NULL;
    REQUIRE(dsv_model_open(&m, path, NULL) == DSV_OK);
    char label[64], mix[256];
    dsv_model_weight_types(m, label, sizeof label, mix, sizeof mix);
    /* general.file_type as quantize wrote it; Q8_0 holds most bytes (the
     * indexer projections stay BF16, the router F32). */
    CHECK_STR(label, "gguf Q8_0");
    CHECKF(!strncmp(mix, "Q8_0 ", 5) && strstr(mix, "F32 "), "%s", mix);
    uint64_t s[4] = {0, 0, 0, 0};
    uint64_t bytes = dsv_model_touch(m, on_progress, s);
    CHECKF(s[3] >= 1 && !s[2] && s[0] == bytes && s[1] == bytes, "calls %llu, last %llu of %llu, covered %llu",
           (unsigned long long)s[3], (unsigned long long)s[0], (unsigned long long)s[1], (unsigned long long)bytes);
    dsv_model_close(m);

    /* dsv32 bench prints the label and the mix, in the table and in JSON. */
    snprintf(cmd, sizeof cmd, "%s bench -m %s --depth 0 --prefill 4 --decode 2 --bw-mib 16 -t 1 --json 2>&1", test_bin(), path);
    REQUIRE(test_run(cmd, &out) == 0 && out);
    CHECKF(strstr(out, "\"dtype\":\"gguf Q8_0\",\"weight_types\":\"Q8_0 ") && strstr(out, "(gguf Q8_0: Q8_0 ") &&
           strstr(out, "read into memory") && !strstr(out, "\"dtype\":\"bf16\""), "%s", out);
    free(out);
    snprintf(cmd, sizeof cmd, "%s bench -m %s --depth 0 --prefill 0 --decode 1 --bw-mib 16 -t 1 --no-touch 2>&1", test_bin(),
             path);
    REQUIRE(test_run(cmd, &out) == 0 && out);
    CHECKF(!strstr(out, "read into memory") && strstr(out, "decode "), "%s", out);
    free(out);
}
