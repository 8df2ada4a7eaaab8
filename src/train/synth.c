/* synth.c: random-weight model directories (see synth.h).
 *
 * Three steps. prepare() reads and checks the config, decides the dtype and
 * edits the JSON to match. It then lists every tensor as a "job" (a linear's
 * weight and block scales form one job, since the scales are computed while
 * the weight streams out) and cuts the list into shards by size. write_shard()
 * declares a shard's tensors, then generates and streams them band by band.
 *
 * A tensor's values come from its own random stream (rng.h), drawn in
 * row-major order in bands of 128 rows, whatever its dtype: the fp8 model of
 * a seed is the bf16 model of that seed, quantized. */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fnmatch.h>
#include <math.h>
#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "base/numeric.h"
#include "base/rng.h"
#include "format/safetensors.h"
#include "dsv32_synth.h"
#include "base/util.h"

enum job_kind {
    J_LINEAR,  /* "<name>.weight" fp8 (+ "<name>.weight_scale_inv") or bf16, std 1/sqrt(cols) */
    J_MATRIX,  /* a bf16 matrix that is never fp8 (embedding, head, router, weights_proj) */
    J_NORM,    /* a bf16 norm weight, 1 + amp * u */
    J_BIAS16,  /* a bf16 bias (the indexer LayerNorm's) */
    J_BIAS32,  /* an f32 bias (e_score_correction_bias) */
};

typedef struct job {
    char name[176];
    int kind;
    int64_t rows, cols;  /* matrices [rows, cols]; vectors [rows] */
    float amp;           /* half-width of the uniform values */
} job;

typedef struct plan {
    dsv_config c;
    int fp8;
    char *config_json;   /* the config.json to write */
    job *jobs;
    int n_jobs, cap;
    int *first;          /* [n_files + 1]: first job of each file */
    int n_files;
    int64_t max_cols, max_vec, max_scales;
    dsv_synth_info info;
} plan;

dsv_synth_params dsv_synth_default_params(void) {
    dsv_synth_params p = {0};
    p.dtype = DSV_SYNTH_AS_CONFIG;
    p.shard_bytes = DSV_SYNTH_SHARD_BYTES;
    return p;
}

static void plan_free(plan *pl) {
    free(pl->config_json);
    free(pl->jobs);
    free(pl->first);
}

static int blocks(int64_t n) { return (int)((n + DSV_QBLOCK - 1) / DSV_QBLOCK); }

static uint64_t job_bytes(const plan *pl, const job *j) {
    switch (j->kind) {
    case J_LINEAR:
        return pl->fp8 ? (uint64_t)(j->rows * j->cols) + 4ull * (uint64_t)blocks(j->rows) * (uint64_t)blocks(j->cols)
                       : 2ull * (uint64_t)(j->rows * j->cols);
    case J_MATRIX: return 2ull * (uint64_t)(j->rows * j->cols);
    case J_BIAS32: return 4ull * (uint64_t)j->rows;
    default: return 2ull * (uint64_t)j->rows;
    }
}

static int add(plan *pl, int kind, int64_t rows, int64_t cols, float amp, const char *fmt, ...)
    DSV_PRINTF(6, 7);
static int add(plan *pl, int kind, int64_t rows, int64_t cols, float amp, const char *fmt, ...) {
    if (pl->n_jobs == pl->cap) {
        int cap = pl->cap ? pl->cap * 2 : 256;
        job *j = realloc(pl->jobs, (size_t)cap * sizeof *j);
        if (!j) return dsv_error(DSV_ERR_NOMEM, "synth: out of memory");
        pl->jobs = j;
        pl->cap = cap;
    }
    job *j = &pl->jobs[pl->n_jobs++];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(j->name, sizeof j->name, fmt, ap);
    va_end(ap);
    j->kind = kind;
    j->rows = rows;
    j->cols = cols;
    j->amp = amp;
    if (cols > pl->max_cols) pl->max_cols = cols;
    if (cols == 0 && rows > pl->max_vec) pl->max_vec = rows;
    if (kind == J_LINEAR && (int64_t)blocks(rows) * blocks(cols) > pl->max_scales)
        pl->max_scales = (int64_t)blocks(rows) * blocks(cols);
    pl->info.n_params += (uint64_t)(rows * (cols ? cols : 1));
    pl->info.n_tensors += kind == J_LINEAR && pl->fp8 ? 2 : 1;
    return DSV_OK;
}

/* Uniform on [-a, a] has std a/sqrt(3): a = sqrt(3/fan_in) gives std 1/sqrt(fan_in). */
static float fan_in_amp(int64_t fan_in) { return (float)sqrt(3.0 / (double)fan_in); }

#define NORM_AMP 0.1f   /* norm weights in [0.9, 1.1] */
#define BIAS_AMP 0.05f

static int add_linear(plan *pl, const char *prefix, int64_t n_out, int64_t n_in) {
    return add(pl, J_LINEAR, n_out, n_in, fan_in_amp(n_in), "%s", prefix);
}

static int add_mlp(plan *pl, const char *prefix, int64_t dim, int64_t inter) {
    char p[160];
    int st;
    snprintf(p, sizeof p, "%s.gate_proj", prefix);
    if ((st = add_linear(pl, p, inter, dim))) return st;
    snprintf(p, sizeof p, "%s.down_proj", prefix);
    if ((st = add_linear(pl, p, dim, inter))) return st;
    snprintf(p, sizeof p, "%s.up_proj", prefix);
    return add_linear(pl, p, inter, dim);
}

/* Every tensor model.c looks up, in its order. */
static int list_tensors(plan *pl) {
    const dsv_config *c = &pl->c;
    const int64_t D = c->dim, H = c->n_heads, Q = c->q_lora_rank, C = c->kv_lora_rank;
    const int64_t N = c->qk_nope_head_dim, R = c->qk_rope_head_dim, V = c->v_head_dim;
    const int64_t Hi = c->index_n_heads, Di = c->index_head_dim;
    char p[160];
    int st = 0;
#define TRY(x) do { if ((st = (x))) return st; } while (0)
    /* Embedding rows of unit size: the first RMSNorm sees what a trained
     * model's would, and the residual stream starts at the scale the
     * sub-layers add to it. */
    TRY(add(pl, J_MATRIX, c->vocab_size, D, 1.7320508f, "model.embed_tokens.weight"));
    for (int il = 0; il < c->n_layers; il++) {
        char L[64];
        snprintf(L, sizeof L, "model.layers.%d", il);
        TRY(add(pl, J_NORM, D, 0, NORM_AMP, "%s.input_layernorm.weight", L));
        TRY(add(pl, J_NORM, D, 0, NORM_AMP, "%s.post_attention_layernorm.weight", L));
        snprintf(p, sizeof p, "%s.self_attn.q_a_proj", L);
        TRY(add_linear(pl, p, Q, D));
        TRY(add(pl, J_NORM, Q, 0, NORM_AMP, "%s.self_attn.q_a_layernorm.weight", L));
        snprintf(p, sizeof p, "%s.self_attn.q_b_proj", L);
        TRY(add_linear(pl, p, H * (N + R), Q));
        snprintf(p, sizeof p, "%s.self_attn.kv_a_proj_with_mqa", L);
        TRY(add_linear(pl, p, C + R, D));
        TRY(add(pl, J_NORM, C, 0, NORM_AMP, "%s.self_attn.kv_a_layernorm.weight", L));
        snprintf(p, sizeof p, "%s.self_attn.kv_b_proj", L);
        TRY(add_linear(pl, p, H * (N + V), C));
        snprintf(p, sizeof p, "%s.self_attn.o_proj", L);
        TRY(add_linear(pl, p, D, H * V));
        snprintf(p, sizeof p, "%s.self_attn.indexer.wq_b", L);
        TRY(add_linear(pl, p, Hi * Di, Q));
        snprintf(p, sizeof p, "%s.self_attn.indexer.wk", L);
        TRY(add_linear(pl, p, Di, D));
        TRY(add(pl, J_NORM, Di, 0, NORM_AMP, "%s.self_attn.indexer.k_norm.weight", L));
        TRY(add(pl, J_BIAS16, Di, 0, BIAS_AMP, "%s.self_attn.indexer.k_norm.bias", L));
        /* Head weights of size ~1: with the reference's Hi^-0.5 * 128^-0.5
         * factors the index scores spread over a few units. */
        TRY(add(pl, J_MATRIX, Hi, D, fan_in_amp(D), "%s.self_attn.indexer.weights_proj.weight", L));
        if (il < c->n_dense_layers) {
            snprintf(p, sizeof p, "%s.mlp", L);
            TRY(add_mlp(pl, p, D, c->inter_dim));
            continue;
        }
        /* Router logits of size ~1: sigmoid scores spread over (0.25, 0.75),
         * so the choice of experts varies from token to token. */
        TRY(add(pl, J_MATRIX, c->n_routed_experts, D, fan_in_amp(D), "%s.mlp.gate.weight", L));
        TRY(add(pl, J_BIAS32, c->n_routed_experts, 0, BIAS_AMP, "%s.mlp.gate.e_score_correction_bias", L));
        for (int e = 0; e < c->n_routed_experts; e++) {
            snprintf(p, sizeof p, "%s.mlp.experts.%d", L, e);
            TRY(add_mlp(pl, p, D, c->moe_inter_dim));
        }
        if (c->n_shared_experts > 0) {
            snprintf(p, sizeof p, "%s.mlp.shared_experts", L);
            TRY(add_mlp(pl, p, D, (int64_t)c->n_shared_experts * c->moe_inter_dim));
        }
    }
    TRY(add(pl, J_NORM, D, 0, NORM_AMP, "model.norm.weight"));
    TRY(add(pl, J_MATRIX, c->vocab_size, D, fan_in_amp(D), "lm_head.weight"));
#undef TRY
    return DSV_OK;
}

/* An fp8 linear quantizes its input in 128-wide groups (act_quant): every
 * input width must be a whole number of groups. */
static int check_fp8_shape(const dsv_config *c, const char *path) {
    struct { const char *what; long v; int used; } w[] = {
        {"hidden_size", c->dim, 1},
        {"q_lora_rank", c->q_lora_rank, 1},
        {"num_attention_heads * v_head_dim", (long)c->n_heads * c->v_head_dim, 1},
        {"intermediate_size", c->inter_dim, c->n_dense_layers > 0},
        {"moe_intermediate_size", c->moe_inter_dim, c->n_dense_layers < c->n_layers},
    };
    for (size_t i = 0; i < sizeof w / sizeof w[0]; i++)
        if (w[i].used && w[i].v % DSV_QBLOCK)
            return dsv_error(DSV_ERR_CONFIG, "%s: %s = %ld is not a multiple of 128, which fp8 weights need "
                             "(use bf16)", path, w[i].what, w[i].v);
    return DSV_OK;
}

/* The config to write: fp8 gets the real checkpoint's quantization_config
 * (kept as given if the input has one), bf16 loses it; no MTP layers. */
static int edit_config(plan *pl, const char *text, const char *path, int want_fp8) {
    cJSON *root = cJSON_Parse(text);
    if (!root) return dsv_error(DSV_ERR_NOMEM, "%s: out of memory", path);
    int ok = 1;
    if (!want_fp8) {
        cJSON_DeleteItemFromObjectCaseSensitive(root, "quantization_config");
    } else if (!cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(root, "quantization_config"))) {
        cJSON_DeleteItemFromObjectCaseSensitive(root, "quantization_config");
        cJSON *q = cJSON_AddObjectToObject(root, "quantization_config");
        const int wbs[2] = {DSV_QBLOCK, DSV_QBLOCK};
        ok = q && cJSON_AddStringToObject(q, "activation_scheme", "dynamic") &&
             cJSON_AddStringToObject(q, "fmt", "e4m3") && cJSON_AddStringToObject(q, "quant_method", "fp8") &&
             cJSON_AddItemToObject(q, "weight_block_size", cJSON_CreateIntArray(wbs, 2)) &&
             cJSON_AddStringToObject(q, "scale_fmt", "ue8m0");
    }
    if (ok && cJSON_GetObjectItemCaseSensitive(root, "num_nextn_predict_layers"))
        ok = cJSON_ReplaceItemInObjectCaseSensitive(root, "num_nextn_predict_layers", cJSON_CreateNumber(0));
    pl->config_json = ok ? cJSON_Print(root) : NULL;
    cJSON_Delete(root);
    if (!pl->config_json) return dsv_error(DSV_ERR_NOMEM, "%s: out of memory", path);
    /* What the engine will read back decides the scale format. */
    return dsv_config_parse(&pl->c, pl->config_json, path);
}

static int prepare(plan *pl, const char *path, const dsv_synth_params *p) {
    memset(pl, 0, sizeof *pl);
    if (!path) return dsv_error(DSV_ERR_ARG, "synth: no config given");
    if (p->dtype < DSV_SYNTH_AS_CONFIG || p->dtype > DSV_SYNTH_BF16)
        return dsv_error(DSV_ERR_ARG, "synth: unknown dtype %d", p->dtype);
    char *text = NULL;
    /* A config.json is a few KB; a file far past that is not one. */
    int st = dsv_read_file(path, (size_t)64 << 20, &text, NULL);
    if (st) return st;
    st = dsv_config_parse(&pl->c, text, path);
    int fp8 = p->dtype == DSV_SYNTH_FP8 || (p->dtype == DSV_SYNTH_AS_CONFIG && pl->c.fp8);
    if (!st && fp8) st = check_fp8_shape(&pl->c, path);
    if (!st) st = edit_config(pl, text, path, fp8);
    free(text);
    if (st) return st;
    pl->fp8 = pl->info.fp8 = fp8;
    if ((st = list_tensors(pl))) return st;

    const uint64_t limit = p->shard_bytes ? p->shard_bytes : DSV_SYNTH_SHARD_BYTES;
    if (!(pl->first = malloc(((size_t)pl->n_jobs + 1) * sizeof *pl->first)))
        return dsv_error(DSV_ERR_NOMEM, "synth: out of memory");
    uint64_t cur = 0;
    pl->first[0] = 0;
    pl->n_files = 1;
    for (int i = 0; i < pl->n_jobs; i++) {
        uint64_t b = job_bytes(pl, &pl->jobs[i]);
        if (cur > 0 && cur + b > limit) {
            pl->first[pl->n_files++] = i;
            cur = 0;
        }
        cur += b;
        pl->info.total_bytes += b;
    }
    pl->first[pl->n_files] = pl->n_jobs;
    pl->info.n_files = pl->n_files;
    return DSV_OK;
}

int dsv_synth_plan(const char *config_path, const dsv_synth_params *params, dsv_synth_info *info) {
    dsv_synth_params d = dsv_synth_default_params();
    plan pl;
    int st = prepare(&pl, config_path, params ? params : &d);
    if (!st && info) *info = pl.info;
    plan_free(&pl);
    return st;
}

/* ---- writing ------------------------------------------------------------ */

typedef struct writer {
    const plan *pl;
    const dsv_synth_params *p;
    dsv_st_writer *w;
    uint64_t seed;
    float *vals;         /* [128 * max_cols] or [max_vec] */
    uint8_t *out;        /* the same in the file's dtype */
    float *scales;       /* [blocks(rows) * blocks(cols)] of the current fp8 weight */
    uint64_t done, reported;
} writer;

static int put(writer *wr, const void *data, size_t n) {
    int st = dsv_st_writer_put(wr->w, data, n);
    wr->done += n;
    /* Every 64 MB: often enough for a live progress line, rarely enough to cost nothing. */
    if (!st && wr->p->progress && wr->done - wr->reported >= (64u << 20)) {
        wr->reported = wr->done;
        wr->p->progress(wr->done, wr->pl->info.total_bytes, wr->p->progress_user);
    }
    return st;
}

static void to_bf16(uint8_t *out, const float *v, long n) {
    for (long i = 0; i < n; i++) {
        dsv_bf16 h = dsv_f32_to_bf16(v[i]);
        memcpy(out + 2 * i, &h, 2); /* little-endian hosts only, as the reader */
    }
}

/* The e4m3 code of v, |v| <= 448, rounded to nearest even: the value of
 * dsv_f32_to_e4m3, computed without data-dependent branches, since rounding
 * random weights is a coin toss that would mispredict half the time. */
static inline uint8_t e4m3_code(float v) {
    uint32_t u;
    memcpy(&u, &v, 4);
    const uint32_t sign = (u >> 24) & 0x80, a = u & 0x7fffffffu;
    /* Normal range (>= 2^-6): round the float's bits to 3 mantissa bits (a
     * carry moves into the exponent), then rebias the exponent from 127 to 7. */
    const uint32_t r = a + 0x7ffffu + ((a >> 20) & 1);
    const int normal = (int)(r >> 20) - ((127 - 7) << 3);
    /* Below 2^-6 the grid is uniform with step 2^-9: adding and removing 2^23
     * rounds |v| * 512 to an integer, nearest even, which is the code. */
    const float f = fabsf(v) * 512.0f;
    const int sub = (int)((f + 8388608.0f) - 8388608.0f);
    return (uint8_t)(sign | (uint32_t)(a < 0x3c800000u ? sub : normal));
}

/* One 128-row band of an fp8 weight: a scale per 128x128 block from the
 * block's largest magnitude (the act_quant rule, so a power of two under
 * ue8m0, as in the real checkpoints), then codes = e4m3(w / scale). */
static void quantize_band(writer *wr, const job *j, int band, int64_t nr) {
    const int nbc = blocks(j->cols);
    for (int bc = 0; bc < nbc; bc++) {
        const int64_t c0 = (int64_t)bc * DSV_QBLOCK, c1 = DSV_MIN(c0 + DSV_QBLOCK, j->cols);
        float amax = 0;
        for (int64_t r = 0; r < nr; r++)
            for (int64_t c = c0; c < c1; c++) amax = fmaxf(amax, fabsf(wr->vals[r * j->cols + c]));
        const float s = dsv_act_scale(amax, wr->pl->c.scale_fmt);
        wr->scales[(size_t)band * nbc + bc] = s;
        /* A reciprocal, not a division: exact for ue8m0's powers of two, and
         * for amax/448 scales within an ulp, which no reference pins down. */
        const float inv = 1.0f / s;
        for (int64_t r = 0; r < nr; r++)
            for (int64_t c = c0; c < c1; c++)
                wr->out[r * j->cols + c] = e4m3_code(fminf(fmaxf(wr->vals[r * j->cols + c] * inv, -448.0f), 448.0f));
    }
}

static int write_job(writer *wr, const job *j) {
    dsv_rng rng = dsv_rng_stream(wr->seed, j->name, 0);
    if (j->cols == 0) {
        /* Vectors: norms around 1, biases around 0. */
        dsv_rng_fill(&rng, wr->vals, j->rows, j->amp);
        if (j->kind == J_NORM)
            for (int64_t i = 0; i < j->rows; i++) wr->vals[i] += 1.0f;
        if (j->kind == J_BIAS32) return put(wr, wr->vals, 4 * (size_t)j->rows);
        to_bf16(wr->out, wr->vals, (long)j->rows);
        return put(wr, wr->out, 2 * (size_t)j->rows);
    }
    const int fp8 = j->kind == J_LINEAR && wr->pl->fp8;
    int st = DSV_OK;
    for (int band = 0; !st && (int64_t)band * DSV_QBLOCK < j->rows; band++) {
        const int64_t nr = DSV_MIN((int64_t)DSV_QBLOCK, j->rows - (int64_t)band * DSV_QBLOCK);
        dsv_rng_fill(&rng, wr->vals, (long)(nr * j->cols), j->amp);
        if (fp8) {
            quantize_band(wr, j, band, nr);
            st = put(wr, wr->out, (size_t)(nr * j->cols));
        } else {
            to_bf16(wr->out, wr->vals, (long)(nr * j->cols));
            st = put(wr, wr->out, 2 * (size_t)(nr * j->cols));
        }
    }
    if (!st && fp8) st = put(wr, wr->scales, 4 * (size_t)blocks(j->rows) * (size_t)blocks(j->cols));
    return st;
}

static int declare(dsv_st_writer *w, const plan *pl, const job *j) {
    char name[200];
    int64_t shape[2] = {j->rows, j->cols};
    int nd = j->cols ? 2 : 1;
    if (j->kind != J_LINEAR)
        return dsv_st_writer_add(w, j->name, j->kind == J_BIAS32 ? DSV_DT_F32 : DSV_DT_BF16, nd, shape, NULL);
    snprintf(name, sizeof name, "%s.weight", j->name);
    int st = dsv_st_writer_add(w, name, pl->fp8 ? DSV_DT_F8_E4M3 : DSV_DT_BF16, 2, shape, NULL);
    if (st || !pl->fp8) return st;
    int64_t sshape[2] = {blocks(j->rows), blocks(j->cols)};
    snprintf(name, sizeof name, "%s.weight_scale_inv", j->name);
    return dsv_st_writer_add(w, name, DSV_DT_F32, 2, sshape, NULL);
}

static void file_name(char *buf, size_t n, const plan *pl, int f) {
    if (pl->n_files == 1) snprintf(buf, n, "model.safetensors");
    else snprintf(buf, n, "model-%05d-of-%05d.safetensors", f + 1, pl->n_files);
}

static int write_file(writer *wr, const char *dir, int f) {
    char name[64], path[4200];
    file_name(name, sizeof name, wr->pl, f);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int st = dsv_st_writer_init(&wr->w);
    if (!st) st = dsv_st_writer_set_metadata(wr->w, "format", "pt");
    for (int i = wr->pl->first[f]; !st && i < wr->pl->first[f + 1]; i++) st = declare(wr->w, wr->pl, &wr->pl->jobs[i]);
    if (!st) st = dsv_st_writer_begin(wr->w, path);
    for (int i = wr->pl->first[f]; !st && i < wr->pl->first[f + 1]; i++) st = write_job(wr, &wr->pl->jobs[i]);
    if (!st) st = dsv_st_writer_finish(wr->w);
    dsv_st_writer_free(wr->w);
    wr->w = NULL;
    return st;
}

/* mkdir -p. */
static int make_dir(const char *dir) {
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", dir) >= (int)sizeof buf) return dsv_error(DSV_ERR_ARG, "%s: path too long", dir);
    for (char *s = buf + 1;; s++) {
        if (*s && *s != '/') continue;
        char c = *s;
        *s = 0;
        if (mkdir(buf, 0777) && errno != EEXIST)
            return dsv_error(DSV_ERR_IO, "%s: cannot create directory (%s)", buf, strerror(errno));
        *s = c;
        if (!c) break;
    }
    struct stat sb;
    if (stat(dir, &sb) || !S_ISDIR(sb.st_mode)) return dsv_error(DSV_ERR_IO, "%s: not a directory", dir);
    return DSV_OK;
}

/* Removes an earlier model's files, config.json first, so that the
 * directory never pairs a new config with old weights. */
static void remove_old(const char *dir) {
    static const char *names[] = {"config.json", "model.safetensors.index.json", "model.safetensors"};
    char path[4200];
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        unlink(path);
    }
    DIR *d = opendir(dir);
    if (!d) return;
    for (struct dirent *e; (e = readdir(d));)
        if (!fnmatch("model-[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9].safetensors", e->d_name, 0)) {
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            unlink(path);
        }
    closedir(d);
}

static int write_config(const char *dir, const char *json) {
    char path[4200], tmp[4300];
    snprintf(path, sizeof path, "%s/config.json", dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) return dsv_error(DSV_ERR_IO, "%s: cannot write (%s)", tmp, strerror(errno));
    int ok = fputs(json, f) >= 0 && fputc('\n', f) != EOF;
    ok = !fclose(f) && ok;
    if (!ok || rename(tmp, path)) {
        unlink(tmp);
        return dsv_error(DSV_ERR_IO, "%s: cannot write", path);
    }
    return DSV_OK;
}

int dsv_synth(const char *config_path, const char *dir, const dsv_synth_params *params, dsv_synth_info *info) {
    dsv_synth_params d = dsv_synth_default_params();
    const dsv_synth_params *p = params ? params : &d;
    if (!dir) return dsv_error(DSV_ERR_ARG, "synth: no output directory given");
    plan pl;
    int st = prepare(&pl, config_path, p);
    if (!st) st = make_dir(dir);
    struct statvfs vfs;
    if (!st && !statvfs(dir, &vfs) && (uint64_t)vfs.f_bavail * vfs.f_frsize < pl.info.total_bytes)
        st = dsv_error(DSV_ERR_IO, "%s: the model needs %.1f GB, %.1f GB are free", dir,
                       pl.info.total_bytes / 1e9, (double)vfs.f_bavail * vfs.f_frsize / 1e9);
    writer wr = {.pl = &pl, .p = p, .seed = p->seed};
    if (!st) {
        size_t nv = (size_t)DSV_MAX(DSV_QBLOCK * pl.max_cols, pl.max_vec);
        wr.vals = malloc(nv * sizeof(float));
        wr.out = malloc(nv * 2);
        wr.scales = malloc((size_t)DSV_MAX(pl.max_scales, 1) * sizeof(float));
        if (!wr.vals || !wr.out || !wr.scales) st = dsv_error(DSV_ERR_NOMEM, "synth: out of memory");
    }
    if (!st) remove_old(dir);
    for (int f = 0; !st && f < pl.n_files; f++) st = write_file(&wr, dir, f);
    if (!st && pl.n_files > 1) {
        char **names = calloc((size_t)pl.n_files, sizeof *names);
        for (int f = 0; names && f < pl.n_files; f++)
            if ((names[f] = malloc(64))) file_name(names[f], 64, &pl, f);
        int ok = names != NULL;
        for (int f = 0; ok && f < pl.n_files; f++) ok = names[f] != NULL;
        st = ok ? dsv_st_write_index(dir, (const char *const *)names, pl.n_files)
                : dsv_error(DSV_ERR_NOMEM, "synth: out of memory");
        for (int f = 0; names && f < pl.n_files; f++) free(names[f]);
        free(names);
    }
    if (!st) st = write_config(dir, pl.config_json);
    if (!st && p->progress) p->progress(pl.info.total_bytes, pl.info.total_bytes, p->progress_user);
    if (!st && info) *info = pl.info;
    free(wr.vals);
    free(wr.out);
    free(wr.scales);
    plan_free(&pl);
    return st;
}
