/* convert.c: the per-rank shard files of a model split across processes
 * (include/dsv32_convert.h; `dsv32 convert` is its command).
 *
 * Each checkpoint tensor is kept, dropped or cut in rows or columns for a
 * rank, by the same plan the loader uses to map a rank's part (shard.c), so
 * the bytes a rank maps from its shard file are the bytes it would map from
 * the checkpoint. Tensors are streamed from the mapped checkpoint, a row at a
 * time for a column cut. */
#include "dsv32_convert.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "base/dtype.h"
#include "base/numeric.h"
#include "base/util.h"
#include "format/safetensors.h"
#include "format/shard.h"

/* How one checkpoint tensor goes to a rank. */
enum { KEEP, DROP, ROWS, COLS };
typedef struct part { int how, lo, hi; } part;

/* This rank's part of the tensor called name (a weight or its scale; a cut
 * is in the weight's rows or columns, the scale's follow). */
static part classify(const char *name, const dsv_config *c, const dsv_shard *sh) {
    const part keep = {KEEP, 0, 0}, drop = {DROP, 0, 0};
    if (!strcmp(name, "model.embed_tokens.weight") || !strcmp(name, "lm_head.weight"))
        return (part){ROWS, sh->vocab0, sh->vocab1};
    int layer, n = 0;
    if (sscanf(name, "model.layers.%d.%n", &layer, &n) != 1 || n == 0) return keep;
    if (layer >= c->n_layers) return drop; /* MTP layers are never used */
    const char *rest = name + n;
    const int QH = c->qk_nope_head_dim + c->qk_rope_head_dim, KVH = c->qk_nope_head_dim + c->v_head_dim;
    const int VH = c->v_head_dim;
    if (!strncmp(rest, "self_attn.q_b_proj.", 19)) return (part){ROWS, sh->head0 * QH, sh->head1 * QH};
    if (!strncmp(rest, "self_attn.kv_b_proj.", 20)) return (part){ROWS, sh->head0 * KVH, sh->head1 * KVH};
    if (!strncmp(rest, "self_attn.o_proj.", 17)) return (part){COLS, sh->head0 * VH, sh->head1 * VH};
    int e;
    if (sscanf(rest, "mlp.experts.%d.", &e) == 1) return e >= sh->expert0 && e < sh->expert1 ? keep : drop;
    const char *mlp = NULL;
    int lo = 0, hi = 0;
    if (!strncmp(rest, "mlp.shared_experts.", 19)) {
        mlp = rest + 19;
        lo = sh->shared0;
        hi = sh->shared1;
    } else if (!strncmp(rest, "mlp.", 4) && strncmp(rest, "mlp.gate.", 9)) {
        mlp = rest + 4;
        lo = sh->inter0;
        hi = sh->inter1;
    }
    if (mlp && (!strncmp(mlp, "gate_proj.", 10) || !strncmp(mlp, "up_proj.", 8))) return (part){ROWS, lo, hi};
    if (mlp && !strncmp(mlp, "down_proj.", 10)) return (part){COLS, lo, hi};
    return keep;
}

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

/* The rows or columns [lo, hi) of tensor t as stored: for a block scale, the
 * 128-blocks covering the weight's cut. */
typedef struct cut { const dsv_st_tensor *t; int how; int64_t lo, hi; } cut;

static int plan_cut(const dsv_st *st, const dsv_st_tensor *t, part p, cut *out) {
    *out = (cut){t, p.how, p.lo, p.hi};
    if (p.how != ROWS && p.how != COLS) return 0;
    if (t->n_dims != 2) return dsv_error(DSV_ERR_MODEL, "tensor '%s': expected 2 dimensions to cut", t->name);
    const int scale = ends_with(t->name, ".weight_scale_inv");
    if (scale) {
        out->lo = p.lo / DSV_QBLOCK;
        out->hi = (p.hi + DSV_QBLOCK - 1) / DSV_QBLOCK;
    } else if (p.lo % DSV_QBLOCK) {
        /* A weight with block scales cannot be cut inside a block. */
        char sname[512];
        snprintf(sname, sizeof sname, "%.*s.weight_scale_inv", (int)(strlen(t->name) - 7), t->name);
        if (ends_with(t->name, ".weight") && dsv_st_find(st, sname))
            return dsv_error(DSV_ERR_MODEL, "tensor '%s' is fp8; a cut at %d is not on a 128 block", t->name, p.lo);
    }
    const int64_t dim = t->shape[p.how == ROWS ? 0 : 1];
    if (out->hi > dim || out->lo > out->hi)
        return dsv_error(DSV_ERR_MODEL, "tensor '%s': cut [%lld, %lld) outside its %lld %s", t->name, (long long)out->lo,
                        (long long)out->hi, (long long)dim, p.how == ROWS ? "rows" : "columns");
    return 0;
}

static int write_rank(const char *out_dir, const dsv_st *st, const dsv_config *c, int rank, int size,
                      dsv_convert_fn on_file, void *user) {
    dsv_shard sh;
    dsv_shard_plan(&sh, c, rank, size);
    const int n = dsv_st_count(st);
    cut *cuts = malloc((size_t)(n > 0 ? n : 1) * sizeof *cuts);
    int n_cuts = 0, rc = 0;
    if (!cuts) return dsv_error(DSV_ERR_NOMEM, "out of memory");
    for (int i = 0; i < n && !rc; i++) {
        const dsv_st_tensor *t = dsv_st_at(st, i);
        part p = classify(t->name, c, &sh);
        if (p.how == DROP || ((p.how == ROWS || p.how == COLS) && p.lo == p.hi)) continue; /* nothing of it here */
        rc = plan_cut(st, t, p, &cuts[n_cuts]);
        if (!rc) n_cuts++;
    }
    char name[64], path[PATH_MAX], rs[16], ns[16];
    dsv_shard_file_name(name, sizeof name, rank, size);
    if ((rc = dsv_path_join(path, sizeof path, out_dir, name))) {
        free(cuts);
        return rc;
    }
    snprintf(rs, sizeof rs, "%d", rank);
    snprintf(ns, sizeof ns, "%d", size);
    dsv_st_writer *w = NULL;
    int st_rc = dsv_st_writer_init(&w);
    if (!st_rc) st_rc = dsv_st_writer_set_metadata(w, "format", "pt");
    if (!st_rc) st_rc = dsv_st_writer_set_metadata(w, DSV_SHARD_RANK_KEY, rs);
    if (!st_rc) st_rc = dsv_st_writer_set_metadata(w, DSV_SHARD_SIZE_KEY, ns);
    for (int i = 0; !rc && !st_rc && i < n_cuts; i++) {
        const cut *k = &cuts[i];
        int64_t shape[DSV_ST_MAX_DIMS];
        memcpy(shape, k->t->shape, sizeof shape);
        if (k->how == ROWS) shape[0] = k->hi - k->lo;
        if (k->how == COLS) shape[1] = k->hi - k->lo;
        st_rc = dsv_st_writer_add(w, k->t->name, k->t->dtype, k->t->n_dims, shape, NULL);
    }
    if (!rc && !st_rc) st_rc = dsv_st_writer_begin(w, path);
    for (int i = 0; !rc && !st_rc && i < n_cuts; i++) {
        const cut *k = &cuts[i];
        const char *d = k->t->data;
        const size_t es = dsv_dtype_size(k->t->dtype);
        if (k->how == KEEP) {
            st_rc = dsv_st_writer_put(w, d, k->t->nbytes);
        } else if (k->how == ROWS) {
            const size_t row = (size_t)k->t->shape[1] * es;
            st_rc = dsv_st_writer_put(w, d + (size_t)k->lo * row, (size_t)(k->hi - k->lo) * row);
        } else {
            const size_t row = (size_t)k->t->shape[1] * es;
            for (int64_t r = 0; r < k->t->shape[0] && !st_rc; r++)
                st_rc = dsv_st_writer_put(w, d + (size_t)r * row + (size_t)k->lo * es, (size_t)(k->hi - k->lo) * es);
        }
    }
    if (!rc && !st_rc) st_rc = dsv_st_writer_finish(w);
    if (!rc && !st_rc && on_file) on_file(path, n_cuts, dsv_st_writer_data_size(w), user);
    if (st_rc && !rc) rc = st_rc;
    dsv_st_writer_free(w);
    free(cuts);
    return rc;
}

static int copy_file(const char *src, const char *dst) {
    FILE *in = fopen(src, "rb");
    if (!in) return dsv_error(DSV_ERR_IO, "%s: cannot open: %s", src, strerror(errno));
    FILE *out = fopen(dst, "wb");
    if (!out) {
        fclose(in);
        return dsv_error(DSV_ERR_IO, "%s: cannot write: %s", dst, strerror(errno));
    }
    char buf[1 << 16];
    size_t n;
    int rc = 0;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        if (fwrite(buf, 1, n, out) != n) { rc = dsv_error(DSV_ERR_IO, "%s: write failed", dst); break; }
    if (ferror(in)) rc = dsv_error(DSV_ERR_IO, "%s: read failed", src);
    fclose(in);
    if (fclose(out) && !rc) rc = dsv_error(DSV_ERR_IO, "%s: write failed", dst);
    return rc;
}

/* config.json and the tokenizer files (names containing "token"). */
static int copy_small_files(const char *dir, const char *out_dir) {
    DIR *d = opendir(dir);
    if (!d) return dsv_error(DSV_ERR_IO, "%s: cannot list: %s", dir, strerror(errno));
    int rc = 0;
    for (struct dirent *e; !rc && (e = readdir(d));) {
        if (e->d_name[0] == '.' || (strcmp(e->d_name, "config.json") && !strstr(e->d_name, "token"))) continue;
        char src[PATH_MAX], dst[PATH_MAX];
        struct stat sb;
        if ((rc = dsv_path_join(src, sizeof src, dir, e->d_name)) ||
            (rc = dsv_path_join(dst, sizeof dst, out_dir, e->d_name)))
            break;
        if (stat(src, &sb) == 0 && S_ISREG(sb.st_mode)) rc = copy_file(src, dst);
    }
    closedir(d);
    return rc;
}

int dsv_convert_shards(const char *model, const char *out_dir, int size, int only, dsv_convert_fn on_file,
                       void *user) {
    if (!model || !out_dir) return dsv_error(DSV_ERR_ARG, "dsv_convert_shards: NULL directory");
    if (size < 1 || size > 1024) return dsv_error(DSV_ERR_ARG, "model parallel size %d: expected 1 to 1024", size);
    if (only < -1 || only >= size)
        return dsv_error(DSV_ERR_ARG, "rank %d: ranks of a %d-way split are 0 to %d", only, size, size - 1);
    char rm[PATH_MAX], ro[PATH_MAX];
    if (!realpath(model, rm)) return dsv_error(DSV_ERR_IO, "%s: %s", model, strerror(errno));
    if (mkdir(out_dir, 0777) && errno != EEXIST)
        return dsv_error(DSV_ERR_IO, "%s: cannot create: %s", out_dir, strerror(errno));
    if (!realpath(out_dir, ro)) return dsv_error(DSV_ERR_IO, "%s: %s", out_dir, strerror(errno));
    if (!strcmp(rm, ro))
        return dsv_error(DSV_ERR_ARG, "%s: the output must differ from the model directory (the shards would hide "
                         "the checkpoint)", out_dir);
    /* The source must be a checkpoint, not shards; the output may hold only
     * shards of this same split. */
    if (dsv_shard_split(model, 0))
        return dsv_error(DSV_ERR_ARG, "%s holds per-rank shards; convert the Hugging Face checkpoint instead", model);
    int other = dsv_shard_split(out_dir, size);
    if (other && other != size)
        return dsv_error(DSV_ERR_ARG, "%s already holds the shards of a %d-way split; use an empty directory", out_dir,
                         other);

    dsv_config c;
    int rc = dsv_config_load(&c, model);
    if (rc) return rc;
    dsv_st *st;
    if ((rc = dsv_st_open(&st, model))) return rc;
    for (int r = 0; r < size && !rc; r++)
        if (only < 0 || r == only) rc = write_rank(out_dir, st, &c, r, size, on_file, user);
    if (!rc) rc = copy_small_files(model, out_dir);
    dsv_st_close(st);
    return rc;
}
