/* dsv32.h: the public C API of dsv32, an inference engine for DeepSeek-V3.2-Exp
 * and other models built on DeepSeek Sparse Attention (DSA).
 *
 * Conventions (they hold for every function below):
 * - Functions that can fail return a dsv_status (0 on success, a negative code
 *   otherwise) and leave a one-line, human-readable reason in a thread-local
 *   buffer that dsv_errmsg() returns. The message names the file, tensor or
 *   field at fault. Library code never exits or aborts on bad input.
 * - Objects come in _open/_close or _init/_free pairs; closing NULL is a no-op.
 * - Output pointers are only written on success.
 */
#ifndef DSV32_H
#define DSV32_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum dsv_status {
    DSV_OK              =  0,
    DSV_ERR_IO          = -1, /* a file is missing or unreadable */
    DSV_ERR_FORMAT      = -2, /* a file's contents are malformed (JSON, safetensors) */
    DSV_ERR_CONFIG      = -3, /* config.json lacks a field or is inconsistent */
    DSV_ERR_MODEL       = -4, /* a tensor is missing or has the wrong dtype/shape */
    DSV_ERR_ARG         = -5, /* the caller passed an invalid argument */
    DSV_ERR_NOMEM       = -6, /* an allocation failed */
    DSV_ERR_UNSUPPORTED = -7, /* valid input this build cannot handle */
    DSV_ERR_FULL        = -8, /* a capacity (KV cache, batch) is exhausted */
} dsv_status;

/* The reason for the last failure on this thread ("" if none). */
const char *dsv_errmsg(void);
/* A short name for a status code ("ok", "i/o error", ...). */
const char *dsv_status_str(int status);

#ifdef __cplusplus
}
#endif
#endif /* DSV32_H */
