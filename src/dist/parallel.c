/* parallel.c: a model split across processes (the dsv_parallel_* section
 * of dsv32.h): the MPI collectives the engine runs on (model/coll.h), the
 * leader's operations sent to the followers, and the followers' replay
 * loop. The engine knows nothing of this file: dsv_parallel_init installs
 * the collectives, and the operations, their checks and their replay are
 * the table in model/context.c, which both directions go through.
 *
 * The split itself (which rank holds what, where the sums are) is
 * described in format/shard.h.
 *
 * Opens are collective: each rank loads its part, then all agree on the
 * outcome (the first failing rank's status and message win), so a missing
 * shard on one machine fails every rank at once with one clear message
 * instead of leaving the others waiting. */
#include <stdlib.h>
#include <string.h>

#include "comm.h"
#include "model/coll.h"
#include "base/util.h"

/* What a rank cannot recover from without leaving the others waiting ends
 * the whole job. */
static _Noreturn void die(const char *why) {
    fprintf(stderr, "dsv32: rank %d of %d: %s\n", dsv_comm_rank(), dsv_comm_size(), why);
    dsv_comm_finalize(1, 1);
    abort();
}

/* ---- agreement ----------------------------------------------------------- */

static int agree(int status) {
    const int size = dsv_comm_size();
    if (size == 1) return status;
    int *all = malloc((size_t)size * sizeof *all);
    if (!all) die("out of memory");
    dsv_comm_allgather_int(status, all);
    int bad = -1;
    for (int r = 0; r < size && bad < 0; r++)
        if (all[r]) bad = r;
    int st = bad < 0 ? DSV_OK : all[bad];
    free(all);
    if (bad < 0) return DSV_OK;
    char msg[1024] = "";
    if (dsv_comm_rank() == bad) snprintf(msg, sizeof msg, "%s", dsv_errmsg());
    dsv_comm_bcast(bad, msg, sizeof msg);
    msg[sizeof msg - 1] = 0;
    return dsv_error(st, "rank %d of %d: %s", bad, size, msg);
}

static int agree_min(int v) {
    const int size = dsv_comm_size();
    if (size == 1) return v;
    int *all = malloc((size_t)size * sizeof *all);
    if (!all) die("out of memory");
    dsv_comm_allgather_int(v, all);
    int lo = v;
    for (int r = 0; r < size; r++) lo = DSV_MIN(lo, all[r]);
    free(all);
    return lo;
}

/* ---- commands -------------------------------------------------------------- */

/* An op on the wire: its code (DSV_OP_*, or OP_QUIT), then the op's fields. */
enum { OP_QUIT = 100 };

typedef struct par_cmd {
    int32_t op, id;            /* what, and the model or context it is for */
    int64_t a, b;
    uint64_t c;
    uint32_t bytes;            /* payload: in data when it fits, else broadcast next */
    uint32_t pad;
    uint8_t data[DSV_COMM_CMD - 40];
} par_cmd;
_Static_assert(sizeof(par_cmd) == DSV_COMM_CMD, "a command is DSV_COMM_CMD bytes");

static void send_cmd(par_cmd *cmd, const void *payload, size_t bytes) {
    DSV_ASSERT(bytes <= UINT32_MAX);
    cmd->bytes = (uint32_t)bytes;
    if (bytes <= sizeof cmd->data && bytes) memcpy(cmd->data, payload, bytes);
    dsv_comm_cmd_send(cmd);
    if (bytes > sizeof cmd->data) dsv_comm_bcast(0, (void *)payload, bytes);
}

static void send_op(const dsv_op *op) {
    par_cmd cmd = {.op = op->code, .id = op->id, .a = op->a, .b = op->b, .c = op->c};
    send_cmd(&cmd, op->data, op->bytes);
}

/* ---- the collectives ------------------------------------------------------- */

static dsv_coll mpi_coll; /* filled at init: rank and size are known then */

/* ---- the follower ---------------------------------------------------------- */

int dsv_parallel_follow(void) {
    if (dsv_comm_size() == 1 || dsv_comm_rank() == 0) return 0;
    dsv_replay *r = dsv_replay_new();
    if (!r) die("out of memory");
    void *buf = NULL;          /* payloads */
    size_t buf_bytes = 0;
    par_cmd cmd;
    for (;;) {
        dsv_comm_cmd_recv(&cmd);
        if (cmd.op == OP_QUIT) break;
        if (cmd.bytes + (size_t)1 > buf_bytes) {
            free(buf);
            buf_bytes = (size_t)cmd.bytes + 1;
            if (!(buf = malloc(buf_bytes))) die("out of memory");
        }
        if (cmd.bytes <= sizeof cmd.data) memcpy(buf, cmd.data, cmd.bytes);
        else dsv_comm_bcast(0, buf, cmd.bytes);
        ((char *)buf)[cmd.bytes] = 0;
        dsv_op op = {.code = cmd.op, .id = cmd.id, .a = cmd.a, .b = cmd.b, .c = cmd.c, .data = buf, .bytes = cmd.bytes};
        /* A replayed call must succeed: the leader's did, on the same state. */
        if (dsv_replay_op(r, &op)) {
            char why[1200];
            snprintf(why, sizeof why, "a replayed call failed where the leader's succeeded: %s", dsv_errmsg());
            die(why);
        }
    }
    dsv_replay_free(r);
    free(buf);
    return (int)cmd.a;
}

/* ---- the public API -------------------------------------------------------- */

int dsv_parallel_init(int *argc, char ***argv) {
    int st = dsv_comm_init(argc, argv);
    if (st || dsv_comm_size() == 1) return st;
    mpi_coll = (dsv_coll){
        .rank = dsv_comm_rank(), .size = dsv_comm_size(), .sum_f32 = dsv_comm_sum_f32,
        .sum_scratch = dsv_comm_sum_scratch, .gather_cols = dsv_comm_gather_cols, .agree = agree,
        .agree_min = agree_min, .send = send_op,
    };
    dsv_coll_install(&mpi_coll);
    return DSV_OK;
}
int dsv_parallel_rank(void) { return dsv_comm_rank(); }
int dsv_parallel_size(void) { return dsv_comm_size(); }
int dsv_parallel_available(void) { return dsv_comm_available(); }

void dsv_parallel_finalize(int status) {
    if (dsv_comm_size() > 1 && dsv_comm_rank() == 0) {
        par_cmd cmd = {.op = OP_QUIT, .a = status};
        send_cmd(&cmd, NULL, 0);
    }
    dsv_coll_install(NULL);
    dsv_comm_finalize(0, status);
}
