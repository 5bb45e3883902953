/*
 * Unit tests of HiPic .his streams (recon/his.c) and of SPring-8 scan directories whose frames
 * come from one (recon/spring8.c), on synthetic streams written here.
 */
#include <fcntl.h>
#include <ftw.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../recon/his.h"
#include "../../recon/scan.h"
#include "../../recon/spring8.h"
#define FIXTURE_TMP_NAME "tomo_his"
#include "fixture.h"

#define DARK_ID 9999

/* A value per frame, row and column that fits 12 bits and uses all of them. */
static unsigned pix12(int id, int x, int y)
{
    return ((unsigned)id * 389u + (unsigned)y * 97u + (unsigned)x * 13u + 7u) & 0xfffu;
}

static unsigned pix(int id, int x, int y, int type)
{
    unsigned v = pix12(id, x, y);
    if (type == TOMO_HIS_TYPE_U16)
        return (v * 16u + (unsigned)x) & 0xffffu;
    if (type == TOMO_HIS_TYPE_U8)
        return v & 0xffu;
    return v;
}

typedef struct his_opts {
    int width, height, type;
    int frames;          /* frames written */
    int declared;        /* frame count in the first header */
    int comment_first;   /* comment bytes of frame 1 */
    int comment_others;  /* comment bytes of the other frames */
    int odd_frame;       /* 1-based frame written with another width, 0 = none */
    int64_t truncate_by; /* bytes cut from the end */
} his_opts;

/* Frame k (1-based) holds pix(k). */
static void write_his(const char *dir, const char *name, const his_opts *o)
{
    size_t cap = 0, len = 0;
    unsigned char *buf = NULL;
    for (int k = 1; k <= o->frames; k++) {
        int w = k == o->odd_frame ? o->width + 1 : o->width;
        int cl = k == 1 ? o->comment_first : o->comment_others;
        int64_t pb = tomo_his_pixel_bytes(o->type, w, o->height);
        size_t need = len + TOMO_HIS_HEADER_SIZE + (size_t)cl + (size_t)pb;
        if (need > cap) {
            cap = 2 * need;
            buf = realloc(buf, cap);
        }
        unsigned char *h = buf + len;
        tomo_his_write_header(h, w, o->height, o->type, cl, k == 1 ? o->declared : 0, 1000.0 * k);
        memset(h + TOMO_HIS_HEADER_SIZE, 'c', (size_t)cl);
        unsigned char *p = h + TOMO_HIS_HEADER_SIZE + cl;
        size_t n = (size_t)w * (size_t)o->height;
        uint16_t *v = malloc(n * sizeof *v);
        for (int y = 0; y < o->height; y++)
            for (int x = 0; x < w; x++)
                v[(size_t)y * w + x] = (uint16_t)pix(k, x, y, o->type);
        if (o->type == TOMO_HIS_TYPE_U12) {
            tomo_his_pack12(v, n, p);
        } else if (o->type == TOMO_HIS_TYPE_U16) {
            for (size_t i = 0; i < n; i++) {
                p[2 * i] = (unsigned char)(v[i] & 0xff);
                p[2 * i + 1] = (unsigned char)(v[i] >> 8);
            }
        } else {
            for (size_t i = 0; i < n; i++)
                p[i] = (unsigned char)v[i];
        }
        free(v);
        len = need;
    }
    write_bytes(dir, name, buf ? (const void *)buf : "", len - (size_t)o->truncate_by);
    free(buf);
}

static void write_dark_img(const char *dir, int w, int h)
{
    size_t len = TOMO_HIPIC_HEADER_SIZE + 2 * (size_t)w * (size_t)h;
    unsigned char *b = malloc(len);
    tomo_hipic_write_header(b, w, h, 0);
    unsigned char *p = b + TOMO_HIPIC_HEADER_SIZE;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            unsigned v = pix(DARK_ID, x, y, TOMO_HIS_TYPE_U16);
            *p++ = (unsigned char)(v & 0xff);
            *p++ = (unsigned char)(v >> 8);
        }
    write_bytes(dir, "dark.img", b, len);
    free(b);
}

/* ------------------------------------------------------------------------------------------ */

static void test_header(void)
{
    unsigned char h[TOMO_HIS_HEADER_SIZE];
    tomo_his_write_header(h, 300, 200, TOMO_HIS_TYPE_U12, 17, 70000, 12.5);
    tomo_his_header hdr;
    tomo_error err;
    tomo_error_clear(&err);
    CHECK_INT(tomo_his_parse_header("a.his", 0, h, sizeof h, &hdr, &err), 0);
    CHECK_INT(hdr.width, 300);
    CHECK_INT(hdr.height, 200);
    CHECK_INT(hdr.type, 6);
    CHECK_INT(hdr.comment_length, 17);
    CHECK_INT(hdr.frames, 70000);
    CHECK_NEAR(hdr.time_stamp, 12.5, 0);
    CHECK_INT(hdr.data_offset, 81);
    CHECK_INT(hdr.pixel_bytes, 90000);
    CHECK_INT(tomo_his_pixel_bytes(TOMO_HIS_TYPE_U12, 3, 1), 5);
    CHECK_INT(tomo_his_pixel_bytes(TOMO_HIS_TYPE_U16, 3, 1), 6);
    CHECK_INT(tomo_his_pixel_bytes(4, 3, 1), -1);

    tomo_error_clear(&err);
    CHECK_INT(tomo_his_parse_header("a.his", 128, h, 63, &hdr, &err), -TOMO_E_FORMAT);
    CHECK_CONTAINS(err.message, "a.his: truncated at byte 128");
    h[12] = 4;
    tomo_error_clear(&err);
    CHECK_INT(tomo_his_parse_header("a.his", 64, h, sizeof h, &hdr, &err), -TOMO_E_UNSUPPORTED);
    CHECK_CONTAINS(err.message, "pixel type 4");
    h[0] = 'X';
    tomo_error_clear(&err);
    CHECK_INT(tomo_his_parse_header("a.his", 64, h, sizeof h, &hdr, &err), -TOMO_E_FORMAT);
    CHECK_CONTAINS(err.message, "no HiPic frame header at byte 64");
}

static void test_pack12(void)
{
    uint16_t v[5] = {0xabc, 0x123, 0xfff, 0x000, 0x987};
    unsigned char b[8];
    memset(b, 0xee, sizeof b);
    tomo_his_pack12(v, 5, b);
    /* p0 = b0 * 16 + (b1 >> 4), p1 = (b1 & 15) * 256 + b2 */
    CHECK_INT(b[0], 0xab);
    CHECK_INT(b[1], 0xc1);
    CHECK_INT(b[2], 0x23);
    CHECK_INT(b[6], 0x98);
    CHECK_INT(b[7] >> 4, 0x7);
}

/* Every band of rows of every frame of a stream reads back. */
static int stream_matches(const tomo_his *his)
{
    int ok = 1;
    float *buf = malloc((size_t)his->width * (size_t)his->height * sizeof *buf);
    for (int64_t k = 1; k <= his->frames; k++) {
        for (int z0 = 0; z0 < his->height; z0++) {
            for (int nz = 1; nz <= his->height - z0; nz++) {
                tomo_error err;
                tomo_error_clear(&err);
                if (tomo_his_read_rows(his, k, z0, nz, buf, &err) < 0) {
                    fprintf(stderr, "%s\n", err.message);
                    ok = 0;
                    continue;
                }
                for (int y = 0; y < nz; y++)
                    for (int x = 0; x < his->width; x++)
                        if (buf[y * his->width + x] != (float)pix((int)k, x, z0 + y, his->type)) {
                            if (ok)
                                fprintf(stderr, "frame %lld (%d, %d): %g, expected %u\n",
                                        (long long)k, x, z0 + y, buf[y * his->width + x],
                                        pix((int)k, x, z0 + y, his->type));
                            ok = 0;
                        }
            }
        }
    }
    free(buf);
    return ok;
}

/* Writes stream `o` as a.his in a new directory `dir` and opens it. */
static int open_written(const his_opts *o, char dir[64], tomo_his *his, tomo_error *err)
{
    char path[512];
    make_dir(dir);
    write_his(dir, "a.his", o);
    path_of(path, sizeof path, dir, "a.his");
    tomo_error_clear(err);
    return tomo_his_open(path, his, err);
}

static void check_stream(const his_opts *o, const char *what)
{
    char dir[64];
    tomo_his his;
    tomo_error err;
    CHECK_INT(open_written(o, dir, &his, &err), 0);
    if (his.fd < 0) {
        fprintf(stderr, "%s: %s\n", what, err.message);
    } else {
        CHECK_INT(his.frames, o->frames);
        CHECK_INT(his.width, o->width);
        if (!stream_matches(&his)) {
            fprintf(stderr, "%s: values differ\n", what);
            CHECK(0);
        }
    }
    tomo_his_close(&his);
    remove_dir(dir);
}

static void test_streams(void)
{
    his_opts o = {7, 5, TOMO_HIS_TYPE_U16, 4, 4, 100, 0, 0, 0};
    check_stream(&o, "16-bit, comment in frame 1");
    o.comment_others = 3;
    o.declared = 0;
    check_stream(&o, "16-bit, comments everywhere, no frame count");
    o.type = TOMO_HIS_TYPE_U12;
    check_stream(&o, "12-bit packed, odd width and height (rows start mid-pair)");
    o.width = 8;
    o.declared = 4;
    check_stream(&o, "12-bit packed, even width");
    o.type = TOMO_HIS_TYPE_U8;
    check_stream(&o, "8-bit");
}

static void check_stream_fails(const his_opts *o, int code, const char *want1, const char *want2)
{
    char dir[64];
    tomo_his his;
    tomo_error err;
    CHECK_INT(open_written(o, dir, &his, &err), -code);
    CHECK_INT(his.fd, -1);
    CHECK_CONTAINS(err.message, want1);
    CHECK_CONTAINS(err.message, want2);
    tomo_his_close(&his);
    remove_dir(dir);
}

static void test_stream_errors(void)
{
    his_opts o = {7, 5, TOMO_HIS_TYPE_U16, 4, 4, 10, 0, 0, 0};
    o.truncate_by = 1;
    check_stream_fails(&o, TOMO_E_FORMAT, "a.his: truncated: frame 4 needs bytes up to",
                       "the file has");
    o.truncate_by = 70 + 10; /* 54 bytes of frame 4's header are left */
    check_stream_fails(&o, TOMO_E_FORMAT, "a.his: truncated at byte 412: 54 bytes left", "");
    o.truncate_by = 0;
    o.declared = 5;
    check_stream_fails(&o, TOMO_E_FORMAT, "a.his: holds 4 frames, its header declares 5", "");
    o.declared = 4;
    o.odd_frame = 3;
    check_stream_fails(&o, TOMO_E_FORMAT, "a.his: frame 3 is 8x5 of type 2", "frame 1 is 7x5");
    o.odd_frame = 0;
    o.frames = 0;
    check_stream_fails(&o, TOMO_E_FORMAT, "a.his: empty file", "");
}

/* ------------------------------------------------------------------------------------------ */
/* SPring-8 directories with a stream                                                          */
/* ------------------------------------------------------------------------------------------ */

/* Flats 1, 2; projections 3..6, out of angle order; flats 7, 8. */
static const char *const LOG = "1 0.0 0 0\n"
                               "2 1.0 0 0\n"
                               "3 2.0 90 1\n"
                               "4 3.0 0 1\n"
                               "5 4.0 45 1\n"
                               "6 5.0 135 1\n"
                               "7 6.0 0 0\n"
                               "8 7.0 0 0\n";

static void check_scan(int type, const char *what)
{
    char dir[64];
    make_dir(dir);
    his_opts o = {9, 6, type, 8, 8, 40, 0, 0, 0};
    write_his(dir, "a.his", &o);
    write_dark_img(dir, 9, 6);
    write_bytes(dir, "output.log", LOG, strlen(LOG));
    tomo_scan *scan = NULL;
    tomo_error err;
    tomo_error_clear(&err);
    CHECK_INT(tomo_scan_open(dir, NULL, &scan, &err), 0);
    if (!scan) {
        fprintf(stderr, "%s: %s\n", what, err.message);
        remove_dir(dir);
        return;
    }
    CHECK(strcmp(scan->format, "spring8-his") == 0);
    CHECK_INT(scan->n_proj, 4);
    CHECK_INT(scan->n_flat, 4);
    CHECK_INT(scan->n_flat_groups, 2);
    static const int order[4] = {4, 5, 3, 6};
    float buf[9 * 6];
    for (int m = 0; m < 4; m++) {
        CHECK_INT(scan->proj_frame[m], order[m]);
        CHECK_NEAR(scan->proj_angle_deg[m], 45.0 * m, 0);
        for (int z0 = 0; z0 < 6; z0 += 5) {
            int nz = z0 ? 1 : 6;
            tomo_error_clear(&err);
            CHECK_INT(tomo_scan_read_rows(scan, TOMO_FRAME_PROJECTION, m, z0, nz, buf, &err), 0);
            for (int y = 0; y < nz; y++)
                for (int x = 0; x < 9; x++)
                    CHECK_NEAR(buf[y * 9 + x], pix(order[m], x, z0 + y, type), 0);
        }
    }
    CHECK_INT(tomo_scan_read_rows(scan, TOMO_FRAME_FLAT, 3, 0, 6, buf, &err), 0);
    CHECK_NEAR(buf[9 * 5 + 8], pix(8, 8, 5, type), 0);
    CHECK_INT(tomo_scan_read_rows(scan, TOMO_FRAME_DARK, 0, 0, 6, buf, &err), 0);
    CHECK_NEAR(buf[10], pix(DARK_ID, 1, 1, TOMO_HIS_TYPE_U16), 0);
    CHECK_CONTAINS(scan->source, "a.his: HiPic stream of 8");
    CHECK(strcmp(scan->time_basis, "log time") == 0);
    uint64_t fp = scan->fingerprint;
    tomo_scan_close(scan);

    /* the fingerprint follows the stream */
    write_his(dir, "a.his", &o);
    char path[512];
    path_of(path, sizeof path, dir, "a.his");
    struct timespec times[2] = {{0, UTIME_NOW}, {12345, 0}};
    utimensat(AT_FDCWD, path, times, 0);
    scan = NULL;
    CHECK_INT(tomo_scan_open(dir, "spring8", &scan, &err), 0);
    if (scan)
        CHECK(scan->fingerprint != fp);
    tomo_scan_close(scan);
    remove_dir(dir);
}

static void test_spring8_his(void)
{
    check_scan(TOMO_HIS_TYPE_U16, "16-bit stream");
    check_scan(TOMO_HIS_TYPE_U12, "12-bit packed stream");
}

/* Opening the SPring-8 directory `dir` fails with `code` and a message holding both strings. */
static void check_scan_fails(const char *dir, int code, const char *want1, const char *want2)
{
    tomo_scan *scan = (tomo_scan *)&scan;
    tomo_error err;
    tomo_error_clear(&err);
    CHECK_INT(tomo_scan_open(dir, NULL, &scan, &err), -code);
    CHECK(scan == NULL);
    CHECK_CONTAINS(err.message, want1);
    CHECK_CONTAINS(err.message, want2);
}

static void test_spring8_his_errors(void)
{
    char dir[64], path[512];
    make_dir(dir);
    his_opts o = {9, 6, TOMO_HIS_TYPE_U16, 7, 7, 0, 0, 0, 0};
    write_his(dir, "a.his", &o);
    write_dark_img(dir, 9, 6);
    write_bytes(dir, "output.log", LOG, strlen(LOG));
    check_scan_fails(dir, TOMO_E_FORMAT, "output.log lists frame 8 but a.his holds frames 1-7", "");
    o.frames = o.declared = 8;
    o.width = 10;
    write_his(dir, "a.his", &o);
    check_scan_fails(dir, TOMO_E_FORMAT, "a.his: frames are 10x6, expected 9x6 like dark.img", "");
    o.width = 9;
    o.truncate_by = 5;
    write_his(dir, "a.his", &o);
    check_scan_fails(dir, TOMO_E_FORMAT, "a.his: truncated: frame 8", "");
    o.truncate_by = 0;
    write_his(dir, "a.his", &o);
    write_his(dir, "b.his", &o);
    check_scan_fails(dir, TOMO_E_FORMAT, "several .his streams", "keep one");
    path_of(path, sizeof path, dir, "b.his");
    unlink(path);
    path_of(path, sizeof path, dir, "a.his");
    unlink(path);
    check_scan_fails(dir, TOMO_E_IO, "output.log lists frame 1 but no q*.img file", "");
    remove_dir(dir);
}

TOMO_TEST_MAIN(test_header, test_pack12, test_streams, test_stream_errors, test_spring8_his,
               test_spring8_his_errors)
