/*
 * Fuzz target: TIFF frames (recon/tiffframe.c through recon/tiffseries.c). The input becomes
 * the one projection and the one flat of a TIFF series whose angles file says 0; the series is
 * opened and every frame read.
 */
#include <stdio.h>

#include "../../recon/scan.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    if (!ready) {
        if (!fuzz_write("angles.txt", (const uint8_t *)"0\n", 2))
            return 0;
        ready = 1;
    }
    if (!fuzz_write("p_0.tif", data, size) || !fuzz_write("flat.tif", data, size))
        return 0;
    tomo_scan *scan = NULL;
    tomo_error err;
    tomo_error_clear(&err);
    if (tomo_scan_open(fuzz_scratch(), "tiff-series", &scan, &err) == 0) {
        fuzz_read_scan(scan);
        tomo_scan_close(scan);
    }
    return 0;
}
