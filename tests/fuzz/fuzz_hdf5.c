/*
 * Fuzz target: HDF5 metadata (recon/h5io.c, recon/dxchange.c, recon/nxtomo.c). The input is
 * written to a file, which is opened as Data Exchange and as NXtomo, exactly as tomofs opens
 * it (dry run in a child process first, see tomo_h5_open_checked); frames of what opens are read.
 */
#include <stdlib.h>

#include "../../recon/scan.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* The dry run that guards every HDF5 open must give up before libFuzzer's 10 s do. */
    setenv("TOMO_HDF5_PROBE_TIMEOUT", "3", 0);
    const char *path = fuzz_write("scan.h5", data, size);
    if (!path)
        return 0;
    static const char *const formats[] = {"dxchange", "nxtomo"};
    for (int i = 0; i < 2; i++) {
        tomo_scan *scan = NULL;
        tomo_error err;
        tomo_error_clear(&err);
        if (tomo_scan_open(path, formats[i], &scan, &err) == 0) {
            fuzz_read_scan(scan);
            tomo_scan_close(scan);
        }
    }
    return 0;
}
