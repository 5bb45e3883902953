#include <stdint.h>
#include <tiffio.h>
#include <unistd.h>

#include "../../fs/tiff.h"
#include "check.h"

static uint32_t get32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void test_size_from_geometry(void)
{
    CHECK_INT(tomo_tiff_file_size(256, 256), 4096 + 256 * 256 * 4);
    CHECK_INT(tomo_tiff_file_size(4432, 4432), 4096 + 4432LL * 4432 * 4);
}

static void test_header_is_deterministic_and_valid(void)
{
    static unsigned char a[TOMO_TIFF_DATA_OFFSET], b[TOMO_TIFF_DATA_OFFSET];
    tomo_error err;
    tomo_error_clear(&err);
    CHECK_INT(tomo_tiff_header(a, 300, 200, 6.5, "hello\nworld", &err), 0);
    CHECK_INT(tomo_tiff_header(b, 300, 200, 6.5, "hello\nworld", &err), 0);
    CHECK(memcmp(a, b, sizeof a) == 0);
    CHECK(memcmp(a, "II*\0", 4) == 0);
    CHECK_INT(get32(a + 4), 8);

    /* libtiff reads it back, pixels included */
    char path[] = "/tmp/tomofs-tiff-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    float pixels[300 * 200];
    for (int i = 0; i < 300 * 200; i++)
        pixels[i] = (float)i * 0.25f - 7.0f;
    CHECK(write(fd, a, sizeof a) == (ssize_t)sizeof a);
    CHECK(write(fd, pixels, sizeof pixels) == (ssize_t)sizeof pixels);
    close(fd);
    TIFF *tif = TIFFOpen(path, "r");
    CHECK(tif != NULL);
    if (tif) {
        uint32_t w = 0, h = 0;
        uint16_t bps = 0, fmt = 0, unit = 0;
        float xres = 0;
        char *desc = NULL;
        TIFFGetField(tif, TIFFTAG_IMAGEWIDTH, &w);
        TIFFGetField(tif, TIFFTAG_IMAGELENGTH, &h);
        TIFFGetField(tif, TIFFTAG_BITSPERSAMPLE, &bps);
        TIFFGetField(tif, TIFFTAG_SAMPLEFORMAT, &fmt);
        TIFFGetField(tif, TIFFTAG_RESOLUTIONUNIT, &unit);
        TIFFGetField(tif, TIFFTAG_XRESOLUTION, &xres);
        TIFFGetField(tif, TIFFTAG_IMAGEDESCRIPTION, &desc);
        CHECK_INT(w, 300);
        CHECK_INT(h, 200);
        CHECK_INT(bps, 32);
        CHECK_INT(fmt, SAMPLEFORMAT_IEEEFP);
        CHECK_INT(unit, RESUNIT_CENTIMETER);
        CHECK_NEAR(xres, 1e4 / 6.5, 0.01);
        CHECK(desc && strcmp(desc, "hello\nworld") == 0);
        float row[300];
        CHECK_INT(TIFFReadScanline(tif, row, 123, 0), 1);
        CHECK_NEAR(row[7], pixels[123 * 300 + 7], 0);
        TIFFClose(tif);
    }
    unlink(path);
}

static void test_rejects_bad_arguments(void)
{
    static unsigned char h[TOMO_TIFF_DATA_OFFSET];
    static char long_desc[TOMO_TIFF_DESCRIPTION_MAX + 2];
    memset(long_desc, 'a', sizeof long_desc - 1);
    tomo_error err;
    tomo_error_clear(&err);
    CHECK(tomo_tiff_header(h, 10, 10, 1.0, long_desc, &err) < 0);
    tomo_error_clear(&err);
    CHECK(tomo_tiff_header(h, 0, 10, 1.0, "", &err) < 0);
    tomo_error_clear(&err);
    CHECK(tomo_tiff_header(h, 10, 10, 0.0, "", &err) < 0);
    CHECK_CONTAINS(err.message, "pixel size");
}

TOMO_TEST_MAIN(test_size_from_geometry, test_header_is_deterministic_and_valid,
               test_rejects_bad_arguments)
