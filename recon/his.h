/*
 * recon/his.h - HiPic .his streams: many frames in one file, as Hamamatsu's HiPic records
 * them and SPring-8 beamlines store them (a.his) before splitting into q*.img.
 *
 * Each frame is a 64-byte header, an ASCII comment and the pixels:
 *
 *   offset  size  field
 *   0       2     magic "IM"
 *   2       2     comment length cl (uint16 LE)
 *   4       2     width
 *   6       2     height
 *   8, 10   2, 2  x and y offset (unused)
 *   12      2     type: 0 = 8-bit, 2 = 16-bit LE, 6 = 12-bit packed
 *   14      2     frame count, low 16 bits  } read from the first frame's header;
 *   16      2     frame count, high 16 bits } 0 = as many as the file holds
 *   22      8     time stamp, float64 LE (milliseconds; not used, output.log has the times)
 *   64      cl    comment
 *   64+cl         pixels, row-major, row 0 first
 *
 * 12-bit packing: bytes b0 b1 b2 hold two pixels, p0 = b0 * 16 + (b1 >> 4) and
 * p1 = (b1 & 15) * 256 + b2, continuing across row ends; a frame of n pixels takes
 * ceil(3n / 2) bytes (an odd last pixel takes 2). Frames are numbered from 1, as output.log
 * numbers them. Every frame header is checked when the stream is opened (one 64-byte read
 * each), so a frame of another size or type, or a truncated stream, is refused at mount.
 */
#ifndef TOMO_HIS_H
#define TOMO_HIS_H

#include <stddef.h>
#include <stdint.h>

#include "../common/error.h"

#define TOMO_HIS_HEADER_SIZE 64
#define TOMO_HIS_TYPE_U8     0
#define TOMO_HIS_TYPE_U16    2
#define TOMO_HIS_TYPE_U12    6

typedef struct tomo_his_header {
    int comment_length;
    int width;
    int height;
    int type;
    int64_t frames;      /* frame count field; meaningful in the first header */
    double time_stamp;   /* as recorded */
    int64_t data_offset; /* from the header: 64 + comment_length */
    int64_t pixel_bytes; /* bytes of the frame's pixels */
} tomo_his_header;

/* Bytes of one frame's pixels, or -1 for an unknown type or a size that overflows. */
int64_t tomo_his_pixel_bytes(int type, int width, int height);

/*
 * Decodes a frame header from `len` bytes (at least 64) found at byte `at` of the file `path`
 * (both for messages only). Checks the magic, a positive size and a known type.
 */
int tomo_his_parse_header(const char *path, int64_t at, const unsigned char *bytes, size_t len,
                          tomo_his_header *hdr, tomo_error *err);

/* Writes a frame header (for tests and simulations). */
void tomo_his_write_header(unsigned char out[TOMO_HIS_HEADER_SIZE], int width, int height, int type,
                           int comment_length, int64_t frames, double time_stamp);

/* Packs n 12-bit values (0..4095) into ceil(3n / 2) bytes at out. */
void tomo_his_pack12(const uint16_t *values, size_t n, unsigned char *out);

/* An open stream: the position of every frame's pixels. */
typedef struct tomo_his {
    char path[4096];
    int fd;
    int width;
    int height;
    int type;
    int64_t frames;
    int64_t *offset; /* [frames] where the pixels of frame k + 1 start */
} tomo_his;

/* Opens a stream and walks its frame headers. On failure *his is left closed. */
int tomo_his_open(const char *path, tomo_his *his, tomo_error *err);

/* Reads rows [z0, z0 + nz) of frame `frame` (1-based) as floats. Thread-safe (pread). */
int tomo_his_read_rows(const tomo_his *his, int64_t frame, int z0, int nz, float *dst,
                       tomo_error *err);

/* Closes the stream. Safe on a zeroed or already closed struct with fd = -1. */
void tomo_his_close(tomo_his *his);

#endif
