/* test_util.c: the error-message plumbing. */
#include "test.h"
#include "base/util.h"

TEST(error_message_and_prefix) {
    CHECK_EQ_INT(dsv_error(DSV_ERR_MODEL, "tensor %s missing", "x.weight"), DSV_ERR_MODEL);
    CHECK_STR(dsv_errmsg(), "tensor x.weight missing");
    dsv_error_prefix(DSV_ERR_MODEL, "%s", "model.safetensors");
    CHECK_STR(dsv_errmsg(), "model.safetensors: tensor x.weight missing");
    CHECK_STR(dsv_status_str(DSV_ERR_IO), "i/o error");
}
