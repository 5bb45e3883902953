#include "tiffframe.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/io.h"

/* Largest frame side accepted; a larger one is damage, not a detector. */
#define TF_MAX_SIDE (1 << 20)

/* ------------------------------------------------------------------------------------------ */
/* Opening, and libtiff's messages                                                             */
/* ------------------------------------------------------------------------------------------ */

static _Thread_local char tiff_message[256];

static void capture_error(const char *module, const char *fmt, va_list ap)
{
    (void)module;
    vsnprintf(tiff_message, sizeof tiff_message, fmt, ap);
}

static void drop_warning(const char *module, const char *fmt, va_list ap)
{
    (void)module;
    (void)fmt;
    (void)ap;
}

static pthread_once_t handlers_once = PTHREAD_ONCE_INIT;

/* libtiff would print to stderr, which a FUSE daemon must not do. */
static void install_handlers(void)
{
    TIFFSetErrorHandler(capture_error);
    TIFFSetWarningHandler(drop_warning);
}

const char *tomo_tiff_reason(void)
{
    return tiff_message[0] ? tiff_message : "libtiff could not read it";
}

void tomo_tiff_clear_reason(void)
{
    tiff_message[0] = '\0';
}

int tomo_tiff_open(const char *path, TIFF **out, tomo_error *err)
{
    pthread_once(&handlers_once, install_handlers);
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return tomo_error_set(err, TOMO_E_IO, "%s: cannot open: %s", path, strerror(errno));
    tiff_message[0] = '\0';
    /* 'm': no mmap per call; 'O': load only the strip entries that are used. */
    TIFF *tif = TIFFFdOpen(fd, path, "rmO");
    if (!tif) {
        close(fd);
        return tomo_error_set(err, TOMO_E_FORMAT, "%s: not a readable TIFF: %s", path,
                              tomo_tiff_reason());
    }
    *out = tif;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Layout                                                                                      */
/* ------------------------------------------------------------------------------------------ */

static int host_is_big_endian(void)
{
    const uint16_t one = 1;
    unsigned char first;
    memcpy(&first, &one, 1);
    return first == 0;
}

static int sample_format(TIFF *tif, const char *path, tomo_sample_format *fmt, tomo_error *err)
{
    uint16_t bits = 0, spp = 0, sfmt = 0;
    TIFFGetFieldDefaulted(tif, TIFFTAG_SAMPLESPERPIXEL, &spp);
    if (spp != 1)
        return tomo_error_set(err, TOMO_E_FORMAT,
                              "%s: %d samples per pixel, expected 1 (greyscale)", path, (int)spp);
    TIFFGetFieldDefaulted(tif, TIFFTAG_BITSPERSAMPLE, &bits);
    TIFFGetFieldDefaulted(tif, TIFFTAG_SAMPLEFORMAT, &sfmt);
    fmt->big_endian = TIFFIsBigEndian(tif) ? 1 : 0;
    fmt->bytes = bits / 8;
    switch (sfmt) {
    case SAMPLEFORMAT_UINT:
        fmt->kind = TOMO_SAMPLE_UINT;
        break;
    case SAMPLEFORMAT_INT:
        fmt->kind = TOMO_SAMPLE_INT;
        break;
    case SAMPLEFORMAT_IEEEFP:
        fmt->kind = TOMO_SAMPLE_FLOAT;
        break;
    default:
        return tomo_error_set(err, TOMO_E_FORMAT,
                              "%s: sample format %d, expected unsigned or signed integers or "
                              "IEEE floats",
                              path, (int)sfmt);
    }
    if (bits % 8 != 0 || !tomo_sample_format_valid(fmt))
        return tomo_error_set(err, TOMO_E_FORMAT,
                              "%s: %d-bit %s samples, expected 8, 16, 32 or 64-bit integers or "
                              "32 or 64-bit floats",
                              path, (int)bits,
                              fmt->kind == TOMO_SAMPLE_FLOAT ? "float" : "integer");
    return 0;
}

int tomo_tiff_frame_inspect(TIFF *tif, const char *path, tomo_tiff_frame *frame, tomo_error *err)
{
    memset(frame, 0, sizeof *frame);
    int rc = sample_format(tif, path, &frame->fmt, err);
    if (rc < 0)
        return rc;
    uint16_t photo = PHOTOMETRIC_MINISBLACK;
    /* A missing tag is tolerated: with one sample the image can only be greyscale. */
    if (TIFFGetField(tif, TIFFTAG_PHOTOMETRIC, &photo) && photo != PHOTOMETRIC_MINISBLACK &&
        photo != PHOTOMETRIC_MINISWHITE)
        return tomo_error_set(err, TOMO_E_FORMAT,
                              "%s: photometric interpretation %d, expected MinIsBlack or "
                              "MinIsWhite",
                              path, (int)photo);
    frame->photometric = photo;
    uint32_t w = 0, h = 0;
    if (!TIFFGetField(tif, TIFFTAG_IMAGEWIDTH, &w) || !TIFFGetField(tif, TIFFTAG_IMAGELENGTH, &h) ||
        w == 0 || h == 0 || w > TF_MAX_SIDE || h > TF_MAX_SIDE)
        return tomo_error_set(err, TOMO_E_FORMAT, "%s: TIFF of size %ux%u", path, (unsigned)w,
                              (unsigned)h);
    frame->width = (int)w;
    frame->height = (int)h;
    TIFFGetFieldDefaulted(tif, TIFFTAG_COMPRESSION, &frame->compression);
    if (!TIFFIsCODECConfigured(frame->compression))
        return tomo_error_set(err, TOMO_E_UNSUPPORTED,
                              "%s: compression scheme %d is not available in this libtiff", path,
                              (int)frame->compression);
    frame->tiled = TIFFIsTiled(tif) ? 1 : 0;
    if (frame->tiled) {
        if (!TIFFGetField(tif, TIFFTAG_TILEWIDTH, &frame->tile_width) ||
            !TIFFGetField(tif, TIFFTAG_TILELENGTH, &frame->tile_height) || frame->tile_width == 0 ||
            frame->tile_height == 0 || frame->tile_width > TF_MAX_SIDE ||
            frame->tile_height > TF_MAX_SIDE)
            return tomo_error_set(err, TOMO_E_FORMAT, "%s: tiled TIFF with tiles of %ux%u", path,
                                  (unsigned)frame->tile_width, (unsigned)frame->tile_height);
    } else {
        uint32_t rps = 0;
        TIFFGetFieldDefaulted(tif, TIFFTAG_ROWSPERSTRIP, &rps);
        frame->rows_per_strip = rps == 0 || rps > h ? h : rps;
    }
    tomo_tiff_clear_reason();
    tdir_t pages = TIFFNumberOfDirectories(tif);
    if (pages > 1)
        return tomo_error_set(err, TOMO_E_UNSUPPORTED,
                              "%s: %u pages; one frame per file is expected", path,
                              (unsigned)pages);
    return 0;
}

void tomo_tiff_frame_describe(const tomo_tiff_frame *frame, char *buf, size_t size)
{
    char type[32];
    tomo_sample_format_name(&frame->fmt, type, sizeof type);
    const TIFFCodec *codec = TIFFFindCODEC(frame->compression);
    int k = snprintf(buf, size, "%s%s", type,
                     frame->photometric == PHOTOMETRIC_MINISWHITE ? " MinIsWhite" : "");
    if (k >= 0 && (size_t)k < size && frame->compression != COMPRESSION_NONE)
        k += snprintf(buf + k, size - (size_t)k, ", %s",
                      codec && codec->name ? codec->name : "compressed");
    if (k >= 0 && (size_t)k < size && frame->tiled)
        snprintf(buf + k, size - (size_t)k, ", tiles %ux%u", (unsigned)frame->tile_width,
                 (unsigned)frame->tile_height);
}

/* ------------------------------------------------------------------------------------------ */
/* Reading                                                                                     */
/* ------------------------------------------------------------------------------------------ */

static uint32_t rows_in_strip(const tomo_tiff_frame *f, uint32_t s)
{
    uint32_t start = s * f->rows_per_strip;
    uint32_t left = (uint32_t)f->height - start;
    return left < f->rows_per_strip ? left : f->rows_per_strip;
}

/* True when the strips of the band are stored raw and whole, so pread can read them. */
static int strips_are_direct(TIFF *tif, const tomo_tiff_frame *f, uint32_t first, uint32_t last)
{
    uint16_t fill = FILLORDER_MSB2LSB;
    TIFFGetFieldDefaulted(tif, TIFFTAG_FILLORDER, &fill);
    if (f->compression != COMPRESSION_NONE || fill != FILLORDER_MSB2LSB)
        return 0;
    if (last >= TIFFNumberOfStrips(tif))
        return 0;
    uint64_t row_bytes = (uint64_t)f->width * (uint64_t)f->fmt.bytes;
    for (uint32_t s = first; s <= last; s++) {
        if (TIFFGetStrileOffset(tif, s) == 0 ||
            TIFFGetStrileByteCount(tif, s) < (uint64_t)rows_in_strip(f, s) * row_bytes)
            return 0;
    }
    return 1;
}

static int short_read(const char *path, int row, tomo_error *err)
{
    return tomo_error_set(err, TOMO_E_IO, "%s: short read at row %d (file truncated?)", path, row);
}

/* Reads the raw bytes of the band's rows, strip after strip, merging adjacent ones. */
static int read_direct(TIFF *tif, const char *path, const tomo_tiff_frame *f, uint32_t first,
                       uint32_t last, int z0, int nz, unsigned char *raw, tomo_error *err)
{
    size_t row_bytes = (size_t)f->width * (size_t)f->fmt.bytes;
    int fd = TIFFFileno(tif);
    int64_t run_off = 0;
    int run_row = z0, run_n = 0;
    for (uint32_t s = first; s <= last + 1; s++) {
        int from = 0, to = 0;
        int64_t off = 0;
        if (s <= last) {
            int strip_row = (int)(s * f->rows_per_strip);
            from = z0 > strip_row ? z0 : strip_row;
            to = strip_row + (int)f->rows_per_strip;
            to = to < z0 + nz ? to : z0 + nz;
            off = (int64_t)TIFFGetStrileOffset(tif, s) +
                  (int64_t)row_bytes * (int64_t)(from - strip_row);
            if (run_n > 0 && run_off + (int64_t)row_bytes * run_n == off) {
                run_n += to - from;
                continue;
            }
        }
        if (run_n > 0) {
            size_t len = row_bytes * (size_t)run_n;
            ssize_t got =
                tomo_pread_full(fd, raw + row_bytes * (size_t)(run_row - z0), len, run_off);
            if (got < 0)
                return tomo_error_set(err, TOMO_E_IO, "%s: read failed: %s", path, strerror(errno));
            if ((size_t)got < len)
                return short_read(path, run_row + (int)((size_t)got / row_bytes), err);
        }
        run_off = off;
        run_row = from;
        run_n = to - from;
    }
    return 0;
}

static int read_strips_direct(TIFF *tif, const char *path, const tomo_tiff_frame *f, uint32_t first,
                              uint32_t last, int z0, int nz, float *dst, tomo_error *err)
{
    size_t n = (size_t)f->width * (size_t)nz;
    size_t at = tomo_samples_raw_offset(&f->fmt, n);
    unsigned char *owned = NULL, *raw;
    if (at != (size_t)-1) {
        raw = (unsigned char *)dst + at;
    } else {
        raw = owned = malloc(n * (size_t)f->fmt.bytes);
        if (!raw)
            return tomo_error_set(err, TOMO_E_NOMEM, "%s: out of memory", path);
    }
    int rc = read_direct(tif, path, f, first, last, z0, nz, raw, err);
    if (rc == 0)
        tomo_samples_to_float(&f->fmt, raw, n, dst);
    free(owned);
    return rc;
}

/* Decodes whole strips through libtiff, which undoes compression, predictor and byte order. */
static int read_strips_decoded(TIFF *tif, const char *path, const tomo_tiff_frame *f,
                               uint32_t first, uint32_t last, int z0, int nz, float *dst,
                               tomo_error *err)
{
    tomo_sample_format native = f->fmt;
    native.big_endian = host_is_big_endian();
    size_t row_bytes = (size_t)f->width * (size_t)f->fmt.bytes;
    tmsize_t strip_size = TIFFStripSize(tif);
    unsigned char *buf = strip_size > 0 ? malloc((size_t)strip_size) : NULL;
    if (!buf)
        return tomo_error_set(err, TOMO_E_NOMEM, "%s: cannot allocate a strip buffer", path);
    int rc = 0;
    for (uint32_t s = first; s <= last && rc == 0; s++) {
        tomo_tiff_clear_reason();
        tmsize_t got = TIFFReadEncodedStrip(tif, s, buf, strip_size);
        uint32_t n_rows = rows_in_strip(f, s);
        if (got < 0 || (uint64_t)got < (uint64_t)n_rows * row_bytes) {
            rc = tomo_error_set(err, TOMO_E_IO, "%s: cannot decode strip %u: %s", path, (unsigned)s,
                                got < 0 ? tomo_tiff_reason() : "strip too short");
            break;
        }
        int strip_row = (int)(s * f->rows_per_strip);
        int from = z0 > strip_row ? z0 : strip_row;
        int to = strip_row + (int)n_rows;
        to = to < z0 + nz ? to : z0 + nz;
        for (int y = from; y < to; y++)
            tomo_samples_to_float(&native, buf + (size_t)(y - strip_row) * row_bytes,
                                  (size_t)f->width, dst + (size_t)(y - z0) * (size_t)f->width);
    }
    free(buf);
    return rc;
}

static int read_tiles(TIFF *tif, const char *path, const tomo_tiff_frame *f, int z0, int nz,
                      float *dst, tomo_error *err)
{
    tomo_sample_format native = f->fmt;
    native.big_endian = host_is_big_endian();
    uint32_t tw = f->tile_width, th = f->tile_height;
    size_t s = (size_t)f->fmt.bytes;
    tmsize_t tile_size = TIFFTileSize(tif);
    if (tile_size <= 0 || (uint64_t)tile_size < (uint64_t)tw * th * s)
        return tomo_error_set(err, TOMO_E_FORMAT, "%s: inconsistent tile size", path);
    unsigned char *buf = malloc((size_t)tile_size);
    if (!buf)
        return tomo_error_set(err, TOMO_E_NOMEM, "%s: cannot allocate a tile buffer", path);
    int rc = 0;
    for (uint32_t ty = (uint32_t)z0 / th; ty <= (uint32_t)(z0 + nz - 1) / th && rc == 0; ty++) {
        int tile_row = (int)(ty * th);
        int from = z0 > tile_row ? z0 : tile_row;
        int to = tile_row + (int)th < z0 + nz ? tile_row + (int)th : z0 + nz;
        for (uint32_t x0 = 0; x0 < (uint32_t)f->width && rc == 0; x0 += tw) {
            ttile_t tile = TIFFComputeTile(tif, x0, (uint32_t)tile_row, 0, 0);
            tomo_tiff_clear_reason();
            tmsize_t got = TIFFReadEncodedTile(tif, tile, buf, tile_size);
            if (got < 0 || (uint64_t)got < (uint64_t)tw * th * s) {
                rc =
                    tomo_error_set(err, TOMO_E_IO, "%s: cannot decode tile %u: %s", path,
                                   (unsigned)tile, got < 0 ? tomo_tiff_reason() : "tile too short");
                break;
            }
            size_t ncols = (uint32_t)f->width - x0 < tw ? (uint32_t)f->width - x0 : tw;
            for (int y = from; y < to; y++)
                tomo_samples_to_float(&native, buf + (size_t)(y - tile_row) * tw * s, ncols,
                                      dst + (size_t)(y - z0) * (size_t)f->width + x0);
        }
    }
    free(buf);
    return rc;
}

int tomo_tiff_frame_read(TIFF *tif, const char *path, const tomo_tiff_frame *f, int z0, int nz,
                         float *dst, tomo_error *err)
{
    if (z0 < 0 || nz <= 0 || z0 > f->height - nz)
        return tomo_error_set(err, TOMO_E_INTERNAL, "%s: rows [%d, %d) outside 0..%d", path, z0,
                              z0 + nz, f->height);
    if (f->tiled)
        return read_tiles(tif, path, f, z0, nz, dst, err);
    uint32_t first = (uint32_t)z0 / f->rows_per_strip;
    uint32_t last = (uint32_t)(z0 + nz - 1) / f->rows_per_strip;
    if (strips_are_direct(tif, f, first, last))
        return read_strips_direct(tif, path, f, first, last, z0, nz, dst, err);
    return read_strips_decoded(tif, path, f, first, last, z0, nz, dst, err);
}
