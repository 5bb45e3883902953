/* Fuzz target: output.log text (recon/spring8.c, tomo_outputlog_parse). */
#include <stdlib.h>

#include "../../recon/spring8.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    tomo_log_entry *entries = NULL;
    int count = 0;
    tomo_error err;
    tomo_error_clear(&err);
    if (tomo_outputlog_parse("output.log", (const char *)data, size, &entries, &count, &err) == 0)
        free(entries);
    return 0;
}
