/* comm.h: the transport between the processes (ranks) a model is split
 * across (internal).
 *
 * Two backends with one set of functions, exactly one of them in a build:
 * comm_mpi.c (Open MPI, `make MPI=1`) and comm_local.c (a build without MPI:
 * always a group of one). Under MPI a process joins the group only when a
 * launcher started it (mpirun sets OMPI_COMM_WORLD_SIZE, PMIx launchers
 * PMIX_RANK, Hydra PMI_SIZE); a plain `dsv32` stays a group of one, so at
 * size 1 every collective below returns at once.
 *
 * Collectives must be called by every rank in the same order (the leader's
 * calls are replayed by the followers, see parallel.c, so they are). Nothing
 * here returns an error: a failed MPI call, or a rank that dies, ends the
 * whole job through MPI's default error handler (MPI_ERRORS_ARE_FATAL) and
 * the launcher, so no rank waits forever for a dead peer. */
#ifndef DSV_COMM_H
#define DSV_COMM_H

#include <stddef.h>
#include <stdint.h>

/* Joins the launcher's group if there is one (see dsv_parallel_init). */
int dsv_comm_init(int *argc, char ***argv);
/* Leaves it; `abort_job` ends every rank at once (MPI_Abort) instead. */
void dsv_comm_finalize(int abort_job, int status);
int dsv_comm_rank(void);
int dsv_comm_size(void);
/* 1 if this build has a multi-process backend. */
int dsv_comm_available(void);

/* The root rank's bytes to every rank. */
void dsv_comm_bcast(int root, void *buf, size_t bytes);
/* Every rank's int: all[r] = rank r's v. */
void dsv_comm_allgather_int(int v, int *all);

/* x[i] = Σ_r x_r[i] over the ranks, added in rank order ((x_0 + x_1) + x_2)
 * + ... in fp32, so every rank ends with the same bits and the result does
 * not depend on which algorithm MPI would pick for this size (MPI_Allreduce
 * promises neither). scratch: dsv_comm_sum_scratch(n) floats. */
void dsv_comm_sum_f32(float *x, size_t n, float *scratch);
size_t dsv_comm_sum_scratch(size_t n, int size);

/* Rank 0 collects a matrix split by columns: out [rows][ld] gets rank r's
 * part [rows][n[r]] at column c0[r] (rank 0's own part included). Other
 * ranks only send (out may be NULL there). */
void dsv_comm_gather_cols(float *out, int ld, const float *part, int rows, const int *c0, const int *n);

/* The leader's command channel: rank 0 sends DSV_COMM_CMD bytes to every
 * other rank, which waits for them without keeping a core busy once the
 * leader has been quiet for a while (an idle server). */
#define DSV_COMM_CMD 512
void dsv_comm_cmd_send(const void *cmd);
void dsv_comm_cmd_recv(void *cmd);

#endif
