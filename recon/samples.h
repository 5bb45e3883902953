/*
 * recon/samples.h - detector samples as stored in files, and their conversion to float.
 *
 * Readers of every format describe the pixels of a frame by a tomo_sample_format (integer or
 * floating point, 1 to 8 bytes, either byte order) and convert rows of them to the float
 * counts that tomo_scan_read_rows() returns. Values are converted, never rescaled: a 16-bit
 * count of 1000 becomes 1000.0f, whatever the file's photometric or range metadata say.
 */
#ifndef TOMO_SAMPLES_H
#define TOMO_SAMPLES_H

#include <stddef.h>

typedef enum tomo_sample_kind {
    TOMO_SAMPLE_UINT = 0,
    TOMO_SAMPLE_INT = 1,
    TOMO_SAMPLE_FLOAT = 2,
} tomo_sample_kind;

typedef struct tomo_sample_format {
    tomo_sample_kind kind;
    int bytes;      /* 1, 2, 4 or 8; floats are 4 or 8 */
    int big_endian; /* byte order in the file */
} tomo_sample_format;

/* True when the format is one that tomo_samples_to_float() converts. */
int tomo_sample_format_valid(const tomo_sample_format *fmt);

/*
 * Short name for messages and reports: "uint16", "int32", "float32", with " big-endian"
 * appended for multi-byte big-endian samples. Writes at most `size` bytes; returns buf.
 */
const char *tomo_sample_format_name(const tomo_sample_format *fmt, char *buf, size_t size);

/*
 * Converts n samples at src to floats at dst, in ascending order. NaN and infinities pass
 * through (the preprocessing clips them). Integers above 2^24 are rounded to float.
 *
 * For formats of up to 4 bytes the conversion may run in place: when src points
 * tomo_samples_raw_offset() bytes into dst, every sample is read before its bytes are
 * overwritten. 8-byte formats need a separate source buffer.
 */
void tomo_samples_to_float(const tomo_sample_format *fmt, const void *src, size_t n, float *dst);

/*
 * Where raw samples must be placed inside a float buffer of n elements for an in-place
 * conversion: (4 - bytes) * n bytes from its start. Returns (size_t)-1 for 8-byte formats.
 */
size_t tomo_samples_raw_offset(const tomo_sample_format *fmt, size_t n);

#endif
