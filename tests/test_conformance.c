/* test_conformance.c: every case of tests/data/conformance judged by its
 * README's rule: both configs; b1; b2 with each row its own sequence (both in
 * one batch); long; each at every kernel level (one runner entry per level;
 * those the CPU lacks skip). */
#include <stdio.h>

#include "conformance.h"
#include "test.h"

static const char *cur_config, *cur_case;

static void run_level(const char *level) {
    const char *config = cur_config, *case_name = cur_case;
    conf_metrics rows[4];
    int n = conf_run(config, case_name, 2, rows, 4);
    REQUIREF(n > 0, "%s/%s did not run", config, case_name);
    conf_limits lim = conf_limits_for(config);
    for (int r = 0; r < n; r++) {
        char label[128];
        snprintf(label, sizeof label, "%s %s %s row %d", level, config, case_name, r);
        conf_judge(label, &rows[r], &lim);
    }
}

static void run_case(const char *config, const char *case_name) {
    cur_config = config;
    cur_case = case_name;
    run_level(test_level());
}

TEST_LEVELS(conformance_fp8_b1) { run_case("public_sparse_fp8", "b1"); }
TEST_LEVELS(conformance_fp8_b2) { run_case("public_sparse_fp8", "b2"); }
TEST_LEVELS(conformance_fp8_long) { run_case("public_sparse_fp8", "long"); }
TEST_LEVELS(conformance_bf16_b1) { run_case("public_sparse_bf16", "b1"); }
TEST_LEVELS(conformance_bf16_b2) { run_case("public_sparse_bf16", "b2"); }
TEST_LEVELS(conformance_bf16_long) { run_case("public_sparse_bf16", "long"); }
