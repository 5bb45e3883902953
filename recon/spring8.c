#include "spring8.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <tiffio.h>

#include "../common/io.h"
#include "../common/hash.h"
#include "his.h"
#include "tiffframe.h"

#define S8_PATH_MAX 4096

/* Frames whose header is parsed at open even when their size looks right. */
#define S8_SAMPLE_STRIDE 100

/* ------------------------------------------------------------------------------------------ */
/* output.log                                                                                  */
/* ------------------------------------------------------------------------------------------ */

#define LOG_TOKEN_MAX 64
#define LOG_SHOW_MAX  80

static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\v' || c == '\f' || c == '\r';
}

/* Copies a line into `out` for a message, printable and bounded. */
static void show_line(const char *p, size_t n, char out[LOG_SHOW_MAX + 4])
{
    size_t k = 0;
    for (size_t i = 0; i < n && k < LOG_SHOW_MAX; i++) {
        unsigned char c = (unsigned char)p[i];
        out[k++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    if (n > LOG_SHOW_MAX) {
        memcpy(out + k, "...", 3);
        k += 3;
    }
    out[k] = '\0';
}

/*
 * Splits a line into whitespace-separated tokens (NUL-terminated copies). Returns the number
 * of tokens, up to `max`, or -1 when there are more than `max` or one is too long.
 */
static int split_tokens(const char *p, size_t n, char tok[][LOG_TOKEN_MAX], int max)
{
    int count = 0;
    size_t i = 0;
    while (i < n) {
        while (i < n && is_space(p[i]))
            i++;
        if (i == n)
            break;
        size_t start = i;
        while (i < n && !is_space(p[i]))
            i++;
        if (count == max || i - start >= LOG_TOKEN_MAX)
            return -1;
        memcpy(tok[count], p + start, i - start);
        tok[count][i - start] = '\0';
        count++;
    }
    return count;
}

static int parse_int_token(const char *tok, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(tok, &end, 10);
    if (end == tok || *end != '\0' || errno != 0 || v < INT_MIN || v > INT_MAX)
        return -1;
    *out = (int)v;
    return 0;
}

static int parse_real_token(const char *tok, double *out)
{
    char *end;
    double v = strtod(tok, &end);
    if (end == tok || *end != '\0')
        return -1;
    *out = v;
    return 0;
}

/* Parses one non-blank line into *e. Returns 0, or an error naming path:line. */
static int parse_log_line(const char *path, int line, const char *p, size_t n, tomo_log_entry *e,
                          tomo_error *err)
{
    char tok[4][LOG_TOKEN_MAX];
    char shown[LOG_SHOW_MAX + 4];
    int nt = split_tokens(p, n, tok, 4);
    if (nt != 4 || parse_int_token(tok[0], &e->frame) < 0 ||
        parse_real_token(tok[1], &e->time) < 0 || parse_real_token(tok[2], &e->angle) < 0 ||
        parse_int_token(tok[3], &e->flag) < 0) {
        show_line(p, n, shown);
        return tomo_error_set(err, TOMO_E_FORMAT,
                              "%s:%d: expected 'frame time angle flag', got '%s'", path, line,
                              shown);
    }
    if (e->frame < 0)
        return tomo_error_set(err, TOMO_E_FORMAT, "%s:%d: negative frame number %d", path, line,
                              e->frame);
    if (!isfinite(e->time))
        return tomo_error_set(err, TOMO_E_FORMAT, "%s:%d: time must be a finite number, got '%s'",
                              path, line, tok[1]);
    if (!isfinite(e->angle))
        return tomo_error_set(err, TOMO_E_FORMAT, "%s:%d: angle must be a finite number, got '%s'",
                              path, line, tok[2]);
    if (e->flag != 0 && e->flag != 1)
        return tomo_error_set(err, TOMO_E_FORMAT,
                              "%s:%d: flag must be 0 (flat) or 1 (projection), got %d", path, line,
                              e->flag);
    return 0;
}

typedef struct log_ref {
    int frame;
    int line;
} log_ref;

static int compare_log_refs(const void *a, const void *b)
{
    const log_ref *x = a, *y = b;
    if (x->frame != y->frame)
        return x->frame < y->frame ? -1 : 1;
    return (x->line > y->line) - (x->line < y->line);
}

/* Reports the repeated frame whose second listing comes first in the file. */
static int check_duplicate_frames(const char *path, const tomo_log_entry *e, const int *lines,
                                  int n, tomo_error *err)
{
    if (n < 2)
        return 0;
    log_ref *refs = malloc((size_t)n * sizeof *refs);
    if (!refs)
        return tomo_error_set(err, TOMO_E_NOMEM, "%s: out of memory", path);
    for (int i = 0; i < n; i++)
        refs[i] = (log_ref){e[i].frame, lines[i]};
    qsort(refs, (size_t)n, sizeof *refs, compare_log_refs);
    int best = -1;
    for (int i = 1; i < n; i++) {
        if (refs[i].frame == refs[i - 1].frame && (best < 0 || refs[i].line < refs[best].line))
            best = i;
    }
    int rc = 0;
    if (best >= 0)
        rc =
            tomo_error_set(err, TOMO_E_FORMAT, "%s:%d: frame %d is listed again (first on line %d)",
                           path, refs[best].line, refs[best].frame, refs[best - 1].line);
    free(refs);
    return rc;
}

/* Length of the line starting at p; *next is where the next one starts (LF, CRLF or CR). */
static size_t line_span(const char *p, const char *end, const char **next)
{
    const char *q = p;
    while (q < end && *q != '\n' && *q != '\r')
        q++;
    const char *after = q;
    if (after < end && *after == '\r')
        after++;
    if (after < end && *after == '\n')
        after++;
    *next = after;
    return (size_t)(q - p);
}

static int is_blank_line(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!is_space(p[i]))
            return 0;
    }
    return 1;
}

typedef struct log_builder {
    tomo_log_entry *entries;
    int *lines;
    int count;
    int cap;
} log_builder;

static int log_builder_push(log_builder *b, const tomo_log_entry *e, int line)
{
    if (b->count == b->cap) {
        if (b->cap > INT_MAX / 2)
            return -1;
        int cap = b->cap ? 2 * b->cap : 256;
        tomo_log_entry *ne = realloc(b->entries, (size_t)cap * sizeof *ne);
        if (!ne)
            return -1;
        b->entries = ne;
        int *nl = realloc(b->lines, (size_t)cap * sizeof *nl);
        if (!nl)
            return -1;
        b->lines = nl;
        b->cap = cap;
    }
    b->entries[b->count] = *e;
    b->lines[b->count] = line;
    b->count++;
    return 0;
}

int tomo_outputlog_parse(const char *path, const char *text, size_t len, tomo_log_entry **entries,
                         int *count, tomo_error *err)
{
    *entries = NULL;
    *count = 0;
    const char *p = text, *end = text + len;
    /* Editors on the acquisition PCs sometimes save with a UTF-8 byte order mark. */
    if (len >= 3 && memcmp(p, "\xEF\xBB\xBF", 3) == 0)
        p += 3;
    log_builder b = {0};
    int rc = 0;
    for (int line = 1; p < end && rc == 0; line++) {
        const char *next;
        size_t n = line_span(p, end, &next);
        if (!is_blank_line(p, n)) {
            tomo_log_entry e;
            rc = parse_log_line(path, line, p, n, &e, err);
            if (rc == 0 && log_builder_push(&b, &e, line) < 0)
                rc = tomo_error_set(err, TOMO_E_NOMEM, "%s: out of memory", path);
        }
        p = next;
    }
    if (rc == 0)
        rc = check_duplicate_frames(path, b.entries, b.lines, b.count, err);
    free(b.lines);
    if (rc != 0) {
        free(b.entries);
        return rc;
    }
    *entries = b.entries;
    *count = b.count;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* HiPic .img                                                                                  */
/* ------------------------------------------------------------------------------------------ */

static unsigned get_u16le(const unsigned char *b)
{
    return (unsigned)b[0] | ((unsigned)b[1] << 8);
}

static void put_u16le(unsigned char *b, unsigned v)
{
    b[0] = (unsigned char)(v & 0xff);
    b[1] = (unsigned char)((v >> 8) & 0xff);
}

int tomo_hipic_parse_header(const char *path, const unsigned char *bytes, size_t len,
                            tomo_hipic_header *hdr, tomo_error *err)
{
    if (len < TOMO_HIPIC_HEADER_SIZE)
        return tomo_error_set(err, TOMO_E_FORMAT,
                              "%s: truncated: %zu bytes, shorter than the %d-byte HiPic header",
                              path, len, TOMO_HIPIC_HEADER_SIZE);
    if (bytes[0] != 'I' || bytes[1] != 'M')
        return tomo_error_set(err, TOMO_E_FORMAT, "%s: not a HiPic 16-bit image (bad magic)", path);
    hdr->comment_length = (int)get_u16le(bytes + 2);
    hdr->width = (int)get_u16le(bytes + 4);
    hdr->height = (int)get_u16le(bytes + 6);
    hdr->type = (int)get_u16le(bytes + 12);
    hdr->data_offset = TOMO_HIPIC_HEADER_SIZE + (int64_t)hdr->comment_length;
    if (hdr->type != TOMO_HIPIC_TYPE_U16)
        return tomo_error_set(err, TOMO_E_FORMAT, "%s: not a HiPic 16-bit image (type %d)", path,
                              hdr->type);
    if (hdr->width <= 0 || hdr->height <= 0)
        return tomo_error_set(err, TOMO_E_FORMAT, "%s: HiPic image of size %dx%d", path, hdr->width,
                              hdr->height);
    return 0;
}

void tomo_hipic_write_header(unsigned char out[TOMO_HIPIC_HEADER_SIZE], int width, int height,
                             int comment_length)
{
    memset(out, 0, TOMO_HIPIC_HEADER_SIZE);
    out[0] = 'I';
    out[1] = 'M';
    put_u16le(out + 2, (unsigned)comment_length);
    put_u16le(out + 4, (unsigned)width);
    put_u16le(out + 6, (unsigned)height);
    put_u16le(out + 12, TOMO_HIPIC_TYPE_U16);
}

static int64_t hipic_file_size(const tomo_hipic_header *h)
{
    return h->data_offset + 2 * (int64_t)h->width * (int64_t)h->height;
}

static int open_for_reading(const char *path, tomo_error *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return tomo_error_set(err, TOMO_E_IO, "%s: cannot open: %s", path, strerror(errno));
    return fd;
}

static int read_hipic_header(const char *path, tomo_hipic_header *hdr, tomo_error *err)
{
    int fd = open_for_reading(path, err);
    if (fd < 0)
        return fd;
    unsigned char buf[TOMO_HIPIC_HEADER_SIZE];
    ssize_t got = tomo_pread_full(fd, buf, sizeof buf, 0);
    int saved = errno;
    close(fd);
    if (got < 0)
        return tomo_error_set(err, TOMO_E_IO, "%s: read failed: %s", path, strerror(saved));
    return tomo_hipic_parse_header(path, buf, (size_t)got, hdr, err);
}

/*
 * Checks a frame's header against the detector size (taken from the header when *width is
 * 0) and against the file size; gives where row 0 starts. `dark_name` is for the message.
 */
static int check_hipic_frame(const char *path, int64_t size, int *width, int *height,
                             const char *dark_name, int64_t *data_offset, tomo_error *err)
{
    tomo_hipic_header h;
    int rc = read_hipic_header(path, &h, err);
    if (rc < 0)
        return rc;
    if (*width > 0 && (h.width != *width || h.height != *height))
        return tomo_error_set(err, TOMO_E_FORMAT, "%s: is %dx%d, expected %dx%d like %s", path,
                              h.width, h.height, *width, *height, dark_name);
    int64_t expected = hipic_file_size(&h);
    if (size < expected)
        return tomo_error_set(err, TOMO_E_FORMAT, "%s: truncated: %lld bytes, expected %lld", path,
                              (long long)size, (long long)expected);
    if (size > expected)
        return tomo_error_set(err, TOMO_E_FORMAT,
                              "%s: %lld bytes, expected %lld for a %dx%d 16-bit HiPic image", path,
                              (long long)size, (long long)expected, h.width, h.height);
    *width = h.width;
    *height = h.height;
    *data_offset = h.data_offset;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* 16-bit TIFF                                                                                 */
/* ------------------------------------------------------------------------------------------ */

/* libtiff's messages are captured by tiffframe.c, shared with the TIFF-series reader. */
static int tiff_open(const char *path, TIFF **out, tomo_error *err)
{
    return tomo_tiff_open(path, out, err);
}

/* Checks that the open TIFF holds one 16-bit grey image in strips; gives its size. */
static int tiff_check_layout(TIFF *tif, const char *path, int *width, int *height, tomo_error *err)
{
    uint16_t bits = 0, spp = 0, sfmt = 0, photo = 0;
    uint32_t w = 0, h = 0;
    if (TIFFIsTiled(tif))
        return tomo_error_set(err, TOMO_E_UNSUPPORTED, "%s: tiled TIFF not supported", path);
    TIFFGetFieldDefaulted(tif, TIFFTAG_BITSPERSAMPLE, &bits);
    if (bits != 16)
        return tomo_error_set(err, TOMO_E_FORMAT, "%s: %d-bit TIFF, expected 16-bit", path,
                              (int)bits);
    TIFFGetFieldDefaulted(tif, TIFFTAG_SAMPLESPERPIXEL, &spp);
    if (spp != 1)
        return tomo_error_set(err, TOMO_E_FORMAT,
                              "%s: %d samples per pixel, expected 1 (greyscale)", path, (int)spp);
    TIFFGetFieldDefaulted(tif, TIFFTAG_SAMPLEFORMAT, &sfmt);
    if (sfmt != SAMPLEFORMAT_UINT)
        return tomo_error_set(err, TOMO_E_FORMAT,
                              "%s: signed or floating-point samples, expected unsigned 16-bit",
                              path);
    /* A missing tag is tolerated: with one sample the image can only be greyscale. */
    if (TIFFGetField(tif, TIFFTAG_PHOTOMETRIC, &photo) && photo != PHOTOMETRIC_MINISBLACK &&
        photo != PHOTOMETRIC_MINISWHITE)
        return tomo_error_set(err, TOMO_E_FORMAT,
                              "%s: photometric interpretation %d, expected MinIsBlack or "
                              "MinIsWhite",
                              path, (int)photo);
    if (!TIFFGetField(tif, TIFFTAG_IMAGEWIDTH, &w) || !TIFFGetField(tif, TIFFTAG_IMAGELENGTH, &h) ||
        w == 0 || h == 0 || w > INT_MAX / 2 || h > INT_MAX / 2)
        return tomo_error_set(err, TOMO_E_FORMAT, "%s: TIFF of size %ux%u", path, (unsigned)w,
                              (unsigned)h);
    *width = (int)w;
    *height = (int)h;
    return 0;
}

/* Opens a TIFF and checks it; width/height <= 0 accepts any size and reports it. */
static int tiff_inspect(const char *path, int *width, int *height, const char *dark_name,
                        tomo_error *err)
{
    TIFF *tif;
    int rc = tiff_open(path, &tif, err);
    if (rc < 0)
        return rc;
    int w, h;
    rc = tiff_check_layout(tif, path, &w, &h, err);
    TIFFClose(tif);
    if (rc < 0)
        return rc;
    if (*width > 0 && (w != *width || h != *height))
        return tomo_error_set(err, TOMO_E_FORMAT, "%s: is %dx%d, expected %dx%d like %s", path, w,
                              h, *width, *height, dark_name);
    *width = w;
    *height = h;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Reader                                                                                      */
/* ------------------------------------------------------------------------------------------ */

typedef struct s8_frame {
    int number;          /* frame number, -1 for the dark */
    int64_t data_offset; /* HiPic: where row 0 starts; unused for TIFF */
    char *path;
} s8_frame;

typedef struct s8_reader {
    int tiff;
    int width;
    int height;
    s8_frame dark;
    s8_frame *frames; /* the frames output.log lists, by ascending number */
    int n_frames;
    int *proj_frame; /* [n_proj] index into frames, in the scan's (sorted) order */
    int *flat_frame; /* [n_flat] */
    int n_proj;
    int n_flat;
    tomo_his *his; /* the frames' stream when they come from a .his file, else NULL */
} s8_reader;

static void s8_close(void *reader)
{
    s8_reader *r = reader;
    if (!r)
        return;
    free(r->dark.path);
    for (int i = 0; i < r->n_frames; i++)
        free(r->frames[i].path);
    free(r->frames);
    free(r->proj_frame);
    free(r->flat_frame);
    if (r->his) {
        tomo_his_close(r->his);
        free(r->his);
    }
    free(r);
}

static const s8_frame *s8_frame_for(const s8_reader *r, tomo_frame_kind kind, int index)
{
    switch (kind) {
    case TOMO_FRAME_PROJECTION:
        return index >= 0 && index < r->n_proj ? &r->frames[r->proj_frame[index]] : NULL;
    case TOMO_FRAME_FLAT:
        return index >= 0 && index < r->n_flat ? &r->frames[r->flat_frame[index]] : NULL;
    case TOMO_FRAME_DARK:
        return index == 0 ? &r->dark : NULL;
    }
    return NULL;
}

static int short_read(const char *path, int row, tomo_error *err)
{
    return tomo_error_set(err, TOMO_E_IO, "%s: short read at row %d (file truncated?)", path, row);
}

/*
 * The raw 16-bit rows are read into the upper half of dst and widened in place: element i
 * is written to bytes [4i, 4i+4), which never reaches the raw bytes of any element j > i
 * still to be read at [2n + 2j, 2n + 2j + 2).
 */
static unsigned char *raw_area(float *dst, size_t n_pixels)
{
    return (unsigned char *)dst + 2 * n_pixels;
}

static void widen_u16(float *dst, size_t n_pixels, int big_endian)
{
    const unsigned char *raw = raw_area(dst, n_pixels);
    for (size_t i = 0; i < n_pixels; i++) {
        const unsigned char *b = raw + 2 * i;
        unsigned v = big_endian ? ((unsigned)b[0] << 8) | b[1] : ((unsigned)b[1] << 8) | b[0];
        dst[i] = (float)v;
    }
}

static int read_img_rows(const s8_reader *r, const s8_frame *f, int z0, int nz, float *dst,
                         tomo_error *err)
{
    size_t n_pixels = (size_t)r->width * (size_t)nz;
    size_t row_bytes = 2 * (size_t)r->width;
    int fd = open_for_reading(f->path, err);
    if (fd < 0)
        return fd;
    ssize_t got = tomo_pread_full(fd, raw_area(dst, n_pixels), 2 * n_pixels,
                                  f->data_offset + (int64_t)row_bytes * z0);
    int saved = errno;
    close(fd);
    if (got < 0)
        return tomo_error_set(err, TOMO_E_IO, "%s: read failed: %s", f->path, strerror(saved));
    if ((size_t)got < 2 * n_pixels)
        return short_read(f->path, z0 + (int)((size_t)got / row_bytes), err);
    widen_u16(dst, n_pixels, 0);
    return 0;
}

typedef struct strip_band {
    uint32_t rows_per_strip;
    uint32_t first; /* strips overlapping [z0, z0 + nz) */
    uint32_t last;
} strip_band;

static strip_band strips_of_band(TIFF *tif, int height, int z0, int nz)
{
    uint32_t rps = 0;
    TIFFGetFieldDefaulted(tif, TIFFTAG_ROWSPERSTRIP, &rps);
    if (rps == 0 || rps > (uint32_t)height)
        rps = (uint32_t)height;
    strip_band b = {rps, (uint32_t)z0 / rps, (uint32_t)(z0 + nz - 1) / rps};
    return b;
}

static uint32_t rows_in_strip(const strip_band *b, uint32_t s, int height)
{
    uint32_t start = s * b->rows_per_strip;
    uint32_t left = (uint32_t)height - start;
    return left < b->rows_per_strip ? left : b->rows_per_strip;
}

/* True when the band's strips are stored raw and whole, so rows can be read with pread. */
static int tiff_is_direct(TIFF *tif, const strip_band *b, int width, int height)
{
    uint16_t compression = 0, fill = 0;
    TIFFGetFieldDefaulted(tif, TIFFTAG_COMPRESSION, &compression);
    TIFFGetFieldDefaulted(tif, TIFFTAG_FILLORDER, &fill);
    if (compression != COMPRESSION_NONE || fill != FILLORDER_MSB2LSB)
        return 0;
    if (b->last >= TIFFNumberOfStrips(tif))
        return 0;
    for (uint32_t s = b->first; s <= b->last; s++) {
        uint64_t need = (uint64_t)rows_in_strip(b, s, height) * 2u * (uint64_t)width;
        if (TIFFGetStrileOffset(tif, s) == 0 || TIFFGetStrileByteCount(tif, s) < need)
            return 0;
    }
    return 1;
}

/* A run of rows that lie back to back in the file. */
typedef struct row_run {
    int64_t offset;
    int row; /* first row */
    int n;   /* rows */
} row_run;

static int read_row_run(int fd, const char *path, const row_run *run, int z0, size_t row_bytes,
                        unsigned char *raw, tomo_error *err)
{
    size_t len = row_bytes * (size_t)run->n;
    ssize_t got = tomo_pread_full(fd, raw + row_bytes * (size_t)(run->row - z0), len, run->offset);
    if (got < 0)
        return tomo_error_set(err, TOMO_E_IO, "%s: read failed: %s", path, strerror(errno));
    if ((size_t)got < len)
        return short_read(path, run->row + (int)((size_t)got / row_bytes), err);
    return 0;
}

static int read_tif_direct(TIFF *tif, const char *path, const strip_band *b, int width, int z0,
                           int nz, float *dst, tomo_error *err)
{
    size_t row_bytes = 2 * (size_t)width;
    size_t n_pixels = (size_t)width * (size_t)nz;
    unsigned char *raw = raw_area(dst, n_pixels);
    int fd = TIFFFileno(tif);
    row_run run = {0, z0, 0};
    for (uint32_t s = b->first; s <= b->last; s++) {
        int strip_row = (int)(s * b->rows_per_strip);
        int from = z0 > strip_row ? z0 : strip_row;
        int to = strip_row + (int)b->rows_per_strip;
        to = to < z0 + nz ? to : z0 + nz;
        int64_t off =
            (int64_t)TIFFGetStrileOffset(tif, s) + (int64_t)row_bytes * (int64_t)(from - strip_row);
        if (run.n > 0 && run.offset + (int64_t)row_bytes * run.n == off) {
            run.n += to - from;
            continue;
        }
        if (run.n > 0) {
            int rc = read_row_run(fd, path, &run, z0, row_bytes, raw, err);
            if (rc < 0)
                return rc;
        }
        run = (row_run){off, from, to - from};
    }
    int rc = read_row_run(fd, path, &run, z0, row_bytes, raw, err);
    if (rc < 0)
        return rc;
    widen_u16(dst, n_pixels, TIFFIsBigEndian(tif));
    return 0;
}

/* Decodes whole strips through libtiff, which undoes compression, predictor and byte order. */
static int read_tif_strips(TIFF *tif, const char *path, const strip_band *b, int width, int height,
                           int z0, int nz, float *dst, tomo_error *err)
{
    tmsize_t strip_size = TIFFStripSize(tif);
    uint16_t *buf = strip_size > 0 ? malloc((size_t)strip_size) : NULL;
    if (!buf)
        return tomo_error_set(err, TOMO_E_NOMEM, "%s: cannot allocate a strip buffer", path);
    int rc = 0;
    for (uint32_t s = b->first; s <= b->last && rc == 0; s++) {
        tomo_tiff_clear_reason();
        tmsize_t got = TIFFReadEncodedStrip(tif, s, buf, strip_size);
        uint32_t n_rows = rows_in_strip(b, s, height);
        if (got < 0 || (uint64_t)got < (uint64_t)n_rows * 2u * (uint64_t)width) {
            rc = tomo_error_set(err, TOMO_E_IO, "%s: cannot decode strip %u: %s", path, (unsigned)s,
                                got < 0 ? tomo_tiff_reason() : "strip too short");
            break;
        }
        int strip_row = (int)(s * b->rows_per_strip);
        int from = z0 > strip_row ? z0 : strip_row;
        int to = strip_row + (int)n_rows;
        to = to < z0 + nz ? to : z0 + nz;
        for (int y = from; y < to; y++) {
            const uint16_t *src = buf + (size_t)(y - strip_row) * (size_t)width;
            float *out = dst + (size_t)(y - z0) * (size_t)width;
            for (int x = 0; x < width; x++)
                out[x] = (float)src[x];
        }
    }
    free(buf);
    return rc;
}

static int read_tif_rows(const s8_reader *r, const s8_frame *f, int z0, int nz, float *dst,
                         tomo_error *err)
{
    TIFF *tif;
    int rc = tiff_open(f->path, &tif, err);
    if (rc < 0)
        return rc;
    int w, h;
    rc = tiff_check_layout(tif, f->path, &w, &h, err);
    if (rc == 0 && (w != r->width || h != r->height))
        rc = tomo_error_set(err, TOMO_E_FORMAT, "%s: is %dx%d, expected %dx%d", f->path, w, h,
                            r->width, r->height);
    if (rc == 0) {
        strip_band b = strips_of_band(tif, h, z0, nz);
        if (tiff_is_direct(tif, &b, w, h))
            rc = read_tif_direct(tif, f->path, &b, w, z0, nz, dst, err);
        else
            rc = read_tif_strips(tif, f->path, &b, w, h, z0, nz, dst, err);
    }
    TIFFClose(tif);
    return rc;
}

static int s8_read_rows(void *reader, tomo_frame_kind kind, int index, int z0, int nz, float *dst,
                        tomo_error *err)
{
    const s8_reader *r = reader;
    const s8_frame *f = s8_frame_for(r, kind, index);
    if (!f)
        return tomo_error_set(err, TOMO_E_INTERNAL, "spring8 reader: no frame %d of kind %d", index,
                              (int)kind);
    if (z0 < 0 || nz <= 0 || z0 > r->height - nz)
        return tomo_error_set(err, TOMO_E_INTERNAL, "%s: rows [%d, %d) outside 0..%d", f->path, z0,
                              z0 + nz, r->height);
    /* A stream's frame numbers are output.log's, counted from 1 in the file. */
    if (r->his && kind != TOMO_FRAME_DARK)
        return tomo_his_read_rows(r->his, f->number, z0, nz, dst, err);
    return r->tiff ? read_tif_rows(r, f, z0, nz, dst, err) : read_img_rows(r, f, z0, nz, dst, err);
}

static const tomo_scan_reader_ops s8_ops = {s8_read_rows, s8_close};

/* ------------------------------------------------------------------------------------------ */
/* Directory                                                                                   */
/* ------------------------------------------------------------------------------------------ */

static int ends_with_ci(const char *s, size_t n, const char *suffix)
{
    size_t k = strlen(suffix);
    return n >= k && strcasecmp(s + n - k, suffix) == 0;
}

/* Length of the frame-file extension of `name`, or 0 when it is not one of this format's. */
static size_t frame_extension(const char *name, size_t n, int tiff)
{
    if (!tiff)
        return ends_with_ci(name, n, ".img") ? 4 : 0;
    if (ends_with_ci(name, n, ".tiff"))
        return 5;
    return ends_with_ci(name, n, ".tif") ? 4 : 0;
}

/* Frame number of a file named q<digits>.<ext>, or -1 when the name is not a frame's. */
static int frame_number_of(const char *name, int tiff)
{
    size_t n = strlen(name);
    if (n <= 5 || (name[0] != 'q' && name[0] != 'Q'))
        return -1;
    size_t ext = frame_extension(name, n, tiff);
    if (ext == 0 || n - ext < 2)
        return -1;
    long long v = 0;
    for (size_t i = 1; i < n - ext; i++) {
        if (name[i] < '0' || name[i] > '9')
            return -1;
        v = v * 10 + (name[i] - '0');
        if (v > INT_MAX)
            return -1;
    }
    return (int)v;
}

typedef struct dir_frame {
    int number;
    char *name;
} dir_frame;

static int compare_dir_frames(const void *a, const void *b)
{
    const dir_frame *x = a, *y = b;
    if (x->number != y->number)
        return x->number < y->number ? -1 : 1;
    return strcmp(x->name, y->name);
}

typedef struct dir_listing {
    dir_frame *items;
    int count;
    int cap;
} dir_listing;

static void dir_listing_free(dir_listing *l)
{
    for (int i = 0; i < l->count; i++)
        free(l->items[i].name);
    free(l->items);
    *l = (dir_listing){0};
}

static int dir_listing_push(dir_listing *l, int number, const char *name)
{
    if (l->count == l->cap) {
        if (l->cap > INT_MAX / 2)
            return -1;
        int cap = l->cap ? 2 * l->cap : 1024;
        dir_frame *ni = realloc(l->items, (size_t)cap * sizeof *ni);
        if (!ni)
            return -1;
        l->items = ni;
        l->cap = cap;
    }
    char *copy = strdup(name);
    if (!copy)
        return -1;
    l->items[l->count++] = (dir_frame){number, copy};
    return 0;
}

/* Collects the frame files of the directory, sorted by number; equal numbers are an error. */
static int list_frame_files(DIR *d, const char *dir, int tiff, dir_listing *l, tomo_error *err)
{
    struct dirent *de;
    errno = 0;
    while ((de = readdir(d)) != NULL) {
        int number = frame_number_of(de->d_name, tiff);
        if (number >= 0 && dir_listing_push(l, number, de->d_name) < 0)
            return tomo_error_set(err, TOMO_E_NOMEM, "%s: out of memory listing frames", dir);
        errno = 0;
    }
    if (errno != 0)
        return tomo_error_set(err, TOMO_E_IO, "%s: cannot list: %s", dir, strerror(errno));
    if (l->count > 1)
        qsort(l->items, (size_t)l->count, sizeof *l->items, compare_dir_frames);
    for (int i = 1; i < l->count; i++) {
        if (l->items[i].number == l->items[i - 1].number)
            return tomo_error_set(err, TOMO_E_FORMAT, "%s: %s and %s both have frame number %d",
                                  dir, l->items[i - 1].name, l->items[i].name, l->items[i].number);
    }
    return 0;
}

static const dir_frame *find_dir_frame(const dir_listing *l, int number)
{
    int lo = 0, hi = l->count - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        if (l->items[mid].number == number)
            return &l->items[mid];
        if (l->items[mid].number < number)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* Opening                                                                                     */
/* ------------------------------------------------------------------------------------------ */

typedef struct s8_open {
    char dir[S8_PATH_MAX]; /* as given, without trailing slashes */
    char log_path[S8_PATH_MAX];
    char *log_text;
    size_t log_len;
    struct stat log_st;
    tomo_log_entry *log;
    int n_log;
    char dark_name[16];
    struct stat dark_st;
    DIR *d;
    dir_listing listing;
    int64_t *frame_size; /* [n_log], st_size of each listed frame, log order */
    uint64_t fingerprint;
    s8_reader *r; /* frames in log order until the end of open */
} s8_open;

static int join_path(char out[S8_PATH_MAX], const char *dir, const char *name, tomo_error *err)
{
    int n = snprintf(out, S8_PATH_MAX, "%s/%s", dir, name);
    if (n < 0 || n >= S8_PATH_MAX)
        return tomo_error_set(err, TOMO_E_INVALID, "%s/%s: path too long", dir, name);
    return 0;
}

static int dup_path(const char *dir, const char *name, char **out, tomo_error *err)
{
    char buf[S8_PATH_MAX];
    int rc = join_path(buf, dir, name, err);
    if (rc < 0)
        return rc;
    *out = strdup(buf);
    if (!*out)
        return tomo_error_set(err, TOMO_E_NOMEM, "%s: out of memory", buf);
    return 0;
}

static int set_dir(s8_open *o, const char *dir, tomo_error *err)
{
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/')
        n--;
    if (n == 0 || n >= S8_PATH_MAX - 32)
        return tomo_error_set(err, TOMO_E_INVALID, "%s: path empty or too long", dir);
    memcpy(o->dir, dir, n);
    o->dir[n] = '\0';
    return join_path(o->log_path, o->dir, "output.log", err);
}

static int read_log_file(s8_open *o, tomo_error *err)
{
    int fd = open_for_reading(o->log_path, err);
    if (fd < 0)
        return fd;
    int rc = 0;
    size_t cap = 0;
    if (fstat(fd, &o->log_st) < 0 || !S_ISREG(o->log_st.st_mode)) {
        rc = tomo_error_set(err, TOMO_E_IO, "%s: not a regular file", o->log_path);
        goto out;
    }
    cap = (size_t)o->log_st.st_size + 1;
    for (;;) {
        char *nt = realloc(o->log_text, cap);
        if (!nt) {
            rc = tomo_error_set(err, TOMO_E_NOMEM, "%s: out of memory", o->log_path);
            goto out;
        }
        o->log_text = nt;
        ssize_t got = tomo_pread_full(fd, nt + o->log_len, cap - o->log_len, (int64_t)o->log_len);
        if (got < 0) {
            rc =
                tomo_error_set(err, TOMO_E_IO, "%s: read failed: %s", o->log_path, strerror(errno));
            goto out;
        }
        o->log_len += (size_t)got;
        if (o->log_len < cap)
            break;
        cap *= 2; /* the file grew while being read */
    }
out:
    close(fd);
    return rc;
}

static int check_log_counts(const s8_open *o, int *n_proj, int *n_flat, tomo_error *err)
{
    *n_proj = *n_flat = 0;
    for (int i = 0; i < o->n_log; i++) {
        if (o->log[i].flag == 1)
            (*n_proj)++;
        else
            (*n_flat)++;
    }
    if (*n_proj == 0)
        return tomo_error_set(err, TOMO_E_FORMAT, "%s: no projections (no line with flag 1)",
                              o->log_path);
    if (*n_flat == 0)
        return tomo_error_set(err, TOMO_E_FORMAT, "%s: no flat fields (flag 0)", o->log_path);
    return 0;
}

/* Picks dark.img, else dark.tif; the dark's format is the format of every frame. */
static int find_dark(s8_open *o, tomo_error *err)
{
    static const char *const names[] = {"dark.img", "dark.tif", "dark.tiff"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char path[S8_PATH_MAX];
        int rc = join_path(path, o->dir, names[i], err);
        if (rc < 0)
            return rc;
        if (stat(path, &o->dark_st) == 0 && S_ISREG(o->dark_st.st_mode)) {
            snprintf(o->dark_name, sizeof o->dark_name, "%s", names[i]);
            o->r->tiff = i > 0;
            o->r->dark.number = -1;
            o->r->dark.path = strdup(path);
            if (!o->r->dark.path)
                return tomo_error_set(err, TOMO_E_NOMEM, "%s: out of memory", path);
            return 0;
        }
    }
    return tomo_error_set(err, TOMO_E_IO, "%s: no dark.img or dark.tif", o->dir);
}

/* The dark sets the detector size that every frame must have. */
static int inspect_dark(s8_open *o, tomo_error *err)
{
    s8_reader *r = o->r;
    r->width = r->height = 0;
    if (r->tiff)
        return tiff_inspect(r->dark.path, &r->width, &r->height, o->dark_name, err);
    return check_hipic_frame(r->dark.path, (int64_t)o->dark_st.st_size, &r->width, &r->height,
                             o->dark_name, &r->dark.data_offset, err);
}

static uint64_t hash_file_identity(uint64_t h, const char *name, const struct stat *st)
{
    h = tomo_hash_bytes(h, name, strlen(name) + 1);
    h = tomo_hash_u64(h, (uint64_t)st->st_size);
    h = tomo_hash_u64(h, (uint64_t)st->st_mtim.tv_sec);
    return tomo_hash_u64(h, (uint64_t)st->st_mtim.tv_nsec);
}

/* Finds and stats the file of every listed frame, in log order, and hashes what it saw. */
static int match_frames(s8_open *o, tomo_error *err)
{
    s8_reader *r = o->r;
    const char *ext = r->tiff ? "tif" : "img";
    int dfd = dirfd(o->d);
    r->frames = calloc((size_t)o->n_log, sizeof *r->frames);
    o->frame_size = calloc((size_t)o->n_log, sizeof *o->frame_size);
    if (!r->frames || !o->frame_size)
        return tomo_error_set(err, TOMO_E_NOMEM, "%s: out of memory", o->dir);
    uint64_t h = tomo_hash_bytes(TOMO_HASH_INIT, o->log_text, o->log_len);
    h = hash_file_identity(h, o->dark_name, &o->dark_st);
    for (int i = 0; i < o->n_log; i++) {
        int number = o->log[i].frame;
        const dir_frame *df = find_dir_frame(&o->listing, number);
        if (!df)
            return tomo_error_set(err, TOMO_E_IO,
                                  "%s lists frame %d but no q*.%s file has that number",
                                  o->log_path, number, ext);
        s8_frame *f = &r->frames[r->n_frames++];
        f->number = number;
        int rc = dup_path(o->dir, df->name, &f->path, err);
        if (rc < 0)
            return rc;
        struct stat st;
        if (fstatat(dfd, df->name, &st, 0) < 0)
            return tomo_error_set(err, TOMO_E_IO, "%s: cannot stat: %s", f->path, strerror(errno));
        if (!S_ISREG(st.st_mode))
            return tomo_error_set(err, TOMO_E_IO, "%s: not a regular file", f->path);
        o->frame_size[i] = (int64_t)st.st_size;
        h = hash_file_identity(h, df->name, &st);
    }
    o->fingerprint = h;
    return 0;
}

/*
 * The .his stream of a directory without q* frames. Returns 1 when there is none, 0 with
 * `name` filled when there is exactly one.
 */
static int find_his(s8_open *o, char name[256], tomo_error *err)
{
    int found = 0;
    struct dirent *de;
    rewinddir(o->d);
    while ((de = readdir(o->d)) != NULL) {
        size_t n = strlen(de->d_name);
        struct stat st;
        if (n >= 256 || !ends_with_ci(de->d_name, n, ".his") ||
            fstatat(dirfd(o->d), de->d_name, &st, 0) < 0 || !S_ISREG(st.st_mode))
            continue;
        if (found++)
            return tomo_error_set(err, TOMO_E_FORMAT,
                                  "%s: no q* frames, and several .his streams (%s, %s): keep one",
                                  o->dir, name, de->d_name);
        memcpy(name, de->d_name, n + 1);
    }
    return found ? 0 : 1;
}

/*
 * Takes every frame output.log lists from the directory's .his stream, frame number k being
 * the k-th frame of the stream. Returns 1 when there is no stream (the caller then reports the
 * missing q* files), 0 when the frames are set, or an error.
 */
static int open_his_frames(s8_open *o, tomo_error *err)
{
    s8_reader *r = o->r;
    char name[256], path[S8_PATH_MAX];
    int rc = find_his(o, name, err);
    if (rc != 0)
        return rc;
    if ((rc = join_path(path, o->dir, name, err)) < 0)
        return rc;
    r->his = calloc(1, sizeof *r->his);
    if (!r->his)
        return tomo_error_set(err, TOMO_E_NOMEM, "%s: out of memory", path);
    r->his->fd = -1;
    if ((rc = tomo_his_open(path, r->his, err)) < 0)
        return rc;
    if (r->his->width != r->width || r->his->height != r->height)
        return tomo_error_set(err, TOMO_E_FORMAT, "%s: frames are %dx%d, expected %dx%d like %s",
                              path, r->his->width, r->his->height, r->width, r->height,
                              o->dark_name);
    r->frames = calloc((size_t)o->n_log, sizeof *r->frames);
    if (!r->frames)
        return tomo_error_set(err, TOMO_E_NOMEM, "%s: out of memory", o->dir);
    for (int i = 0; i < o->n_log; i++) {
        int number = o->log[i].frame;
        if (number < 1 || number > r->his->frames)
            return tomo_error_set(err, TOMO_E_FORMAT,
                                  "%s lists frame %d but %s holds frames 1-%lld", o->log_path,
                                  number, name, (long long)r->his->frames);
        s8_frame *f = &r->frames[r->n_frames++];
        f->number = number;
        f->path = strdup(path);
        if (!f->path)
            return tomo_error_set(err, TOMO_E_NOMEM, "%s: out of memory", path);
    }
    struct stat st;
    if (stat(path, &st) < 0)
        return tomo_error_set(err, TOMO_E_IO, "%s: cannot stat: %s", path, strerror(errno));
    uint64_t h = tomo_hash_bytes(TOMO_HASH_INIT, o->log_text, o->log_len);
    h = hash_file_identity(h, o->dark_name, &o->dark_st);
    o->fingerprint = hash_file_identity(h, name, &st);
    return 0;
}

static int is_sampled(int i, int n)
{
    return i % S8_SAMPLE_STRIDE == 0 || i == n - 1;
}

/*
 * A frame whose size matches the first frame's layout needs no header read (same width and
 * height imply the same comment length); sampled frames and any other size are parsed.
 */
static int check_img_frames(s8_open *o, tomo_error *err)
{
    s8_reader *r = o->r;
    int w = r->width, h = r->height;
    int64_t first_offset;
    int rc = check_hipic_frame(r->frames[0].path, o->frame_size[0], &w, &h, o->dark_name,
                               &first_offset, err);
    if (rc < 0)
        return rc;
    int64_t common_size = first_offset + 2 * (int64_t)w * h;
    r->frames[0].data_offset = first_offset;
    for (int i = 1; i < r->n_frames; i++) {
        s8_frame *f = &r->frames[i];
        f->data_offset = first_offset;
        if (o->frame_size[i] == common_size && !is_sampled(i, r->n_frames))
            continue;
        rc = check_hipic_frame(f->path, o->frame_size[i], &w, &h, o->dark_name, &f->data_offset,
                               err);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/*
 * Uncompressed frames of one acquisition all have one size, so a frame of another size (an
 * 8-bit or cropped file, say) is inspected even when it is not one of the sampled frames.
 */
static int check_tif_frames(s8_open *o, tomo_error *err)
{
    s8_reader *r = o->r;
    for (int i = 0; i < r->n_frames; i++) {
        const s8_frame *f = &r->frames[i];
        if (o->frame_size[i] == 0)
            return tomo_error_set(err, TOMO_E_FORMAT, "%s: empty file", f->path);
        /* frames written alike have one size; any other size is worth a full look */
        if (!is_sampled(i, r->n_frames) && o->frame_size[i] == o->frame_size[0])
            continue;
        int w = r->width, h = r->height;
        int rc = tiff_inspect(f->path, &w, &h, o->dark_name, err);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* Fills the scan in log order; flat_run numbers the runs of consecutive flat lines. */
static void fill_scan_from_log(const s8_open *o, tomo_scan *scan, int *flat_run)
{
    int m = 0, f = 0, run = -1, prev_flat = 0;
    for (int i = 0; i < o->n_log; i++) {
        const tomo_log_entry *e = &o->log[i];
        if (e->flag == 1) {
            scan->proj_angle_deg[m] = e->angle;
            scan->proj_time[m] = e->time;
            scan->proj_frame[m] = e->frame;
            m++;
            prev_flat = 0;
            continue;
        }
        if (!prev_flat)
            run++;
        scan->flat_time[f] = e->time;
        scan->flat_frame[f] = e->frame;
        flat_run[f] = run;
        f++;
        prev_flat = 1;
    }
}

static int compare_frames_by_number(const void *a, const void *b)
{
    const s8_frame *x = a, *y = b;
    return (x->number > y->number) - (x->number < y->number);
}

static int frame_index(const s8_reader *r, int number)
{
    s8_frame key = {.number = number};
    const s8_frame *f =
        bsearch(&key, r->frames, (size_t)r->n_frames, sizeof key, compare_frames_by_number);
    return f ? (int)(f - r->frames) : -1;
}

/* Points each projection and flat of the sorted scan at its file. */
static int map_reader_frames(s8_reader *r, const tomo_scan *scan, tomo_error *err)
{
    qsort(r->frames, (size_t)r->n_frames, sizeof *r->frames, compare_frames_by_number);
    r->n_proj = scan->n_proj;
    r->n_flat = scan->n_flat;
    r->proj_frame = malloc((size_t)scan->n_proj * sizeof *r->proj_frame);
    r->flat_frame = malloc((size_t)scan->n_flat * sizeof *r->flat_frame);
    if (!r->proj_frame || !r->flat_frame)
        return tomo_error_set(err, TOMO_E_NOMEM, "%s: out of memory", scan->path);
    for (int m = 0; m < scan->n_proj; m++)
        r->proj_frame[m] = frame_index(r, scan->proj_frame[m]);
    for (int f = 0; f < scan->n_flat; f++)
        r->flat_frame[f] = frame_index(r, scan->flat_frame[f]);
    for (int m = 0; m < scan->n_proj; m++) {
        if (r->proj_frame[m] < 0)
            return tomo_error_set(err, TOMO_E_INTERNAL, "%s: lost frame %d", scan->path,
                                  scan->proj_frame[m]);
    }
    for (int f = 0; f < scan->n_flat; f++) {
        if (r->flat_frame[f] < 0)
            return tomo_error_set(err, TOMO_E_INTERNAL, "%s: lost frame %d", scan->path,
                                  scan->flat_frame[f]);
    }
    return 0;
}

static void describe_scan(const s8_open *o, tomo_scan *scan)
{
    const s8_reader *r = o->r;
    tomo_scan_add_source(scan, "output.log: %d frames (%d projections, %d flats in %d groups)",
                         o->n_log, scan->n_proj, scan->n_flat, scan->n_flat_groups);
    tomo_scan_add_source(scan, "%s: one dark, averaged beforehand", o->dark_name);
    if (r->his) {
        static const char *const type_name[] = {"8-bit", "", "16-bit", "", "", "", "12-bit packed"};
        const char *slash = strrchr(r->his->path, '/');
        tomo_scan_add_source(scan, "%s: HiPic stream of %lld %s frames",
                             slash ? slash + 1 : r->his->path, (long long)r->his->frames,
                             type_name[r->his->type]);
    } else {
        tomo_scan_add_source(scan, "q*.%s frames (%s)", r->tiff ? "tif" : "img",
                             r->tiff ? "16-bit TIFF" : "HiPic 16-bit");
    }
    snprintf(scan->angle_source, sizeof scan->angle_source, "output.log angle column (degrees)");
    snprintf(scan->time_basis, sizeof scan->time_basis, "log time");
}

static int build_scan(s8_open *o, int n_proj, int n_flat, tomo_scan **out, tomo_error *err)
{
    tomo_scan *scan = tomo_scan_alloc(n_proj, n_flat);
    int *flat_run = malloc((size_t)n_flat * sizeof *flat_run);
    if (!scan || !flat_run) {
        free(flat_run);
        tomo_scan_close(scan);
        return tomo_error_set(err, TOMO_E_NOMEM, "%s: out of memory", o->dir);
    }
    snprintf(scan->path, sizeof scan->path, "%s", o->dir);
    snprintf(scan->format, sizeof scan->format, "%s",
             o->r->his    ? "spring8-his"
             : o->r->tiff ? "spring8-tif"
                          : "spring8-img");
    scan->width = o->r->width;
    scan->rows = o->r->height;
    scan->n_dark = 1;
    scan->fingerprint = o->fingerprint;
    int64_t t_log = (int64_t)o->log_st.st_mtim.tv_sec, t_dark = (int64_t)o->dark_st.st_mtim.tv_sec;
    scan->mtime = t_log > t_dark ? t_log : t_dark;
    fill_scan_from_log(o, scan, flat_run);
    tomo_scan_sort_frames(scan, flat_run);
    free(flat_run);
    int rc = map_reader_frames(o->r, scan, err);
    if (rc < 0) {
        tomo_scan_close(scan);
        return rc;
    }
    describe_scan(o, scan);
    scan->ops = &s8_ops;
    scan->reader = o->r;
    o->r = NULL;
    *out = scan;
    return 0;
}

static void s8_open_cleanup(s8_open *o)
{
    free(o->log_text);
    free(o->log);
    free(o->frame_size);
    dir_listing_free(&o->listing);
    if (o->d)
        closedir(o->d);
    s8_close(o->r);
}

static int open_steps(s8_open *o, const char *dir, tomo_scan **out, tomo_error *err)
{
    int n_proj, n_flat, rc;
    if ((rc = set_dir(o, dir, err)) < 0 || (rc = read_log_file(o, err)) < 0)
        return rc;
    rc = tomo_outputlog_parse(o->log_path, o->log_text, o->log_len, &o->log, &o->n_log, err);
    if (rc < 0 || (rc = check_log_counts(o, &n_proj, &n_flat, err)) < 0)
        return rc;
    o->r = calloc(1, sizeof *o->r);
    if (!o->r)
        return tomo_error_set(err, TOMO_E_NOMEM, "%s: out of memory", o->dir);
    if ((rc = find_dark(o, err)) < 0 || (rc = inspect_dark(o, err)) < 0)
        return rc;
    o->d = opendir(o->dir);
    if (!o->d)
        return tomo_error_set(err, TOMO_E_IO, "%s: cannot open directory: %s", o->dir,
                              strerror(errno));
    if ((rc = list_frame_files(o->d, o->dir, o->r->tiff, &o->listing, err)) < 0)
        return rc;
    if (o->listing.count == 0) {
        rc = open_his_frames(o, err);
        if (rc < 0)
            return rc;
        if (rc == 0)
            return build_scan(o, n_proj, n_flat, out, err);
    }
    if ((rc = match_frames(o, err)) < 0)
        return rc;
    rc = o->r->tiff ? check_tif_frames(o, err) : check_img_frames(o, err);
    if (rc < 0)
        return rc;
    return build_scan(o, n_proj, n_flat, out, err);
}

int tomo_spring8_open(const char *dir, tomo_scan **out, tomo_error *err)
{
    *out = NULL;
    s8_open *o = calloc(1, sizeof *o);
    if (!o)
        return tomo_error_set(err, TOMO_E_NOMEM, "%s: out of memory", dir);
    int rc = open_steps(o, dir, out, err);
    s8_open_cleanup(o);
    free(o);
    return rc;
}

int tomo_spring8_detect(const char *dir)
{
    char path[S8_PATH_MAX];
    int n = snprintf(path, sizeof path, "%s/output.log", dir);
    if (n < 0 || n >= (int)sizeof path)
        return 0;
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}
