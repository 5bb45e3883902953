/*
 * common/error.h - explicit error codes and one human-readable message per failure.
 *
 * Every fallible function in tomofs returns 0 on success or a negative TOMO_E_* code, and
 * fills a caller-provided tomo_error with one line that names the file and the problem,
 * e.g. "scan/q0042.img: truncated: 1048640 bytes, expected 2097216". The message is what the
 * user sees; the code is what the program branches on.
 */
#ifndef TOMO_ERROR_H
#define TOMO_ERROR_H

#include <stddef.h>

enum tomo_error_code {
    TOMO_OK = 0,
    TOMO_E_IO = 1,          /* a read or write failed, or a file is missing */
    TOMO_E_FORMAT = 2,      /* a file exists but its contents are not what they must be */
    TOMO_E_INVALID = 3,     /* a parameter or option value is out of range */
    TOMO_E_NOMEM = 4,       /* an allocation failed */
    TOMO_E_UNSUPPORTED = 5, /* valid input that this build cannot handle */
    TOMO_E_INTERNAL = 6,    /* a bug: an invariant did not hold */
    TOMO_E_CANCELLED = 7,   /* the work was abandoned (shutdown) */
};

#define TOMO_ERROR_MESSAGE_MAX 1024

typedef struct tomo_error {
    int code;                             /* a TOMO_E_* value, TOMO_OK when nothing failed */
    char message[TOMO_ERROR_MESSAGE_MAX]; /* one line, no trailing newline */
} tomo_error;

/* Clears *err (code TOMO_OK, empty message). err may be NULL. */
void tomo_error_clear(tomo_error *err);

/*
 * Records a failure and returns -code, so a caller can write
 *     return tomo_error_set(err, TOMO_E_FORMAT, "%s: bad magic", path);
 * err may be NULL (the message is then dropped). The first failure recorded wins: a later
 * call on an error that already holds a message keeps the original, which is the cause.
 */
int tomo_error_set(tomo_error *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Short stable name of a code ("io", "format", ...), for logs and tests. */
const char *tomo_error_name(int code);

#endif
