/* comm_mpi.c: the transport over Open MPI (built with `make MPI=1`).
 *
 * A process joins MPI_COMM_WORLD only when a launcher started it; otherwise
 * it is a group of one and never calls MPI (a plain `dsv32` in an MPI build
 * behaves as in a build without it). Two duplicates of the world keep the
 * command channel apart from the forward pass's collectives. MPI is
 * initialized with MPI_THREAD_SERIALIZED: the leader's calls may come from
 * any one thread at a time (the server's scheduler thread), never from the
 * engine's worker threads.
 *
 * Errors are fatal by MPI's default handler: a failed call, or a peer that
 * died (the launcher notices and ends the job), never leaves a rank waiting
 * in a collective. */
#include <limits.h>
#include <mpi.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm.h"
#include "base/util.h"

static int g_rank, g_size = 1, g_joined;
static MPI_Comm g_comp, g_cmd;        /* the forward pass's collectives; the command channel */
static int *g_cnt, *g_off, *g_cnt2, *g_off2; /* [size] counts and displacements */
static MPI_Request *g_req;            /* [size] */

/* Vectors of at most this many bytes (a decode step's rows) are summed by
 * gathering every rank's whole vector in one allgather: log2(N) steps, the
 * fewest latencies, each rank receiving (N-1) vectors. Larger ones (prefill)
 * go in two steps that move 2(N-1)/N of a vector per rank, a ring
 * all-reduce's volume: each rank sums one stripe of every rank's copy, then
 * the summed stripes are shared. Both add in rank order, so they give the
 * same bits. */
#define SMALL_SUM_BYTES (64u << 10)

static int launched(void) {
    return getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMIX_RANK") || getenv("PMI_SIZE") || getenv("PMI_RANK");
}

int dsv_comm_init(int *argc, char ***argv) {
    if (g_joined || !launched()) return DSV_OK;
    int provided = 0;
    if (MPI_Init_thread(argc, argv, MPI_THREAD_SERIALIZED, &provided) != MPI_SUCCESS)
        return dsv_error(DSV_ERR_IO, "MPI_Init_thread failed");
    if (provided < MPI_THREAD_SERIALIZED) {
        MPI_Finalize();
        return dsv_error(DSV_ERR_UNSUPPORTED, "this MPI library lacks MPI_THREAD_SERIALIZED");
    }
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g_size);
    MPI_Comm_dup(MPI_COMM_WORLD, &g_comp);
    MPI_Comm_dup(MPI_COMM_WORLD, &g_cmd);
    size_t n = (size_t)g_size;
    g_cnt = malloc(4 * n * sizeof(int));
    g_req = malloc(n * sizeof *g_req);
    if (!g_cnt || !g_req) /* the caller exits; mpirun then ends the job */
        return dsv_error(DSV_ERR_NOMEM, "out of memory");
    g_off = g_cnt + n;
    g_cnt2 = g_off + n;
    g_off2 = g_cnt2 + n;
    g_joined = 1;
    return DSV_OK;
}

void dsv_comm_finalize(int abort_job, int status) {
    if (!g_joined) return;
    if (abort_job) MPI_Abort(MPI_COMM_WORLD, status ? status : 1);
    MPI_Comm_free(&g_comp);
    MPI_Comm_free(&g_cmd);
    MPI_Finalize();
    free(g_cnt);
    free(g_req);
    g_cnt = NULL;
    g_req = NULL;
    g_joined = 0;
    g_rank = 0;
    g_size = 1;
}

int dsv_comm_rank(void) { return g_rank; }
int dsv_comm_size(void) { return g_size; }
int dsv_comm_available(void) { return 1; }

void dsv_comm_bcast(int root, void *buf, size_t bytes) {
    if (g_size == 1) return;
    for (size_t o = 0; o < bytes; o += INT_MAX) {
        size_t n = bytes - o < INT_MAX ? bytes - o : INT_MAX;
        MPI_Bcast((char *)buf + o, (int)n, MPI_BYTE, root, g_comp);
    }
}

void dsv_comm_allgather_int(int v, int *all) {
    if (g_size == 1) { all[0] = v; return; }
    MPI_Allgather(&v, 1, MPI_INT, all, 1, MPI_INT, g_comp);
}

size_t dsv_comm_sum_scratch(size_t n, int size) {
    if (size <= 1) return 0;
    const size_t small = SMALL_SUM_BYTES / sizeof(float);
    return DSV_MAX(n + (size_t)size, (size_t)size * DSV_MIN(n, small));
}

void dsv_comm_sum_f32(float *x, size_t n, float *scratch) {
    if (g_size == 1 || n == 0) return;
    DSV_ASSERT(n <= INT_MAX / 2);
    const size_t N = (size_t)g_size;
    if (n * sizeof(float) <= SMALL_SUM_BYTES) {
        /* scratch [N][n]: every rank's vector, summed here in rank order. */
        MPI_Allgather(x, (int)n, MPI_FLOAT, scratch, (int)n, MPI_FLOAT, g_comp);
        for (size_t i = 0; i < n; i++) {
            float s = scratch[i];
            for (size_t r = 1; r < N; r++) s += scratch[r * n + i];
            x[i] = s;
        }
        return;
    }
    /* Stripe r = [n*r/N, n*(r+1)/N): rank r receives every rank's copy of
     * it (scratch [N][len]), sums them in rank order, and the summed stripes
     * go to every rank. */
    for (size_t r = 0; r < N; r++) {
        g_off[r] = (int)(n * r / N);
        g_cnt[r] = (int)(n * (r + 1) / N) - g_off[r];
    }
    const int len = g_cnt[g_rank];
    for (size_t r = 0; r < N; r++) {
        g_cnt2[r] = len;
        g_off2[r] = (int)r * len;
    }
    MPI_Alltoallv(x, g_cnt, g_off, MPI_FLOAT, scratch, g_cnt2, g_off2, MPI_FLOAT, g_comp);
    float *mine = x + g_off[g_rank];
    for (int i = 0; i < len; i++) {
        float s = scratch[i];
        for (size_t r = 1; r < N; r++) s += scratch[r * (size_t)len + (size_t)i];
        mine[i] = s;
    }
    MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, x, g_cnt, g_off, MPI_FLOAT, g_comp);
}

void dsv_comm_gather_cols(float *out, int ld, const float *part, int rows, const int *c0, const int *n) {
    enum { TAG = 17 };
    if (g_rank != 0) {
        if (rows > 0 && n[g_rank] > 0) MPI_Send(part, rows * n[g_rank], MPI_FLOAT, 0, TAG, g_comp);
        return;
    }
    int nreq = 0;
    for (int r = 1; r < g_size; r++) {
        if (rows <= 0 || n[r] <= 0) continue;
        /* Rank r's block lands in place: rows of n[r] floats, ld apart. */
        MPI_Datatype block;
        MPI_Type_vector(rows, n[r], ld, MPI_FLOAT, &block);
        MPI_Type_commit(&block);
        MPI_Irecv(out + c0[r], 1, block, r, TAG, g_comp, &g_req[nreq++]);
        MPI_Type_free(&block);
    }
    for (int i = 0; i < rows; i++) memcpy(out + (size_t)i * ld + c0[0], part + (size_t)i * n[0], (size_t)n[0] * sizeof *out);
    MPI_Waitall(nreq, g_req, MPI_STATUSES_IGNORE);
}

void dsv_comm_cmd_send(const void *cmd) {
    if (g_size == 1) return;
    MPI_Request req;
    MPI_Ibcast((void *)cmd, DSV_COMM_CMD, MPI_BYTE, 0, g_cmd, &req);
    MPI_Wait(&req, MPI_STATUS_IGNORE);
}

void dsv_comm_cmd_recv(void *cmd) {
    MPI_Request req;
    MPI_Ibcast(cmd, DSV_COMM_CMD, MPI_BYTE, 0, g_cmd, &req);
    /* Poll: yield the core for the first 2 ms (a decoding leader sends the
     * next step within that), then sleep in growing naps up to 1 ms, so an
     * idle follower costs next to nothing. */
    double t0 = MPI_Wtime();
    long nap_ns = 50000;
    for (int done = 0;;) {
        MPI_Test(&req, &done, MPI_STATUS_IGNORE);
        if (done) return;
        if (MPI_Wtime() - t0 < 2e-3) {
            sched_yield();
            continue;
        }
        struct timespec ts = {0, nap_ns};
        nanosleep(&ts, NULL);
        if (nap_ns < 1000000) nap_ns *= 2;
    }
}
