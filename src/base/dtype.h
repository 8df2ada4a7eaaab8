/* dtype.h: the element types of the tensors the engine reads (the
 * safetensors set), their sizes and names. Every layer speaks of weights by
 * these; the file formats map their own type codes onto them. */
#ifndef DSV_DTYPE_H
#define DSV_DTYPE_H

#include <stddef.h>

/* The safetensors dtypes whose elements are whole bytes. The sub-byte types
 * of the format (F4, F6_E2M3, F6_E3M2) are recognised and refused with
 * DSV_ERR_UNSUPPORTED. */
typedef enum dsv_dtype {
    DSV_DT_F8_E4M3,     /* OCP E4M3FN: the DeepSeek FP8 weight format */
    DSV_DT_BF16,
    DSV_DT_F16,
    DSV_DT_F32,
    DSV_DT_F64,
    DSV_DT_I8,
    DSV_DT_U8,
    DSV_DT_I16,
    DSV_DT_I32,
    DSV_DT_I64,
    DSV_DT_BOOL,
    DSV_DT_U16,
    DSV_DT_U32,
    DSV_DT_U64,
    DSV_DT_F8_E5M2,
    DSV_DT_F8_E8M0,     /* power-of-two scales (ue8m0) */
    DSV_DT_F8_E4M3FNUZ,
    DSV_DT_F8_E5M2FNUZ,
    DSV_DT_C64,         /* complex: two F32 */
    DSV_DT_COUNT
} dsv_dtype;

/* Bytes per element; 0 for a value outside the enum. */
size_t dsv_dtype_size(dsv_dtype dt);
/* The format's spelling ("F8_E4M3", "BF16", ...); "?" outside the enum. */
const char *dsv_dtype_name(dsv_dtype dt);
/* Parses the format's spelling (exact, case-sensitive). Returns DSV_OK and
 * sets *out, or DSV_ERR_UNSUPPORTED for a sub-byte type, or DSV_ERR_FORMAT
 * for an unknown name. */
int dsv_dtype_from_name(const char *name, dsv_dtype *out);

#endif
