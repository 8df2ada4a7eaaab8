/* test_replay.c: a follower's replay of the leader's operations
 * (model/context.c's table), driven in one process: ops arrive as the
 * transport delivers them (codes, ids, scalars, a payload), are applied
 * through the same table entries as the leader's calls, and a malformed or
 * impossible op is an error, never a crash. The split itself is tested
 * under mpirun in test_mpi.c. */
#include <string.h>

#include "dsv32.h"
#include "model/coll.h"
#include "test.h"

TEST(replay_applies_ops_and_refuses_bad_ones) {
    dsv_replay *r = dsv_replay_new();
    REQUIRE(r);
    const char *dir = test_shared("conformance/public_sparse_bf16/hf");
    dsv_op op = {.code = DSV_OP_MODEL_OPEN, .id = -1, .a = -1, .c = 3, .data = dir, .bytes = strlen(dir) + 1};
    CHECK_EQ_INT(dsv_replay_op(r, &op), DSV_OK);

    dsv_context_params p = dsv_context_default_params();
    p.n_ctx = 128;
    p.n_batch = 64;
    p.n_threads = 1;
    op = (dsv_op){.code = DSV_OP_CONTEXT_OPEN, .id = 3, .c = 5, .data = &p, .bytes = sizeof p};
    CHECK_EQ_INT(dsv_replay_op(r, &op), DSV_OK);

    /* A forward call of 10 tokens (no logits: a follower of an unsplit
     * model has nowhere to put them), packed as the leader packs it. */
    int32_t call[1 + 3 + 10] = {1, 0, 10, DSV_LOGITS_NONE};
    for (int i = 0; i < 10; i++) call[4 + i] = 3 + i;
    op = (dsv_op){.code = DSV_OP_FORWARD, .id = 5, .data = call, .bytes = sizeof call};
    CHECK_EQ_INT(dsv_replay_op(r, &op), DSV_OK);
    op = (dsv_op){.code = DSV_OP_FILL, .id = 5, .a = 0, .b = 70, .c = 9};
    CHECK_EQ_INT(dsv_replay_op(r, &op), DSV_OK);
    op = (dsv_op){.code = DSV_OP_TRUNCATE, .id = 5, .a = 0, .b = 80};
    CHECK_EQ_INT(dsv_replay_op(r, &op), DSV_OK);
    op = (dsv_op){.code = DSV_OP_PAGE_REF, .id = 5, .a = 0};
    CHECK_EQ_INT(dsv_replay_op(r, &op), DSV_OK);
    op = (dsv_op){.code = DSV_OP_PAGE_UNREF, .id = 5, .a = 0};
    CHECK_EQ_INT(dsv_replay_op(r, &op), DSV_OK);

    /* The sequence now holds 80 tokens: longer is refused, as the leader's call would be. */
    op = (dsv_op){.code = DSV_OP_TRUNCATE, .id = 5, .a = 0, .b = 81};
    CHECK_EQ_INT(dsv_replay_op(r, &op), DSV_ERR_ARG);
    CHECK(strstr(dsv_errmsg(), "truncate") != NULL);
    /* A forward call whose entry claims more tokens than the payload holds. */
    call[2] = 11;
    op = (dsv_op){.code = DSV_OP_FORWARD, .id = 5, .data = call, .bytes = sizeof call};
    CHECK_EQ_INT(dsv_replay_op(r, &op), DSV_ERR_ARG);
    op = (dsv_op){.code = DSV_OP_FORWARD, .id = 5, .data = call, .bytes = 0};
    CHECK_EQ_INT(dsv_replay_op(r, &op), DSV_ERR_ARG);
    /* Unknown operations and objects never opened. */
    op = (dsv_op){.code = DSV_OP_COUNT, .id = 5};
    CHECK_EQ_INT(dsv_replay_op(r, &op), DSV_ERR_ARG);
    op = (dsv_op){.code = -1};
    CHECK_EQ_INT(dsv_replay_op(r, &op), DSV_ERR_ARG);
    op = (dsv_op){.code = DSV_OP_TRUNCATE, .id = 4, .a = 0, .b = 0};
    CHECK_EQ_INT(dsv_replay_op(r, &op), DSV_ERR_ARG);
    CHECK(strstr(dsv_errmsg(), "no context 4") != NULL);
    op = (dsv_op){.code = DSV_OP_CONTEXT_OPEN, .id = 99, .c = 6, .data = &p, .bytes = sizeof p};
    CHECK_EQ_INT(dsv_replay_op(r, &op), DSV_ERR_ARG);

    /* Closing the context, then an op on it, which no longer exists. */
    op = (dsv_op){.code = DSV_OP_CONTEXT_CLOSE, .id = 5};
    CHECK_EQ_INT(dsv_replay_op(r, &op), DSV_OK);
    op = (dsv_op){.code = DSV_OP_PAGE_REF, .id = 5, .a = 0};
    CHECK_EQ_INT(dsv_replay_op(r, &op), DSV_ERR_ARG);
    dsv_replay_free(r); /* closes the model still open */
}
