/*
 * denoise/png.h - zlib's checksums and a PNG writer with no library behind it, for the loss
 * plot next to a model (and the model file's checksum).
 *
 * The PNG is 8-bit RGB, its image data a zlib stream of stored (uncompressed) deflate blocks:
 * larger than a compressed one, but valid for every reader and a few dozen lines to write.
 */
#ifndef TOMO_PNG_H
#define TOMO_PNG_H

#include <stddef.h>
#include <stdint.h>

#include "../common/error.h"

/* CRC-32 of zlib and PNG (reflected polynomial 0xedb88320): continue from 0 for a new one. */
uint32_t tomo_crc32(uint32_t crc, const void *data, size_t len);

/* Adler-32 of zlib: continue from 1 for a new one. */
uint32_t tomo_adler32(uint32_t adler, const void *data, size_t len);

/*
 * Writes an 8-bit RGB image (rgb: height rows of width x 3 bytes, top row first) to `path`,
 * through a temporary file and a rename. Fails naming the file.
 */
int tomo_png_write_rgb(const char *path, const unsigned char *rgb, int width, int height,
                       tomo_error *err);

#endif
