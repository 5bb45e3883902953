#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

void tomo_error_clear(tomo_error *err)
{
    if (!err)
        return;
    err->code = TOMO_OK;
    err->message[0] = '\0';
}

int tomo_error_set(tomo_error *err, int code, const char *fmt, ...)
{
    if (code < 0)
        code = -code;
    if (err && err->code == TOMO_OK) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
        err->code = code;
    }
    return -code;
}

const char *tomo_error_name(int code)
{
    switch (code < 0 ? -code : code) {
    case TOMO_OK:
        return "ok";
    case TOMO_E_IO:
        return "io";
    case TOMO_E_FORMAT:
        return "format";
    case TOMO_E_INVALID:
        return "invalid";
    case TOMO_E_NOMEM:
        return "nomem";
    case TOMO_E_UNSUPPORTED:
        return "unsupported";
    case TOMO_E_INTERNAL:
        return "internal";
    case TOMO_E_CANCELLED:
        return "cancelled";
    }
    return "unknown";
}
