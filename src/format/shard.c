/* shard.c: which part of the model each rank holds (see shard.h), and
 * where a rank finds its shard file written by `dsv32 convert`.
 *
 * Every split dimension is cut into granules that a rank holds whole, and
 * the granules are dealt out evenly in rank order: rank r of N gets
 * granules [G*r/N, G*(r+1)/N). A granule is one unit (a head, an expert, a
 * vocabulary row, a hidden unit), except in an fp8 checkpoint, where a cut
 * must fall on a 128x128 scale block: a head granule is the fewest heads
 * whose q_b_proj rows (nope+rope each), kv_b_proj rows (nope+v) and o_proj
 * columns (v) are all multiples of 128, and a hidden-unit granule is 128
 * units. The last granule may be short (the end of a matrix is always a
 * valid cut). With sizes that divide, this is the reference's convert.py
 * split: for the 671B model at 16 ranks, 8 heads, 16 experts, 1152 dense
 * and 128 shared hidden units and 8080 vocabulary rows per rank. */
#include <dirent.h>
#include <string.h>
#include <sys/stat.h>

#include "shard.h"
#include "base/numeric.h"
#include "base/util.h"

static int gcd(int a, int b) {
    while (b) { int t = a % b; a = b; b = t; }
    return a;
}

/* Granule (in units) of a dimension whose units are `width` elements wide
 * in an fp8 matrix: units * width must be a multiple of 128. */
static int fp8_granule(int width) { return width > 0 ? DSV_QBLOCK / gcd(width, DSV_QBLOCK) : 1; }
static int lcm(int a, int b) { return a / gcd(a, b) * b; }

static void deal(int n, int granule, int rank, int size, int *lo, int *hi) {
    long long g = ((long long)n + granule - 1) / granule;
    long long a = g * rank / size, b = g * (rank + 1) / size;
    *lo = (int)DSV_MIN(a * granule, (long long)n);
    *hi = (int)DSV_MIN(b * granule, (long long)n);
}

/* Units of `width` elements each whose total width is a multiple of block. */
static int block_granule(int width, int block) {
    return block > 1 && width > 0 ? block / gcd(width, block) : 1;
}

void dsv_shard_plan_blocks(dsv_shard *sh, const dsv_config *c, int rank, int size, const dsv_shard_blocks *b) {
    memset(sh, 0, sizeof *sh);
    sh->rank = rank;
    sh->size = size;
    int g_head = 1, g_inter = 1, g_shared = 1;
    if (c->fp8 || b->fp8) {
        g_head = lcm(lcm(fp8_granule(c->qk_nope_head_dim + c->qk_rope_head_dim),
                         fp8_granule(c->qk_nope_head_dim + c->v_head_dim)), fp8_granule(c->v_head_dim));
        g_inter = g_shared = DSV_QBLOCK;
    }
    /* Block sizes are powers of two up to 256 (or 1), so the lcms stay small. */
    g_head = lcm(g_head, block_granule(c->v_head_dim, b->o));
    g_inter = lcm(g_inter, b->inter > 1 ? b->inter : 1);
    g_shared = lcm(g_shared, b->shared > 1 ? b->shared : 1);
    deal(c->n_heads, g_head, rank, size, &sh->head0, &sh->head1);
    deal(c->inter_dim, g_inter, rank, size, &sh->inter0, &sh->inter1);
    deal(c->n_shared_experts * c->moe_inter_dim, g_shared, rank, size, &sh->shared0, &sh->shared1);
    deal(c->n_routed_experts, 1, rank, size, &sh->expert0, &sh->expert1);
    deal(c->vocab_size, 1, rank, size, &sh->vocab0, &sh->vocab1);
}

void dsv_shard_plan(dsv_shard *sh, const dsv_config *c, int rank, int size) {
    const dsv_shard_blocks none = {1, 1, 1, 0};
    dsv_shard_plan_blocks(sh, c, rank, size, &none);
}

void dsv_shard_file_name(char *buf, size_t cap, int rank, int size) {
    snprintf(buf, cap, "model%d-mp%d.safetensors", rank, size);
}

/* "model<r>-mp<N>.safetensors": sets N. */
static int is_shard_name(const char *name, int *size) {
    int r, n, len = 0;
    if (sscanf(name, "model%d-mp%d.safetensors%n", &r, &n, &len) != 2) return 0;
    if ((size_t)len != strlen(name)) return 0;
    *size = n;
    return 1;
}

int dsv_shard_split(const char *dir, int prefer) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    int found = 0;
    for (struct dirent *e; (e = readdir(d));) {
        int n;
        if (is_shard_name(e->d_name, &n) && (!found || n == prefer)) found = n;
    }
    closedir(d);
    return found;
}

int dsv_shard_find(const char *dir, int rank, int size, char *path, size_t cap, int *found) {
    char name[64];
    struct stat sb;
    *found = 0;
    dsv_shard_file_name(name, sizeof name, rank, size);
    int st = dsv_path_join(path, cap, dir, name);
    if (st) return st;
    if (stat(path, &sb) == 0 && S_ISREG(sb.st_mode)) {
        *found = 1;
        return DSV_OK;
    }
    const int other = dsv_shard_split(dir, size);
    if (other == size)
        return dsv_error(DSV_ERR_IO, "%s: rank %d's shard %s is missing (the directory holds other ranks' shards "
                         "of a %d-way split)", dir, rank, name, size);
    if (other)
        return dsv_error(DSV_ERR_MODEL, "%s holds shards written for %d ranks (dsv32 convert --model-parallel %d); "
                         "this run has %d", dir, other, other, size);
    return DSV_OK;
}
