/* comm_local.c: the transport of a build without MPI: every process is a
 * group of one, so collectives have nothing to exchange. A launcher that
 * asks for several ranks is refused, since each rank would otherwise run
 * the whole model on its own and print every answer N times. */
#include <stdlib.h>
#include <string.h>

#include "comm.h"
#include "base/util.h"

int dsv_comm_init(int *argc, char ***argv) {
    (void)argc; (void)argv;
    const char *vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"};
    for (size_t i = 0; i < sizeof vars / sizeof *vars; i++) {
        const char *v = getenv(vars[i]);
        if (v && atoi(v) > 1)
            return dsv_error(DSV_ERR_UNSUPPORTED, "launched as %d ranks, but this dsv32 was built without MPI "
                             "(install libopenmpi-dev and rebuild with make MPI=1)", atoi(v));
    }
    return DSV_OK;
}

void dsv_comm_finalize(int abort_job, int status) { (void)abort_job; (void)status; }
int dsv_comm_rank(void) { return 0; }
int dsv_comm_size(void) { return 1; }
int dsv_comm_available(void) { return 0; }
void dsv_comm_bcast(int root, void *buf, size_t bytes) { (void)root; (void)buf; (void)bytes; }
void dsv_comm_allgather_int(int v, int *all) { all[0] = v; }
void dsv_comm_sum_f32(float *x, size_t n, float *scratch) { (void)x; (void)n; (void)scratch; }
size_t dsv_comm_sum_scratch(size_t n, int size) { (void)n; (void)size; return 0; }

void dsv_comm_gather_cols(float *out, int ld, const float *part, int rows, const int *c0, const int *n) {
    for (int i = 0; i < rows; i++) memcpy(out + (size_t)i * ld + c0[0], part + (size_t)i * n[0], (size_t)n[0] * sizeof *out);
}

void dsv_comm_cmd_send(const void *cmd) { (void)cmd; }
void dsv_comm_cmd_recv(void *cmd) { memset(cmd, 0, DSV_COMM_CMD); }
