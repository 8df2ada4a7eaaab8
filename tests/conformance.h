/* conformance.h: runs a case of tests/data/conformance through the library and
 * judges it by the rule of its README (shared by the conformance tests and the
 * kernel-level runs at every ISA). */
#ifndef DSV_TEST_CONFORMANCE_H
#define DSV_TEST_CONFORMANCE_H

typedef struct conf_metrics {
    double l0a, kd, dr, iw, gw, gwset, med, arg;
    int arg_steps;
} conf_metrics;

typedef struct conf_limits {
    double l0a, kd, dr, iw, gw, gwset, med, arg;
} conf_limits;

/* Runs config/case (every row as its own sequence, all rows in one batch),
 * fills one conf_metrics per row (up to max_rows) and returns the row count,
 * or -1 with a message printed. n_threads: 0 for the default. */
int conf_run(const char *config, const char *case_name, int n_threads, conf_metrics *rows, int max_rows);
/* The same with another model of that config (a GGUF file written from its
 * checkpoint, say) opened with dsv_model_params.act_quant = act_quant. */
int conf_run_model(const char *config, const char *model, int act_quant, const char *case_name, int n_threads,
                   conf_metrics *rows, int max_rows);
conf_limits conf_limits_for(const char *config);
/* Checks every metric against the limits, reporting failures; returns 1 if all pass. */
int conf_judge(const char *label, const conf_metrics *m, const conf_limits *lim);

#endif
