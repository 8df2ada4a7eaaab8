/* dtype.c: sizes and names of the element types (dtype.h). */
#include "dtype.h"

#include <string.h>

#include "dsv32.h"

static const struct {
    const char *name;
    size_t size;
} dtype_info[DSV_DT_COUNT] = {
    [DSV_DT_F8_E4M3] = {"F8_E4M3", 1},   [DSV_DT_BF16] = {"BF16", 2},
    [DSV_DT_F16] = {"F16", 2},           [DSV_DT_F32] = {"F32", 4},
    [DSV_DT_F64] = {"F64", 8},           [DSV_DT_I8] = {"I8", 1},
    [DSV_DT_U8] = {"U8", 1},             [DSV_DT_I16] = {"I16", 2},
    [DSV_DT_I32] = {"I32", 4},           [DSV_DT_I64] = {"I64", 8},
    [DSV_DT_BOOL] = {"BOOL", 1},         [DSV_DT_U16] = {"U16", 2},
    [DSV_DT_U32] = {"U32", 4},           [DSV_DT_U64] = {"U64", 8},
    [DSV_DT_F8_E5M2] = {"F8_E5M2", 1},   [DSV_DT_F8_E8M0] = {"F8_E8M0", 1},
    [DSV_DT_F8_E4M3FNUZ] = {"F8_E4M3FNUZ", 1},
    [DSV_DT_F8_E5M2FNUZ] = {"F8_E5M2FNUZ", 1},
    [DSV_DT_C64] = {"C64", 8},
};

/* Valid in the format, but an element is not a whole number of bytes. */
static const char *const subbyte_dtypes[] = {"F4", "F6_E2M3", "F6_E3M2"};

size_t dsv_dtype_size(dsv_dtype dt) {
    return (unsigned)dt < DSV_DT_COUNT ? dtype_info[dt].size : 0;
}

const char *dsv_dtype_name(dsv_dtype dt) {
    return (unsigned)dt < DSV_DT_COUNT ? dtype_info[dt].name : "?";
}

int dsv_dtype_from_name(const char *name, dsv_dtype *out) {
    for (int i = 0; i < DSV_DT_COUNT; i++)
        if (!strcmp(name, dtype_info[i].name)) { *out = (dsv_dtype)i; return DSV_OK; }
    for (size_t i = 0; i < sizeof subbyte_dtypes / sizeof *subbyte_dtypes; i++)
        if (!strcmp(name, subbyte_dtypes[i])) return DSV_ERR_UNSUPPORTED;
    return DSV_ERR_FORMAT;
}

