/*
 * Unit tests of the SPring-8 scan reader (recon/spring8.c) and the generic scan layer
 * (recon/scan.c), on small synthetic scans written to a temporary directory.
 */
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <tiffio.h>

#include "../../recon/scan.h"
#include "../../recon/spring8.h"
#define FIXTURE_TMP_NAME "tomo_s8"
#include "fixture.h"

#define DARK_ID 100000

/* A pixel value that differs per frame, row and column, with both bytes non-trivial. */
static unsigned pix(int id, int x, int y)
{
    return ((unsigned)id * 7919u + (unsigned)y * 1031u + (unsigned)x * 257u + 11u) & 0xffffu;
}

/* ---- HiPic frames ---- */

static void write_img(const char *dir, const char *name, int w, int h, int comment_length, int id)
{
    size_t len = TOMO_HIPIC_HEADER_SIZE + (size_t)comment_length + 2 * (size_t)w * (size_t)h;
    unsigned char *b = malloc(len);
    tomo_hipic_write_header(b, w, h, comment_length);
    memset(b + TOMO_HIPIC_HEADER_SIZE, 'c', (size_t)comment_length);
    unsigned char *p = b + TOMO_HIPIC_HEADER_SIZE + comment_length;
    for (int y = 0; y < h; y++) {
        for (int x = 0; x < w; x++) {
            unsigned v = pix(id, x, y);
            *p++ = (unsigned char)(v & 0xff);
            *p++ = (unsigned char)(v >> 8);
        }
    }
    write_bytes(dir, name, b, len);
    free(b);
}

/* ---- TIFF frames ---- */

typedef struct tif_opts {
    int bits;
    int compression;
    int rows_per_strip;
    int big_endian;
    int photometric;
    int predictor;
    int tiled;
} tif_opts;

static const tif_opts TIF_PLAIN = {16, COMPRESSION_NONE, 1, 0, PHOTOMETRIC_MINISBLACK, 0, 0};

static void write_tif_tiles(TIFF *t, int w, int h, int id)
{
    uint32_t tw = 16, th = 16;
    TIFFSetField(t, TIFFTAG_TILEWIDTH, tw);
    TIFFSetField(t, TIFFTAG_TILELENGTH, th);
    uint16_t *tile = calloc(tw * th, sizeof *tile);
    for (uint32_t ty = 0; ty < (uint32_t)h; ty += th) {
        for (uint32_t tx = 0; tx < (uint32_t)w; tx += tw) {
            for (uint32_t y = 0; y < th; y++) {
                for (uint32_t x = 0; x < tw; x++)
                    tile[y * tw + x] = (uint16_t)pix(id, (int)(tx + x), (int)(ty + y));
            }
            TIFFWriteTile(t, tile, tx, ty, 0, 0);
        }
    }
    free(tile);
}

static void write_tif_lines(TIFF *t, int w, int h, int id, int bits)
{
    /* libtiff may byte-swap the buffer in place, so each row is built afresh. */
    void *row = malloc((size_t)w * 2);
    for (int y = 0; y < h; y++) {
        for (int x = 0; x < w; x++) {
            if (bits == 8)
                ((uint8_t *)row)[x] = (uint8_t)pix(id, x, y);
            else
                ((uint16_t *)row)[x] = (uint16_t)pix(id, x, y);
        }
        if (TIFFWriteScanline(t, row, (uint32_t)y, 0) < 0) {
            fprintf(stderr, "TIFFWriteScanline failed\n");
            exit(1);
        }
    }
    free(row);
}

static void write_tif(const char *dir, const char *name, int w, int h, int id, const tif_opts *o)
{
    char path[512];
    path_of(path, sizeof path, dir, name);
    TIFF *t = TIFFOpen(path, o->big_endian ? "wb" : "wl");
    if (!t) {
        fprintf(stderr, "%s: cannot create\n", path);
        exit(1);
    }
    TIFFSetField(t, TIFFTAG_IMAGEWIDTH, (uint32_t)w);
    TIFFSetField(t, TIFFTAG_IMAGELENGTH, (uint32_t)h);
    TIFFSetField(t, TIFFTAG_BITSPERSAMPLE, (uint16_t)o->bits);
    TIFFSetField(t, TIFFTAG_SAMPLESPERPIXEL, (uint16_t)1);
    TIFFSetField(t, TIFFTAG_PHOTOMETRIC, (uint16_t)o->photometric);
    TIFFSetField(t, TIFFTAG_PLANARCONFIG, (uint16_t)PLANARCONFIG_CONTIG);
    TIFFSetField(t, TIFFTAG_COMPRESSION, (uint16_t)o->compression);
    if (o->predictor)
        TIFFSetField(t, TIFFTAG_PREDICTOR, (uint16_t)o->predictor);
    if (o->tiled) {
        write_tif_tiles(t, w, h, id);
    } else {
        TIFFSetField(t, TIFFTAG_ROWSPERSTRIP, (uint32_t)o->rows_per_strip);
        write_tif_lines(t, w, h, id, o->bits);
    }
    TIFFClose(t);
}

/* ---- whole scans ---- */

/* Writes dark and every frame output.log lists, named with `name_fmt` (e.g. "q%04d.img"). */
static void write_scan(const char *dir, const char *log, int w, int h, const char *name_fmt,
                       const tif_opts *tif)
{
    write_text(dir, "output.log", log);
    if (tif)
        write_tif(dir, "dark.tif", w, h, DARK_ID, tif);
    else
        write_img(dir, "dark.img", w, h, 5, DARK_ID);
    tomo_log_entry *e;
    int n;
    tomo_error err;
    tomo_error_clear(&err);
    if (tomo_outputlog_parse("log", log, strlen(log), &e, &n, &err) != 0) {
        fprintf(stderr, "bad test log: %s\n", err.message);
        exit(1);
    }
    for (int i = 0; i < n; i++) {
        char name[64];
        snprintf(name, sizeof name, name_fmt, e[i].frame);
        if (tif)
            write_tif(dir, name, w, h, e[i].frame, tif);
        else
            write_img(dir, name, w, h, 0, e[i].frame);
    }
    free(e);
}

/* Reads rows [z0, z0+nz) of a frame and compares them with pix(id, ...). */
static int frame_matches(const tomo_scan *scan, tomo_frame_kind kind, int index, int id, int z0,
                         int nz)
{
    float *buf = malloc((size_t)scan->width * (size_t)nz * sizeof *buf);
    tomo_error err;
    tomo_error_clear(&err);
    int rc = tomo_scan_read_rows(scan, kind, index, z0, nz, buf, &err);
    int ok = rc == 0;
    if (rc != 0)
        fprintf(stderr, "read_rows(%d, %d): %s\n", (int)kind, index, err.message);
    for (int y = 0; ok && y < nz; y++) {
        for (int x = 0; ok && x < scan->width; x++) {
            float want = (float)pix(id, x, z0 + y);
            if (buf[(size_t)y * (size_t)scan->width + (size_t)x] != want) {
                fprintf(stderr, "kind %d index %d pixel (%d, %d): %g, expected %g\n", (int)kind,
                        index, x, z0 + y, buf[(size_t)y * (size_t)scan->width + (size_t)x], want);
                ok = 0;
            }
        }
    }
    free(buf);
    return ok;
}

/* Every row band of every frame reads back exactly. */
static int scan_matches(const tomo_scan *scan)
{
    int ok = 1;
    for (int m = 0; m < scan->n_proj; m++) {
        ok &= frame_matches(scan, TOMO_FRAME_PROJECTION, m, scan->proj_frame[m], 0, scan->rows);
        for (int z0 = 0; z0 < scan->rows; z0++) {
            for (int nz = 1; z0 + nz <= scan->rows; nz++)
                ok &= frame_matches(scan, TOMO_FRAME_PROJECTION, m, scan->proj_frame[m], z0, nz);
        }
    }
    for (int f = 0; f < scan->n_flat; f++)
        ok &= frame_matches(scan, TOMO_FRAME_FLAT, f, scan->flat_frame[f], 0, scan->rows);
    ok &= frame_matches(scan, TOMO_FRAME_DARK, 0, DARK_ID, 0, scan->rows);
    return ok;
}

static int open_scan(const char *dir, tomo_scan **scan, tomo_error *err)
{
    tomo_error_clear(err);
    return tomo_scan_open(dir, NULL, scan, err);
}

/* Flats 1, 2; projections 3..5 logged out of angle order; flat 6. */
static const char *const SMALL_LOG = "1 0.0 0.0 0\n"
                                     "2 1.0 0.0 0\n"
                                     "3 2.0 2.0 1\n"
                                     "4 3.0 0.0 1\n"
                                     "5 4.0 1.0 1\n"
                                     "6 5.0 0.0 0\n";

/* ------------------------------------------------------------------------------------------ */

static void test_outputlog_good(void)
{
    const char *text = "  1   0.5   0.0   0  \r\n"
                       "\r\n"
                       "2\t1.0\t0.25\t1\r\n"
                       "   \n"
                       "\n"
                       "3 1.5 -0.25 1\n"
                       "04 2e0 +1.0 0";
    tomo_log_entry *e = NULL;
    int n = 0;
    tomo_error err;
    tomo_error_clear(&err);
    CHECK_INT(tomo_outputlog_parse("SCAN/output.log", text, strlen(text), &e, &n, &err), 0);
    CHECK_INT(n, 4);
    if (n == 4) {
        CHECK_INT(e[0].frame, 1);
        CHECK_NEAR(e[0].time, 0.5, 0);
        CHECK_INT(e[0].flag, 0);
        CHECK_INT(e[1].frame, 2);
        CHECK_NEAR(e[1].angle, 0.25, 0);
        CHECK_INT(e[1].flag, 1);
        CHECK_NEAR(e[2].angle, -0.25, 0);
        CHECK_INT(e[3].frame, 4);
        CHECK_NEAR(e[3].time, 2.0, 0);
        CHECK_INT(e[3].flag, 0);
    }
    free(e);

    /* Not NUL-terminated: only `len` bytes count. */
    const char trunc[] = "7 1 2 1\n8 1 2 1XXXX";
    tomo_error_clear(&err);
    CHECK_INT(tomo_outputlog_parse("L", trunc, strlen(trunc) - 4, &e, &n, &err), 0);
    CHECK_INT(n, 2);
    free(e);

    /* Old Mac line ends still count lines. */
    const char *cr = "1 0 0 0\r2 0 0 1\rbad\r";
    tomo_error_clear(&err);
    CHECK(tomo_outputlog_parse("L", cr, strlen(cr), &e, &n, &err) < 0);
    CHECK_CONTAINS(err.message, "L:3:");

    tomo_error_clear(&err);
    CHECK_INT(tomo_outputlog_parse("L", "", 0, &e, &n, &err), 0);
    CHECK_INT(n, 0);
    free(e);
}

static void check_bad_log(const char *text, const char *want1, const char *want2)
{
    tomo_log_entry *e = (tomo_log_entry *)&e;
    int n = -1;
    tomo_error err;
    tomo_error_clear(&err);
    int rc = tomo_outputlog_parse("SCAN/output.log", text, strlen(text), &e, &n, &err);
    CHECK_INT(rc, -TOMO_E_FORMAT);
    CHECK_INT(err.code, TOMO_E_FORMAT);
    CHECK(e == NULL);
    CHECK_INT(n, 0);
    CHECK_CONTAINS(err.message, want1);
    CHECK_CONTAINS(err.message, want2);
}

static void test_outputlog_bad(void)
{
    check_bad_log("1 0 0 0\nabc\n",
                  "SCAN/output.log:2: expected 'frame time angle flag', got 'abc'", "");
    check_bad_log("1 0 0 2\n", "SCAN/output.log:1:", "flag must be 0 (flat) or 1 (projection)");
    check_bad_log("1 0 0 0\n2 0 0 1\n\n1 0 0 1\n",
                  "SCAN/output.log:4:", "frame 1 is listed again (first on line 1)");
    check_bad_log("5 0 0 0\n6 0 0 1\n6 0 0 1\n5 0 0 1\n",
                  "SCAN/output.log:3:", "frame 6 is listed again (first on line 2)");
    check_bad_log("1 nan 0 0\n", "SCAN/output.log:1:", "time must be a finite number, got 'nan'");
    check_bad_log("1 0 0 0\n2 0 inf 1\n", "SCAN/output.log:2:", "angle must be a finite");
    check_bad_log("1 0 0\n", "SCAN/output.log:1:", "expected 'frame time angle flag'");
    check_bad_log("1 0 0 1 5\n", "SCAN/output.log:1:", "expected");
    check_bad_log("1.5 0 0 1\n", "SCAN/output.log:1:", "got '1.5 0 0 1'");
    check_bad_log("1 0 0 1.0\n", "SCAN/output.log:1:", "expected");
    check_bad_log("1 0x 0 1\n", "SCAN/output.log:1:", "expected");
    check_bad_log("-1 0 0 1\n", "SCAN/output.log:1:", "negative frame");
    check_bad_log("99999999999 0 0 1\n", "SCAN/output.log:1:", "expected");
}

static void test_hipic_header(void)
{
    unsigned char b[TOMO_HIPIC_HEADER_SIZE + 8];
    tomo_hipic_header h;
    tomo_error err;

    tomo_hipic_write_header(b, 1024, 512, 300);
    tomo_error_clear(&err);
    CHECK_INT(tomo_hipic_parse_header("d/q1.img", b, sizeof b, &h, &err), 0);
    CHECK_INT(h.width, 1024);
    CHECK_INT(h.height, 512);
    CHECK_INT(h.comment_length, 300);
    CHECK_INT(h.type, TOMO_HIPIC_TYPE_U16);
    CHECK_INT(h.data_offset, 364);
    CHECK(b[0] == 'I' && b[1] == 'M' && b[4] == 0x00 && b[5] == 0x04 && b[12] == 2);

    tomo_hipic_write_header(b, 65535, 3, 0);
    tomo_error_clear(&err);
    CHECK_INT(tomo_hipic_parse_header("x", b, TOMO_HIPIC_HEADER_SIZE, &h, &err), 0);
    CHECK_INT(h.width, 65535);

    b[1] = 'N';
    tomo_error_clear(&err);
    CHECK_INT(tomo_hipic_parse_header("d/q1.img", b, sizeof b, &h, &err), -TOMO_E_FORMAT);
    CHECK_CONTAINS(err.message, "d/q1.img: not a HiPic 16-bit image");

    tomo_hipic_write_header(b, 4, 4, 0);
    b[12] = 0;
    tomo_error_clear(&err);
    CHECK_INT(tomo_hipic_parse_header("d/q2.img", b, sizeof b, &h, &err), -TOMO_E_FORMAT);
    CHECK_CONTAINS(err.message, "d/q2.img: not a HiPic 16-bit image (type 0)");

    tomo_hipic_write_header(b, 4, 4, 0);
    tomo_error_clear(&err);
    CHECK_INT(tomo_hipic_parse_header("d/q3.img", b, 63, &h, &err), -TOMO_E_FORMAT);
    CHECK_CONTAINS(err.message, "d/q3.img");

    tomo_hipic_write_header(b, 0, 4, 0);
    tomo_error_clear(&err);
    CHECK_INT(tomo_hipic_parse_header("d/q4.img", b, sizeof b, &h, &err), -TOMO_E_FORMAT);
}

static void test_img_scan(void)
{
    char dir[64];
    make_dir(dir);
    write_scan(dir, SMALL_LOG, 7, 5, "q%04d.img", NULL);
    /* A frame with its own comment length lies at another offset. */
    write_img(dir, "q0004.img", 7, 5, 37, 4);
    /* Not listed, not frames, or of the other format: ignored. */
    write_img(dir, "q0099.img", 3, 3, 0, 99);
    write_text(dir, "qnotes.img", "x");
    write_text(dir, "q0003.tif", "x");
    write_text(dir, "readme.txt", "x");

    tomo_scan *scan = NULL;
    tomo_error err;
    CHECK_INT(open_scan(dir, &scan, &err), 0);
    if (!scan) {
        fprintf(stderr, "%s\n", err.message);
        remove_dir(dir);
        return;
    }
    CHECK_CONTAINS(scan->format, "spring8-img");
    CHECK_CONTAINS(scan->path, dir);
    CHECK_INT(scan->width, 7);
    CHECK_INT(scan->rows, 5);
    CHECK_INT(scan->n_proj, 3);
    CHECK_INT(scan->n_flat, 3);
    CHECK_INT(scan->n_dark, 1);
    CHECK_INT(scan->n_flat_groups, 2);
    CHECK_NEAR(scan->proj_angle_deg[0], 0.0, 0);
    CHECK_NEAR(scan->proj_angle_deg[1], 1.0, 0);
    CHECK_NEAR(scan->proj_angle_deg[2], 2.0, 0);
    CHECK_INT(scan->proj_frame[0], 4);
    CHECK_INT(scan->proj_frame[1], 5);
    CHECK_INT(scan->proj_frame[2], 3);
    CHECK_NEAR(scan->proj_time[0], 3.0, 0);
    CHECK_NEAR(scan->proj_time[2], 2.0, 0);
    CHECK_INT(scan->flat_frame[0], 1);
    CHECK_INT(scan->flat_frame[2], 6);
    CHECK_NEAR(scan->flat_time[2], 5.0, 0);
    CHECK_INT(scan->flat_group[0], 0);
    CHECK_INT(scan->flat_group[1], 0);
    CHECK_INT(scan->flat_group[2], 1);
    CHECK(scan->mtime > 0);
    CHECK(scan_matches(scan));
    CHECK(frame_matches(scan, TOMO_FRAME_PROJECTION, 0, 4, 1, 3));
    CHECK(frame_matches(scan, TOMO_FRAME_FLAT, 2, 6, 4, 1));

    float buf[7 * 5];
    tomo_error_clear(&err);
    CHECK_INT(tomo_scan_read_rows(scan, TOMO_FRAME_PROJECTION, 3, 0, 1, buf, &err),
              -TOMO_E_INVALID);
    tomo_error_clear(&err);
    CHECK_INT(tomo_scan_read_rows(scan, TOMO_FRAME_DARK, 1, 0, 1, buf, &err), -TOMO_E_INVALID);
    tomo_error_clear(&err);
    CHECK_INT(tomo_scan_read_rows(scan, TOMO_FRAME_FLAT, -1, 0, 1, buf, &err), -TOMO_E_INVALID);
    tomo_error_clear(&err);
    CHECK_INT(tomo_scan_read_rows(scan, TOMO_FRAME_FLAT, 0, 4, 2, buf, &err), -TOMO_E_INVALID);
    tomo_error_clear(&err);
    CHECK_INT(tomo_scan_read_rows(scan, TOMO_FRAME_FLAT, 0, 0, 0, buf, &err), -TOMO_E_INVALID);
    tomo_error_clear(&err);
    CHECK_INT(tomo_scan_read_rows(scan, TOMO_FRAME_FLAT, 0, -1, 2, buf, &err), -TOMO_E_INVALID);
    tomo_error_clear(&err);
    CHECK_INT(tomo_scan_read_rows(scan, (tomo_frame_kind)7, 0, 0, 1, buf, &err), -TOMO_E_INVALID);

    /* Same files, same fingerprint; a touched frame changes it. */
    uint64_t fp = scan->fingerprint;
    tomo_scan *again = NULL;
    CHECK_INT(open_scan(dir, &again, &err), 0);
    CHECK(again && again->fingerprint == fp);
    tomo_scan_close(again);
    char path[512];
    path_of(path, sizeof path, dir, "q0005.img");
    struct timespec ts[2] = {{1000000, 5}, {1000000, 5}};
    CHECK_INT(utimensat(AT_FDCWD, path, ts, 0), 0);
    again = NULL;
    CHECK_INT(open_scan(dir, &again, &err), 0);
    CHECK(again && again->fingerprint != fp);
    tomo_scan_close(again);

    /* A frame shrunk after open is reported when read. */
    CHECK_INT(truncate(path, TOMO_HIPIC_HEADER_SIZE + 2 * 7 * 2 + 3), 0);
    tomo_error_clear(&err);
    CHECK_INT(tomo_scan_read_rows(scan, TOMO_FRAME_PROJECTION, 1, 0, 5, buf, &err), -TOMO_E_IO);
    CHECK_CONTAINS(err.message, "q0005.img: short read at row 2 (file truncated?)");

    tomo_scan_close(scan);
    tomo_scan_close(NULL);
    remove_dir(dir);
}

static void test_flat_groups(void)
{
    char dir[64];
    make_dir(dir);
    const char *log = "1 0 0 0\n2 1 0 0\n"
                      "3 2 0 1\n4 3 1 1\n5 4 2 1\n"
                      "6 5 0 0\n"
                      "7 6 3 1\n8 7 4 1\n9 8 5 1\n"
                      "10 9 0 0\n11 10 0 0\n";
    write_scan(dir, log, 2, 2, "q%d.img", NULL);
    tomo_scan *scan = NULL;
    tomo_error err;
    CHECK_INT(open_scan(dir, &scan, &err), 0);
    if (scan) {
        static const int want[] = {0, 0, 1, 2, 2};
        CHECK_INT(scan->n_flat, 5);
        CHECK_INT(scan->n_flat_groups, 3);
        for (int f = 0; f < 5 && f < scan->n_flat; f++)
            CHECK_INT(scan->flat_group[f], want[f]);
        CHECK_INT(scan->n_proj, 6);
        CHECK(scan_matches(scan));
    }
    tomo_scan_close(scan);
    remove_dir(dir);
}

static void test_sort_frames(void)
{
    tomo_scan *s = tomo_scan_alloc(5, 4);
    CHECK(s != NULL);
    if (!s)
        return;
    const double angle[] = {1, 0, 1, 0, 0};
    const double ptime[] = {4, 3, 2, 1, 3};
    for (int m = 0; m < 5; m++) {
        s->proj_angle_deg[m] = angle[m];
        s->proj_time[m] = ptime[m];
        s->proj_frame[m] = 10 + m;
    }
    /* Flats logged with time going backwards between runs, and a tie inside a run. */
    const double ftime[] = {7, 7, 1, 9};
    int run[] = {1, 1, 0, 2};
    for (int f = 0; f < 4; f++) {
        s->flat_time[f] = ftime[f];
        s->flat_frame[f] = 20 + f;
    }
    tomo_scan_sort_frames(s, run);
    static const int want_proj[] = {13, 11, 14, 12, 10};
    for (int m = 0; m < 5; m++)
        CHECK_INT(s->proj_frame[m], want_proj[m]);
    CHECK_NEAR(s->proj_time[0], 1, 0);
    CHECK_NEAR(s->proj_angle_deg[4], 1, 0);
    static const int want_flat[] = {22, 20, 21, 23};
    static const int want_run[] = {0, 1, 1, 2};
    for (int f = 0; f < 4; f++) {
        CHECK_INT(s->flat_frame[f], want_flat[f]);
        CHECK_INT(run[f], want_run[f]);
        CHECK_INT(s->flat_group[f], want_run[f]);
    }
    CHECK_INT(s->n_flat_groups, 3);

    /* Without run information each flat is its own group. */
    tomo_scan_sort_frames(s, NULL);
    CHECK_INT(s->n_flat_groups, 4);
    CHECK_INT(s->flat_group[3], 3);
    tomo_scan_close(s);

    tomo_scan *empty = tomo_scan_alloc(0, 0);
    CHECK(empty != NULL);
    if (empty) {
        tomo_scan_sort_frames(empty, NULL);
        CHECK_INT(empty->n_flat_groups, 0);
    }
    tomo_scan_close(empty);
}

static void test_digit_counts(void)
{
    char dir[64];
    make_dir(dir);
    const char *log = "1 0 0 0\n2 1 0 1\n3 2 1 1\n4 3 2 1\n5 4 3 1\n6 5 4 1\n7 6 5 1\n"
                      "8 7 6 1\n9 8 7 1\n10 9 8 1\n11 10 9 1\n12 11 0 0\n";
    write_scan(dir, log, 3, 2, "q%d.img", NULL);
    /* Case of the letter and of the extension does not matter. */
    char from[512], to[512];
    path_of(from, sizeof from, dir, "q7.img");
    path_of(to, sizeof to, dir, "Q7.IMG");
    CHECK_INT(rename(from, to), 0);
    tomo_scan *scan = NULL;
    tomo_error err;
    CHECK_INT(open_scan(dir, &scan, &err), 0);
    if (scan) {
        CHECK_INT(scan->n_proj, 10);
        CHECK(scan_matches(scan));
    }
    tomo_scan_close(scan);
    remove_dir(dir);

    make_dir(dir);
    write_scan(dir, SMALL_LOG, 3, 2, "q%05d.img", NULL);
    scan = NULL;
    CHECK_INT(open_scan(dir, &scan, &err), 0);
    if (scan)
        CHECK(scan_matches(scan));
    tomo_scan_close(scan);
    /* Two files for one frame number. */
    write_img(dir, "q3.img", 3, 2, 0, 3);
    scan = NULL;
    CHECK_INT(open_scan(dir, &scan, &err), -TOMO_E_FORMAT);
    CHECK(scan == NULL);
    CHECK_CONTAINS(err.message, "q00003.img and q3.img both have frame number 3");
    remove_dir(dir);
}

static void test_open_errors(void)
{
    char dir[64], path[512];

    make_dir(dir);
    write_scan(dir, SMALL_LOG, 7, 5, "q%04d.img", NULL);
    path_of(path, sizeof path, dir, "q0005.img");
    unlink(path);
    check_open_fails(dir, NULL, TOMO_E_IO, "output.log lists frame 5 but no q*.img file", dir);

    write_img(dir, "q0005.img", 7, 5, 0, 5);
    CHECK_INT(truncate(path, 100), 0);
    check_open_fails(dir, NULL, TOMO_E_FORMAT, "q0005.img: truncated: 100 bytes, expected 134",
                     dir);

    write_img(dir, "q0005.img", 8, 5, 0, 5);
    check_open_fails(dir, "spring8", TOMO_E_FORMAT, "q0005.img: is 8x5, expected 7x5 like dark.img",
                     dir);

    write_img(dir, "q0005.img", 7, 5, 0, 5);
    write_bytes(dir, "q0005.img", "GIF89a", 6);
    check_open_fails(dir, NULL, TOMO_E_FORMAT, "q0005.img", "truncated");

    char buf[200] = {0};
    write_bytes(dir, "q0005.img", buf, sizeof buf);
    check_open_fails(dir, NULL, TOMO_E_FORMAT, "q0005.img: not a HiPic 16-bit image", "");

    write_img(dir, "q0005.img", 7, 5, 0, 5);
    write_img(dir, "q0001.img", 5, 7, 0, 1); /* same size in bytes, other shape */
    check_open_fails(dir, NULL, TOMO_E_FORMAT, "q0001.img: is 5x7, expected 7x5", "");
    write_img(dir, "q0001.img", 7, 5, 0, 1);

    path_of(path, sizeof path, dir, "dark.img");
    CHECK_INT(truncate(path, 90), 0);
    check_open_fails(dir, NULL, TOMO_E_FORMAT, "dark.img: truncated", "");
    unlink(path);
    check_open_fails(dir, NULL, TOMO_E_IO, "no dark.img or dark.tif", dir);
    write_img(dir, "dark.img", 7, 5, 0, DARK_ID);

    write_text(dir, "output.log", "1 0 0 0\n2 1 0 1\nframe 3 here\n");
    check_open_fails(dir, NULL, TOMO_E_FORMAT, "output.log:3: expected 'frame time angle flag'",
                     dir);
    write_text(dir, "output.log", "2 1 0 1\n3 1 0 1\n");
    check_open_fails(dir, NULL, TOMO_E_FORMAT, "output.log: no flat fields (flag 0)", dir);
    write_text(dir, "output.log", "1 1 0 0\n6 1 0 0\n");
    check_open_fails(dir, NULL, TOMO_E_FORMAT, "output.log: no projections", dir);
    write_text(dir, "output.log", "");
    check_open_fails(dir, NULL, TOMO_E_FORMAT, "output.log: no projections", dir);

    check_open_fails(dir, "hdf5", TOMO_E_INVALID, "unknown format 'hdf5'", "");
    path_of(path, sizeof path, dir, "output.log");
    check_open_fails(path, NULL, TOMO_E_FORMAT, "output.log: not a recognised scan directory",
                     "not a directory");
    unlink(path);
    check_open_fails(dir, NULL, TOMO_E_FORMAT, "not a recognised scan directory", "no output.log");
    check_open_fails(dir, "spring8", TOMO_E_IO, "output.log: cannot open", dir);
    check_open_fails("/nonexistent/tomofs/scan", NULL, TOMO_E_IO, "/nonexistent/tomofs/scan",
                     "No such file");
    remove_dir(dir);
}

/* Big-endian files written through libtiff really are big-endian. */
static int file_starts_with(const char *dir, const char *name, const char *magic)
{
    char path[512], got[2] = {0};
    path_of(path, sizeof path, dir, name);
    FILE *f = fopen(path, "rb");
    if (!f)
        return 0;
    size_t n = fread(got, 1, 2, f);
    fclose(f);
    return n == 2 && memcmp(got, magic, 2) == 0;
}

static void check_tif_scan(const tif_opts *o, const char *name_fmt, const char *what)
{
    char dir[64];
    make_dir(dir);
    write_scan(dir, SMALL_LOG, 9, 7, name_fmt, o);
    if (o->big_endian)
        CHECK(file_starts_with(dir, "dark.tif", "MM"));
    tomo_scan *scan = NULL;
    tomo_error err;
    CHECK_INT(open_scan(dir, &scan, &err), 0);
    if (!scan) {
        fprintf(stderr, "%s: %s\n", what, err.message);
    } else {
        CHECK_CONTAINS(scan->format, "spring8-tif");
        CHECK_INT(scan->width, 9);
        CHECK_INT(scan->rows, 7);
        CHECK_INT(scan->proj_frame[0], 4);
        if (!scan_matches(scan)) {
            fprintf(stderr, "%s: values differ\n", what);
            CHECK(0);
        }
    }
    tomo_scan_close(scan);
    remove_dir(dir);
}

static void test_tif_scans(void)
{
    tif_opts o = TIF_PLAIN;
    check_tif_scan(&o, "q%04d.tif", "uncompressed, one row per strip");
    o.rows_per_strip = 3;
    check_tif_scan(&o, "q%d.tiff", "uncompressed, 3 rows per strip");
    o.rows_per_strip = 7;
    o.photometric = PHOTOMETRIC_MINISWHITE;
    check_tif_scan(&o, "q%04d.tif", "uncompressed, one strip, MinIsWhite");
    o = TIF_PLAIN;
    o.compression = COMPRESSION_ADOBE_DEFLATE;
    o.rows_per_strip = 2;
    check_tif_scan(&o, "q%04d.tif", "deflate, 2 rows per strip");
    o.compression = COMPRESSION_LZW;
    o.predictor = 2;
    o.rows_per_strip = 3;
    check_tif_scan(&o, "q%04d.tif", "LZW with predictor, 3 rows per strip");
    o = TIF_PLAIN;
    o.big_endian = 1;
    o.rows_per_strip = 2;
    check_tif_scan(&o, "q%04d.tif", "big-endian uncompressed");
    o.compression = COMPRESSION_ADOBE_DEFLATE;
    check_tif_scan(&o, "q%04d.tif", "big-endian deflate");
}

/* The TIFF scan reads the same numbers as the HiPic scan of the same frames. */
static void test_tif_matches_img(void)
{
    char dir_img[64], dir_tif[64];
    make_dir(dir_img);
    make_dir(dir_tif);
    write_scan(dir_img, SMALL_LOG, 6, 4, "q%04d.img", NULL);
    write_scan(dir_tif, SMALL_LOG, 6, 4, "q%04d.tif", &TIF_PLAIN);
    tomo_scan *a = NULL, *b = NULL;
    tomo_error err;
    CHECK_INT(open_scan(dir_img, &a, &err), 0);
    CHECK_INT(open_scan(dir_tif, &b, &err), 0);
    if (a && b) {
        float fa[24], fb[24];
        for (int m = 0; m < a->n_proj; m++) {
            tomo_error_clear(&err);
            CHECK_INT(tomo_scan_read_rows(a, TOMO_FRAME_PROJECTION, m, 0, 4, fa, &err), 0);
            CHECK_INT(tomo_scan_read_rows(b, TOMO_FRAME_PROJECTION, m, 0, 4, fb, &err), 0);
            CHECK(memcmp(fa, fb, sizeof fa) == 0);
        }
        CHECK(a->fingerprint != b->fingerprint);
    }
    tomo_scan_close(a);
    tomo_scan_close(b);
    remove_dir(dir_img);
    remove_dir(dir_tif);
}

static void test_tif_errors(void)
{
    char dir[64], path[512];
    make_dir(dir);
    write_scan(dir, SMALL_LOG, 16, 16, "q%04d.tif", &TIF_PLAIN);
    tif_opts o = TIF_PLAIN;
    o.bits = 8;
    write_tif(dir, "q0006.tif", 16, 16, 6, &o);
    check_open_fails(dir, NULL, TOMO_E_FORMAT, "q0006.tif: 8-bit TIFF, expected 16-bit", dir);

    write_tif(dir, "q0006.tif", 16, 15, 6, &TIF_PLAIN);
    check_open_fails(dir, NULL, TOMO_E_FORMAT, "q0006.tif: is 16x15, expected 16x16 like dark.tif",
                     "");
    write_tif(dir, "q0006.tif", 16, 16, 6, &TIF_PLAIN);

    write_text(dir, "q0001.tif", "not a tiff at all");
    check_open_fails(dir, NULL, TOMO_E_FORMAT, "q0001.tif: not a readable TIFF", "");
    write_text(dir, "q0001.tif", "");
    check_open_fails(dir, NULL, TOMO_E_FORMAT, "q0001.tif", "");
    write_tif(dir, "q0001.tif", 16, 16, 1, &TIF_PLAIN);

    /* A middle frame of another size is inspected at open, even when not a sampled one. */
    write_text(dir, "q0003.tif", "garbage!");
    check_open_fails(dir, NULL, TOMO_E_FORMAT, "q0003.tif", "");

    /* One of the same size is only parsed when read, and fails then. */
    path_of(path, sizeof path, dir, "q0003.tif");
    {
        char good[512];
        path_of(good, sizeof good, dir, "q0004.tif");
        struct stat st;
        CHECK(stat(good, &st) == 0);
        char *junk = malloc((size_t)st.st_size);
        memset(junk, 'x', (size_t)st.st_size);
        FILE *fj = fopen(path, "wb");
        fwrite(junk, 1, (size_t)st.st_size, fj);
        fclose(fj);
        free(junk);
    }
    tomo_scan *scan = NULL;
    tomo_error err;
    CHECK_INT(open_scan(dir, &scan, &err), 0);
    if (scan) {
        float buf[16 * 16];
        tomo_error_clear(&err);
        CHECK(tomo_scan_read_rows(scan, TOMO_FRAME_PROJECTION, 2, 0, 16, buf, &err) < 0);
        CHECK_CONTAINS(err.message, "q0003.tif");
    }
    tomo_scan_close(scan);

    path_of(path, sizeof path, dir, "q0005.tif");
    unlink(path);
    check_open_fails(dir, NULL, TOMO_E_IO, "lists frame 5 but no q*.tif file", "");
    write_tif(dir, "q0005.tif", 16, 16, 5, &TIF_PLAIN);

    o = TIF_PLAIN;
    o.tiled = 1;
    write_tif(dir, "dark.tif", 16, 16, DARK_ID, &o);
    check_open_fails(dir, NULL, TOMO_E_UNSUPPORTED, "dark.tif: tiled TIFF not supported", "");

    /* dark.img wins over dark.tif, and then the frames must be .img. */
    write_img(dir, "dark.img", 16, 16, 0, DARK_ID);
    check_open_fails(dir, NULL, TOMO_E_IO, "no q*.img file", "");
    remove_dir(dir);
}

typedef struct thread_job {
    const tomo_scan *scan;
    int ok;
} thread_job;

static void *read_everything(void *arg)
{
    thread_job *job = arg;
    job->ok = 1;
    for (int rep = 0; rep < 20; rep++) {
        for (int m = 0; m < job->scan->n_proj; m++) {
            int z0 = (rep + m) % job->scan->rows;
            job->ok &= frame_matches(job->scan, TOMO_FRAME_PROJECTION, m, job->scan->proj_frame[m],
                                     z0, job->scan->rows - z0);
        }
    }
    return NULL;
}

static void check_threads(const tomo_scan *scan)
{
    pthread_t t[6];
    thread_job jobs[6];
    for (int i = 0; i < 6; i++) {
        jobs[i] = (thread_job){scan, 0};
        pthread_create(&t[i], NULL, read_everything, &jobs[i]);
    }
    for (int i = 0; i < 6; i++) {
        pthread_join(t[i], NULL);
        CHECK(jobs[i].ok);
    }
}

static void test_concurrent_reads(void)
{
    char dir[64];
    make_dir(dir);
    write_scan(dir, SMALL_LOG, 32, 24, "q%04d.img", NULL);
    tomo_scan *scan = NULL;
    tomo_error err;
    CHECK_INT(open_scan(dir, &scan, &err), 0);
    if (scan)
        check_threads(scan);
    tomo_scan_close(scan);
    remove_dir(dir);

    make_dir(dir);
    tif_opts o = TIF_PLAIN;
    o.compression = COMPRESSION_ADOBE_DEFLATE;
    o.rows_per_strip = 5;
    write_scan(dir, SMALL_LOG, 32, 24, "q%04d.tif", &o);
    scan = NULL;
    CHECK_INT(open_scan(dir, &scan, &err), 0);
    if (scan)
        check_threads(scan);
    tomo_scan_close(scan);
    remove_dir(dir);
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Thousands of frames open quickly: one stat each plus a few header reads. */
static void test_many_frames(void)
{
    enum { N_FRAMES = 3602 };
    char dir[64];
    make_dir(dir);
    size_t cap = (size_t)N_FRAMES * 48;
    char *log = malloc(cap);
    size_t len = 0;
    for (int i = 1; i <= N_FRAMES; i++) {
        int flat = i == 1 || i == N_FRAMES;
        len += (size_t)snprintf(log + len, cap - len, "%5d %10.3f %9.4f %d\n", i, 0.1 * i,
                                flat ? 0.0 : 180.0 * (i - 2) / (N_FRAMES - 2), flat ? 0 : 1);
    }
    write_scan(dir, log, 4, 3, "q%05d.img", NULL);
    free(log);

    tomo_scan *scan = NULL;
    tomo_error err;
    double t0 = now_seconds();
    CHECK_INT(open_scan(dir, &scan, &err), 0);
    double dt = now_seconds() - t0;
    fprintf(stderr, "opened %d frames in %.3f s\n", N_FRAMES, dt);
    CHECK(dt < 5.0);
    if (scan) {
        CHECK_INT(scan->n_proj, N_FRAMES - 2);
        CHECK_INT(scan->n_flat_groups, 2);
        CHECK(frame_matches(scan, TOMO_FRAME_PROJECTION, 1234, 1236, 0, 3));
    }
    tomo_scan_close(scan);

    /* A mis-sized frame in the middle is found by its file size. */
    write_img(dir, "q02000.img", 4, 4, 0, 2000);
    check_open_fails(dir, NULL, TOMO_E_FORMAT, "q02000.img: is 4x4, expected 4x3", "");
    remove_dir(dir);
}

TOMO_TEST_MAIN(test_outputlog_good, test_outputlog_bad, test_hipic_header, test_img_scan,
               test_flat_groups, test_sort_frames, test_digit_counts, test_open_errors,
               test_tif_scans, test_tif_matches_img, test_tif_errors, test_concurrent_reads,
               test_many_frames)
