/* conformance.c: the conformance rule of tests/data/conformance/README.md.
 *
 * Teacher forcing: per row, a prefill of its step-0 tokens at position 0, then
 * one call per later step with the recorded token. Layer 0 is judged tightly
 * (attention output, top-k sets, weights_proj output), the first MoE router
 * closely, the logits statistically (the models are chaotic: see README). */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "conformance.h"
#include "dsv32.h"
#include "kernels/ops.h"
#include "test.h"

#define MAX_B 4

typedef struct capture {
    int first_moe, topk, dim, hi, nact;
    float *attn;      /* [T][dim] of the current call */
    int32_t *sel;     /* [T][topk] */
    float *iw;        /* [T][hi] */
    float *gw;        /* [T][nact] */
    int32_t *gi;
    int got;
} capture;

static void on_dump(const char *name, int layer, int dtype, int rows, int cols, const void *data, void *user) {
    capture *c = user;
    size_t n = (size_t)rows * cols * 4;
    (void)dtype;
    if (layer == 0 && !strcmp(name, "attn_out")) { memcpy(c->attn, data, n); c->got |= 1; }
    else if (layer == 0 && !strcmp(name, "topk")) { memcpy(c->sel, data, n); c->got |= 2; }
    else if (layer == 0 && !strcmp(name, "index_weights")) { memcpy(c->iw, data, n); c->got |= 4; }
    else if (layer == c->first_moe && !strcmp(name, "moe_gate_weights")) { memcpy(c->gw, data, n); c->got |= 8; }
    else if (layer == c->first_moe && !strcmp(name, "moe_gate_indices")) { memcpy(c->gi, data, n); c->got |= 16; }
}

static void *load_bin(const char *config, const char *rel, size_t want) {
    char path[1024];
    snprintf(path, sizeof path, "conformance/%s/%s", config, rel);
    size_t len = 0;
    void *d = test_read_file(test_shared(path), &len);
    if (d && len != want) { free(d); d = NULL; }
    return d;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}
static double median(double *v, int n) {
    if (n == 0) return 0;
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static int contains(const int32_t *v, int n, int x) { for (int i = 0; i < n; i++) if (v[i] == x) return 1; return 0; }

int conf_run(const char *config, const char *case_name, int n_threads, conf_metrics *out, int max_rows) {
    return conf_run_model(config, NULL, -1, case_name, n_threads, out, max_rows);
}

int conf_run_model(const char *config, const char *model, int act_quant, const char *case_name, int n_threads,
                   conf_metrics *out, int max_rows) {
    char path[1024];
    snprintf(path, sizeof path, "conformance/%s/manifest.json", config);
    char *text = test_read_file(test_shared(path), NULL);
    if (!text) { fprintf(stderr, "    cannot read %s\n", test_shared(path)); return -1; }
    cJSON *man = cJSON_Parse(text);
    free(text);
    const cJSON *cs = cJSON_GetObjectItem(cJSON_GetObjectItem(man, "cases"), case_name);
    const cJSON *steps = cJSON_GetObjectItem(cs, "steps");
    const int B = cJSON_GetObjectItem(cs, "batch")->valueint, n_steps = cJSON_GetArraySize(steps);
    if (B > MAX_B || B > max_rows) { cJSON_Delete(man); return -1; }

    snprintf(path, sizeof path, "conformance/%s/hf", config);
    dsv_model *m;
    dsv_model_params mp = dsv_model_default_params();
    mp.act_quant = act_quant;
    if (dsv_model_open(&m, model ? model : test_shared(path), &mp)) {
        fprintf(stderr, "    %s\n", dsv_errmsg());
        cJSON_Delete(man);
        return -1;
    }
    const dsv_config *c = dsv_model_config(m);
    const int V = c->vocab_size, D = c->dim, Hi = c->index_n_heads, K = c->n_activated_experts;
    const int TK = c->index_topk;
    int total_len = 0, max_call = 0;
    const cJSON *st;
    cJSON_ArrayForEach(st, steps) {
        int s = cJSON_GetObjectItem(st, "seqlen")->valueint;
        total_len += s;
        if (s * B > max_call) max_call = s * B;
    }
    dsv_context_params cp = dsv_context_default_params();
    cp.n_ctx = total_len;
    cp.n_seq = B;
    cp.n_batch = max_call;
    cp.n_threads = n_threads;
    dsv_context *ctx;
    if (dsv_context_open(&ctx, m, &cp)) { fprintf(stderr, "    %s\n", dsv_errmsg()); return -1; }
    capture cap = {.first_moe = c->n_dense_layers, .topk = TK, .dim = D, .hi = Hi, .nact = K};
    cap.attn = malloc((size_t)max_call * D * 4);
    cap.sel = malloc((size_t)max_call * TK * 4);
    cap.iw = malloc((size_t)max_call * Hi * 4);
    cap.gw = malloc((size_t)max_call * K * 4);
    cap.gi = malloc((size_t)max_call * K * 4);
    dsv_context_set_dump(ctx, on_dump, &cap);

    float *logits = malloc((size_t)B * V * 4);
    snprintf(path, sizeof path, "%s/logits.bin", case_name);
    float *ref_logits = load_bin(config, path, (size_t)n_steps * B * V * 4);
    REQUIRE(ref_logits && logits && cap.attn && cap.sel && cap.iw && cap.gw && cap.gi);

    /* Per-row accumulators. */
    double *l0a[MAX_B], *gw[MAX_B], *l1[MAX_B];
    long kd_n[MAX_B] = {0}, kd_bad[MAX_B] = {0}, gw_n[MAX_B] = {0}, gw_bad[MAX_B] = {0};
    int n_l0a[MAX_B] = {0}, n_gw[MAX_B] = {0}, arg_n[MAX_B] = {0}, arg_ok[MAX_B] = {0};
    double pre_l0a[MAX_B], dr[MAX_B], iw[MAX_B];
    for (int b = 0; b < B; b++) {
        l0a[b] = calloc((size_t)n_steps, sizeof(double));
        gw[b] = calloc((size_t)total_len, sizeof(double));
        l1[b] = calloc((size_t)n_steps, sizeof(double));
        dr[b] = 1.0;
        iw[b] = 0;
        pre_l0a[b] = 0;
    }

    int si = 0;
    cJSON_ArrayForEach(st, steps) {
        const int S = cJSON_GetObjectItem(st, "seqlen")->valueint, P = cJSON_GetObjectItem(st, "start_pos")->valueint;
        const cJSON *in = cJSON_GetObjectItem(st, "input_tokens"), *files = cJSON_GetObjectItem(st, "files");
        const cJSON *gaps = cJSON_GetObjectItem(st, "top1_minus_top2");
        int32_t toks[MAX_B][512];
        dsv_batch_entry en[MAX_B];
        REQUIRE(S <= 512);
        for (int b = 0; b < B; b++) {
            const cJSON *row = cJSON_GetArrayItem(in, b);
            for (int j = 0; j < S; j++) toks[b][j] = cJSON_GetArrayItem(row, j)->valueint;
            en[b] = (dsv_batch_entry){.seq = b, .n_tokens = S, .tokens = toks[b], .logits = DSV_LOGITS_LAST};
        }
        cap.got = 0;
        REQUIREF(dsv_forward(ctx, en, B, logits) == DSV_OK, "%s", dsv_errmsg());
        REQUIREF(cap.got == 31, "missing dumps (%d)", cap.got);

        int ref_w = P + S < TK ? P + S : TK; /* the reference's top-k width */
        float *g_attn = load_bin(config, cJSON_GetObjectItem(files, "l0_attn_out")->valuestring, (size_t)B * S * D * 4);
        int32_t *g_sel = load_bin(config, cJSON_GetObjectItem(files, "l0_topk")->valuestring, (size_t)B * S * ref_w * 4);
        float *g_iw = load_bin(config, cJSON_GetObjectItem(files, "l0_index_weights")->valuestring, (size_t)B * S * Hi * 4);
        float *g_gw = load_bin(config, cJSON_GetObjectItem(files, "moe_gate_weights")->valuestring, (size_t)B * S * K * 4);
        int32_t *g_gi = load_bin(config, cJSON_GetObjectItem(files, "moe_gate_indices")->valuestring, (size_t)B * S * K * 4);
        REQUIRE(g_attn && g_sel && g_iw && g_gw && g_gi);

        for (int b = 0; b < B; b++) {
            /* Engine rows of entry b are b*S .. b*S+S-1; the reference's are [b][r]. */
            double num = 0, den = 0, iwn = 0, iwd = 0;
            for (int r = 0; r < S; r++) {
                const int32_t *es = cap.sel + (size_t)(b * S + r) * TK, *gs = g_sel + ((size_t)b * S + r) * ref_w;
                int vis = P + r, ne = 0, ng = 0;
                int32_t ev[4096], gv[4096];
                for (int j = 0; j < TK && j < 4096; j++) if (es[j] >= 0 && es[j] <= vis) ev[ne++] = es[j];
                for (int j = 0; j < ref_w && j < 4096; j++) if (gs[j] >= 0 && gs[j] <= vis) gv[ng++] = gs[j];
                int same = ne == ng;
                for (int j = 0; same && j < ng; j++) same = contains(ev, ne, gv[j]);
                kd_n[b]++;
                if (!same) {
                    kd_bad[b]++;
                    for (int j = 0; j < ng; j++)
                        if (!contains(ev, ne, gv[j])) { double f = (double)j / ng; if (f < dr[b]) dr[b] = f; break; }
                } else {
                    const float *a = cap.attn + (size_t)(b * S + r) * D, *g = g_attn + ((size_t)b * S + r) * D;
                    for (int d = 0; d < D; d++) { num += pow((double)a[d] - g[d], 2); den += (double)g[d] * g[d]; }
                }
                for (int h = 0; h < Hi; h++) {
                    double a = cap.iw[(size_t)(b * S + r) * Hi + h], g = g_iw[((size_t)b * S + r) * Hi + h];
                    iwn += (a - g) * (a - g);
                    iwd += g * g;
                }
                /* Router: compare weights by expert index when the sets agree. */
                const int32_t *ei = cap.gi + (size_t)(b * S + r) * K, *gi = g_gi + ((size_t)b * S + r) * K;
                const float *ew = cap.gw + (size_t)(b * S + r) * K, *gwv = g_gw + ((size_t)b * S + r) * K;
                int eq = 1;
                for (int k = 0; k < K; k++) eq &= contains(ei, K, gi[k]);
                gw_n[b]++;
                if (!eq) { gw_bad[b]++; continue; }
                double wn = 0, wd = 0;
                for (int k = 0; k < K; k++)
                    for (int k2 = 0; k2 < K; k2++)
                        if (ei[k2] == gi[k]) { wn += pow((double)ew[k2] - gwv[k], 2); wd += (double)gwv[k] * gwv[k]; }
                gw[b][n_gw[b]++] = sqrt(wn / wd);
            }
            double e = den > 0 ? sqrt(num / den) : NAN;
            if (si == 0) pre_l0a[b] = e;
            else if (den > 0) l0a[b][n_l0a[b]++] = e;
            double iwe = sqrt(iwn / iwd);
            if (iwe > iw[b]) iw[b] = iwe;
            /* Logits. */
            const float *lg = logits + (size_t)b * V, *rl = ref_logits + ((size_t)si * B + b) * V;
            double sum = 0;
            int am = 0, rm = 0;
            for (int v = 0; v < V; v++) {
                sum += fabs((double)lg[v] - rl[v]);
                if (lg[v] > lg[am]) am = v;
                if (rl[v] > rl[rm]) rm = v;
            }
            l1[b][si] = sum / V;
            if (cJSON_GetArrayItem(gaps, b)->valuedouble >= 1.0) { arg_n[b]++; arg_ok[b] += am == rm; }
        }
        free(g_attn); free(g_sel); free(g_iw); free(g_gw); free(g_gi);
        si++;
    }
    for (int b = 0; b < B; b++) {
        conf_metrics *o = &out[b];
        double dec = median(l0a[b], n_l0a[b]);
        o->l0a = pre_l0a[b] > dec ? pre_l0a[b] : dec;
        o->kd = (double)kd_bad[b] / kd_n[b];
        o->dr = dr[b];
        o->iw = iw[b];
        o->gw = median(gw[b], n_gw[b]);
        o->gwset = (double)gw_bad[b] / gw_n[b];
        o->med = median(l1[b], n_steps);
        o->arg_steps = arg_n[b];
        o->arg = arg_n[b] ? (double)arg_ok[b] / arg_n[b] : NAN;
        free(l0a[b]); free(gw[b]); free(l1[b]);
    }
    free(cap.attn); free(cap.sel); free(cap.iw); free(cap.gw); free(cap.gi);
    free(logits); free(ref_logits);
    dsv_context_close(ctx);
    dsv_model_close(m);
    cJSON_Delete(man);
    return B;
}

conf_limits conf_limits_for(const char *config) {
    if (strstr(config, "fp8"))
        return (conf_limits){.l0a = 0.045, .kd = 0.55, .dr = 0.6, .iw = 1e-4, .gw = 0.016, .gwset = 0.5, .med = 1.2, .arg = 0.5};
    return (conf_limits){.l0a = 0.026, .kd = 0.55, .dr = 0.6, .iw = 1e-4, .gw = 0.014, .gwset = 0.5, .med = 0.8, .arg = 0.5};
}

int conf_judge(const char *label, const conf_metrics *m, const conf_limits *lim) {
    int ok = 1;
    printf("    %-28s L0A %.4f  KD %.3f  DR %.2f  IW %.1e  GW %.4f  GWSET %.3f  MED %.3f  ARG %s",
           label, m->l0a, m->kd, m->dr, m->iw, m->gw, m->gwset, m->med, m->arg_steps >= 3 ? "" : "n/a");
    if (m->arg_steps >= 3) printf("%.2f", m->arg);
    printf(" (%d steps)\n", m->arg_steps);
#define LE(x) if (!(m->x <= lim->x)) { test_fail(__FILE__, __LINE__, "%s: " #x " %.4g > %.4g", label, m->x, lim->x); ok = 0; }
#define GE(x) if (!(m->x >= lim->x)) { test_fail(__FILE__, __LINE__, "%s: " #x " %.4g < %.4g", label, m->x, lim->x); ok = 0; }
    LE(l0a) LE(kd) GE(dr) LE(iw) LE(gw) LE(gwset) LE(med)
    if (m->arg_steps >= 3) GE(arg)
#undef LE
#undef GE
    return ok;
}
