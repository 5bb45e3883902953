/*
 * The pure functions behind the output options: uint16 conversion, typed TIFF headers and
 * their ImageJ calibration lines, NRRD volume headers, the automatic range, centre-search
 * parsing and centres, and file names.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <tiffio.h>
#include <unistd.h>

#include "../../fs/nrrd.h"
#include "../../fs/tiff.h"
#include "../../fs/volume.h"
#include "check.h"

/* The rule as documented, written out independently: round half up, clip, NaN to 0. */
static unsigned expected_u16(float v, double lo, double hi)
{
    if (isnan(v))
        return 0;
    double t = ((double)v - lo) * (65535.0 / (hi - lo));
    double r = floor(t + 0.5);
    return r < 0 ? 0 : r > 65535 ? 65535 : (unsigned)r;
}

static void test_u16_rule(void)
{
    const double lo = -0.5, hi = 2.0;
    const double s = tomo_u16_scale(lo, hi);
    float v[] = {-10.0f, -0.5f,   -0.49f, 0.0f, 0.75f,     1.999f,
                 2.0f,   2.0001f, 1e30f,  NAN,  -INFINITY, INFINITY};
    uint16_t u[sizeof v / sizeof *v];
    tomo_u16_from_float(v, sizeof v / sizeof *v, lo, s, u);
    for (size_t i = 0; i < sizeof v / sizeof *v; i++)
        CHECK_INT(u[i], expected_u16(v[i], lo, hi));
    CHECK_INT(u[0], 0);     /* below the range: clipped */
    CHECK_INT(u[1], 0);     /* lo itself */
    CHECK_INT(u[6], 65535); /* hi itself */
    CHECK_INT(u[8], 65535); /* above */
    CHECK_INT(u[9], 0);     /* NaN */
    CHECK_INT(u[10], 0);
    CHECK_INT(u[11], 65535);

    /* halves round up: t = k + 0.5 exactly with lo = 0, hi = 65535 (scale 1) */
    float half[] = {0.5f, 1.5f, 2.5f, 65533.5f, 0.49999997f};
    uint16_t h[5];
    tomo_u16_from_float(half, 5, 0.0, tomo_u16_scale(0.0, 65535.0), h);
    CHECK_INT(h[0], 1);
    CHECK_INT(h[1], 2);
    CHECK_INT(h[2], 3);
    CHECK_INT(h[3], 65534);
    CHECK_INT(h[4], 0);

    /* monotone, and every level reachable over a fine sweep */
    enum { N = 200000 };
    float *ramp = malloc(N * sizeof *ramp);
    uint16_t *out = malloc(N * sizeof *out);
    CHECK(ramp && out);
    for (int i = 0; i < N; i++)
        ramp[i] = (float)(lo + (hi - lo) * i / (N - 1.0));
    tomo_u16_from_float(ramp, N, lo, s, out);
    int monotone = 1;
    for (int i = 1; i < N; i++)
        monotone &= out[i] >= out[i - 1] && out[i] - out[i - 1] <= 1;
    CHECK(monotone);
    CHECK_INT(out[0], 0);
    CHECK_INT(out[N - 1], 65535);
    free(ramp);
    free(out);
}

static uint32_t get32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void test_uint16_tiff_reads_back(void)
{
    static unsigned char header[TOMO_TIFF_DATA_OFFSET];
    char desc[512];
    tomo_error err;
    tomo_error_clear(&err);
    int n = tomo_tiff_imagej_description(desc, sizeof desc, TOMO_SAMPLE_UINT16, 13.0, -0.25, 3.0);
    CHECK(n > 0 && (size_t)n < sizeof desc);
    strcat(desc, "tomofs test\n");
    CHECK_INT(tomo_tiff_header_of(header, 30, 20, TOMO_SAMPLE_UINT16, 6.5, desc, &err), 0);
    CHECK_INT(tomo_tiff_file_size_of(30, 20, TOMO_SAMPLE_UINT16), 4096 + 30 * 20 * 2);

    /* the resolution is exact: 1e9 pixels per 6.5e5 units of 1e-9 cm */
    CHECK_INT(get32(header + 8 + 2 + 16 * 12 + 4), 1000000000u);
    CHECK_INT(get32(header + 8 + 2 + 16 * 12 + 8), 650000u);

    char path[] = "/tmp/tomofs-u16-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    uint16_t pixels[30 * 20];
    for (int i = 0; i < 30 * 20; i++)
        pixels[i] = (uint16_t)(i * 97);
    CHECK(write(fd, header, sizeof header) == (ssize_t)sizeof header);
    CHECK(write(fd, pixels, sizeof pixels) == (ssize_t)sizeof pixels);
    close(fd);
    TIFF *tif = TIFFOpen(path, "r");
    CHECK(tif != NULL);
    if (tif) {
        uint16_t bps = 0, fmt = 0, unit = 0;
        float xres = 0;
        char *d = NULL;
        TIFFGetField(tif, TIFFTAG_BITSPERSAMPLE, &bps);
        TIFFGetField(tif, TIFFTAG_SAMPLEFORMAT, &fmt);
        TIFFGetField(tif, TIFFTAG_RESOLUTIONUNIT, &unit);
        TIFFGetField(tif, TIFFTAG_XRESOLUTION, &xres);
        TIFFGetField(tif, TIFFTAG_IMAGEDESCRIPTION, &d);
        CHECK_INT(bps, 16);
        CHECK_INT(fmt, SAMPLEFORMAT_UINT);
        CHECK_INT(unit, RESUNIT_CENTIMETER);
        CHECK_NEAR(1e4 / xres, 6.5, 1e-5); /* micrometres per pixel */
        static const char calibration[] = "ImageJ=1.11a\nunit=um\nspacing=13\ncf=0\nc0=-0.25\n";
        CHECK(d && strncmp(d, calibration, strlen(calibration)) == 0);
        CHECK_CONTAINS(d, "\nvunit=cm^-1\n");
        CHECK_CONTAINS(d, "\nmin=0\nmax=65535\n");
        const char *c1 = d ? strstr(d, "\nc1=") : NULL;
        CHECK(c1 && strtod(c1 + 4, NULL) == 3.25 / 65535.0); /* printed with 17 digits */
        uint16_t row[30];
        CHECK_INT(TIFFReadScanline(tif, row, 7, 0), 1);
        CHECK_INT(row[3], pixels[7 * 30 + 3]);
        TIFFClose(tif);
    }
    unlink(path);

    /* float32 files carry the spatial lines and the value unit, no density calibration */
    n = tomo_tiff_imagej_description(desc, sizeof desc, TOMO_SAMPLE_FLOAT32, 2.0, 0, 0);
    CHECK(n > 0);
    CHECK(strcmp(desc, "ImageJ=1.11a\nunit=um\nspacing=2\nvunit=cm^-1\n") == 0);
}

/* The value of field `name` in a NRRD header, or NULL. */
static const char *field(const char *text, const char *name, char *buf, size_t size)
{
    char key[64];
    snprintf(key, sizeof key, "\n%s: ", name);
    const char *at = strstr(text, key);
    if (!at)
        return NULL;
    at += strlen(key);
    size_t n = strcspn(at, "\n");
    snprintf(buf, size, "%.*s", (int)(n < size ? n : size - 1), at);
    return buf;
}

static void test_nrrd_header(void)
{
    static unsigned char h[TOMO_NRRD_HEADER_BYTES];
    tomo_error err;
    tomo_error_clear(&err);
    tomo_nrrd_info info = {.sizes = {64, 48, 7},
                           .sample = TOMO_SAMPLE_UINT16,
                           .spacing_um = {2.5, 2.5, 5},
                           .origin_um = {-78.75, -58.75, 2.5},
                           .quantized = 1,
                           .old_min = -0.125,
                           .old_max = 3.5,
                           .content = "tomofs slices",
                           .comments = "first line\nsecond line"};
    CHECK_INT(tomo_nrrd_header(h, &info, &err), 0);
    CHECK_INT(tomo_nrrd_file_size(&info), 4096 + 64 * 48 * 7 * 2);
    /* the first blank line, which ends the header, is at the very end */
    char text[TOMO_NRRD_HEADER_BYTES + 1];
    memcpy(text, h, sizeof h);
    text[sizeof h] = '\0';
    CHECK(strlen(text) == TOMO_NRRD_HEADER_BYTES);
    char *blank = strstr(text, "\n\n");
    CHECK(blank && blank - text == TOMO_NRRD_HEADER_BYTES - 2);
    static const char start[] = "NRRD0004\n# first line\n# second line\ncontent: tomofs slices\n";
    CHECK(strncmp(text, start, strlen(start)) == 0);
    char buf[256];
    CHECK(field(text, "type", buf, sizeof buf) && strcmp(buf, "uint16") == 0);
    CHECK(field(text, "sizes", buf, sizeof buf) && strcmp(buf, "64 48 7") == 0);
    CHECK(field(text, "space directions", buf, sizeof buf) &&
          strcmp(buf, "(2.5,0,0) (0,2.5,0) (0,0,5)") == 0);
    CHECK(field(text, "space origin", buf, sizeof buf) && strcmp(buf, "(-78.75,-58.75,2.5)") == 0);
    CHECK(field(text, "endian", buf, sizeof buf) && strcmp(buf, "little") == 0);
    CHECK(field(text, "old min", buf, sizeof buf) && strtod(buf, NULL) == -0.125);
    CHECK(field(text, "old max", buf, sizeof buf) && strtod(buf, NULL) == 3.5);
    /* the dimension comes before the fields that need it */
    CHECK(strstr(text, "dimension: 3") < strstr(text, "sizes:"));
    CHECK(strstr(text, "space: 3D-right-handed") < strstr(text, "space directions:"));

    info.sample = TOMO_SAMPLE_FLOAT32;
    info.quantized = 0;
    CHECK_INT(tomo_nrrd_header(h, &info, &err), 0);
    memcpy(text, h, sizeof h);
    CHECK(field(text, "type", buf, sizeof buf) && strcmp(buf, "float") == 0);
    CHECK(!strstr(text, "old min"));

    /* bad geometry and a header that cannot fit are errors */
    info.sizes[2] = 0;
    CHECK(tomo_nrrd_header(h, &info, &err) < 0);
    info.sizes[2] = 7;
    static char long_comment[5000];
    memset(long_comment, 'x', sizeof long_comment - 1);
    info.comments = long_comment;
    tomo_error_clear(&err);
    CHECK(tomo_nrrd_header(h, &info, &err) < 0);
    CHECK_CONTAINS(err.message, "does not fit");
}

static void test_auto_range(void)
{
    /* 0 .. 99999 shuffled, and NaNs that are ignored */
    enum { N = 100000 };
    float *v = malloc((N + 10) * sizeof *v);
    CHECK(v != NULL);
    for (int i = 0; i < N; i++)
        v[i] = (float)((i * 7919L) % N);
    for (int i = 0; i < 10; i++)
        v[N + i] = NAN;
    double lo, hi;
    tomo_volume_auto_range(v, N + 10, &lo, &hi);
    /* percentiles 99 and 99899, widened by 9980 each side: -9881 and 109879; three significant
       digits of the width 119760 are steps of 1000 */
    CHECK(lo == -10000.0);
    CHECK(hi == 110000.0);

    /* small values: printed with "%.6g", read back */
    for (int i = 0; i < 1000; i++)
        v[i] = (float)(0.0123 + 1e-5 * i);
    tomo_volume_auto_range(v, 1000, &lo, &hi);
    CHECK(lo < 0.0123 && hi > 0.0123 + 1e-5 * 999);
    char text[64];
    snprintf(text, sizeof text, "%.6g", lo);
    CHECK(strtod(text, NULL) == lo);
    snprintf(text, sizeof text, "%.6g", hi);
    CHECK(strtod(text, NULL) == hi);

    /* constant values and no values still give lo < hi */
    for (int i = 0; i < 100; i++)
        v[i] = 2.0f;
    tomo_volume_auto_range(v, 100, &lo, &hi);
    CHECK(lo < 2.0 && hi > 2.0);
    tomo_volume_auto_range(v, 0, &lo, &hi);
    CHECK(lo < hi);
    free(v);
}

static void test_center_search_parsing(void)
{
    tomo_center_sweep sw;
    tomo_error err;
    tomo_error_clear(&err);
    CHECK_INT(tomo_volume_parse_center_search("600:1200:1210:0.5", &sw, &err), 0);
    CHECK_INT(sw.slice, 600);
    CHECK_INT(sw.count, 21);
    CHECK_INT(sw.decimals, 2);
    CHECK(tomo_recon_sweep_center(&sw, 0) == 1200.0);
    CHECK(tomo_recon_sweep_center(&sw, 7) == 1203.5);
    CHECK(tomo_recon_sweep_center(&sw, 20) == 1210.0);

    /* a step of 0.1: every centre is the double of its decimal text */
    CHECK_INT(tomo_volume_parse_center_search("0:60.1:61:0.1", &sw, &err), 0);
    CHECK_INT(sw.count, 10);
    for (int k = 0; k < sw.count; k++) {
        char text[32];
        snprintf(text, sizeof text, "%.2f", 60.1 + 0.1 * k);
        CHECK(tomo_recon_sweep_center(&sw, k) == strtod(text, NULL));
    }
    /* a TO between steps is not reached; more decimals when needed */
    CHECK_INT(tomo_volume_parse_center_search("3:10:10.9:0.25", &sw, &err), 0);
    CHECK_INT(sw.count, 4);
    CHECK_INT(tomo_volume_parse_center_search("3:10:10.5:0.125", &sw, &err), 0);
    CHECK_INT(sw.decimals, 3);
    CHECK_INT(sw.count, 5);
    CHECK(tomo_recon_sweep_center(&sw, 3) == 10.375);

    const char *bad[] = {"",           "1:2:3",           "1:2:3:4:5",   "x:1:2:0.5",
                         "-1:1:2:0.5", "1.5:1:2:0.5",     "1:3:2:0.5",   "1:2:3:0",
                         "1:2:3:-1",   "1:2:3:0.1234567", "1:0:20000:1", "1:2:3:0.5x"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        tomo_error_clear(&err);
        CHECK(tomo_volume_parse_center_search(bad[i], &sw, &err) < 0);
        CHECK(err.message[0] != '\0');
    }
}

static void test_sweep_parameter_text(void)
{
    tomo_recon_params a, b;
    tomo_recon_params_default(&a);
    a.center = 100.5;
    a.pad = TOMO_PAD_ZERO;
    char ta[512], tb[512];
    tomo_recon_params_text(&a, ta, sizeof ta);
    /* zbin = 1 and no sweep: the text, and so every existing key, is unchanged */
    CHECK(!strstr(ta, "zbin") && !strstr(ta, "sweep"));
    b = a;
    b.zbin = 2;
    tomo_recon_params_text(&b, tb, sizeof tb);
    CHECK_CONTAINS(tb, " zbin=2");
    b = a;
    tomo_error err;
    tomo_error_clear(&err);
    CHECK_INT(tomo_volume_parse_center_search("5:99:101:0.5", &b.sweep, &err), 0);
    tomo_recon_params_text(&b, tb, sizeof tb);
    CHECK_CONTAINS(tb, " center_sweep=5:99.00:0.50:5");
}

TOMO_TEST_MAIN(test_u16_rule, test_uint16_tiff_reads_back, test_nrrd_header, test_auto_range,
               test_center_search_parsing, test_sweep_parameter_text)
