/*
 * Fuzz target: HiPic headers and streams (recon/spring8.c tomo_hipic_parse_header, recon/his.c).
 * The input is parsed as an .img header and as a .his header, then written to a file and
 * opened as a .his stream, whose frames are read.
 */
#include <stdlib.h>

#include "../../recon/his.h"
#include "../../recon/spring8.h"
#include "fuzz.h"

#define FUZZ_MAX_PIXELS (1 << 20)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    tomo_error err;
    tomo_hipic_header img;
    tomo_error_clear(&err);
    tomo_hipic_parse_header("q0001.img", data, size, &img, &err);
    tomo_his_header his_hdr;
    tomo_error_clear(&err);
    tomo_his_parse_header("a.his", 0, data, size, &his_hdr, &err);

    const char *path = fuzz_write("a.his", data, size);
    if (!path)
        return 0;
    tomo_his his;
    tomo_error_clear(&err);
    if (tomo_his_open(path, &his, &err) < 0)
        return 0;
    if ((int64_t)his.width * his.height <= FUZZ_MAX_PIXELS) {
        float *buf = malloc((size_t)his.width * (size_t)his.height * sizeof *buf);
        for (int64_t k = 1; buf && k <= his.frames && k <= 16; k++) {
            tomo_error_clear(&err);
            tomo_his_read_rows(&his, k, 0, his.height, buf, &err);
            tomo_error_clear(&err);
            tomo_his_read_rows(&his, k, his.height - 1, 1, buf, &err);
        }
        free(buf);
    }
    tomo_his_close(&his);
    return 0;
}
