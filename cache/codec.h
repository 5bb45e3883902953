/*
 * cache/codec.h - how the disk tier encodes pixel bytes: a byte shuffle of float32 data,
 * zstd compression and a CRC-32C of the raw bytes.
 *
 * Float reconstructions barely compress as they are: the low bytes of the mantissa are
 * noise. Grouping byte 0 of every float, then byte 1, and so on (the shuffle) puts the
 * predictable exponent and sign bytes together, which gains 13-22% in ratio and makes
 * decompression two to three times faster. Each chunk carries the CRC-32C of its raw
 * (unshuffled, uncompressed) bytes, so any damage to the stored bytes, inside or outside the
 * compressed frame, is detected before a pixel is served.
 *
 * Encoded chunk layout (all integers little-endian):
 *
 *     offset  size  field
 *          0     4  magic "TCK1"
 *          4     4  raw length in bytes
 *          8     4  CRC-32C (Castagnoli) of the raw bytes
 *         12     1  flags: bit 0 set = the bytes were shuffled in groups of 4 before compression
 *         13     1  codec: 1 = zstd
 *         14     2  reserved, zero
 *         16     .  one zstd frame holding the (shuffled) raw bytes
 *
 * Thread safety: the free functions are reentrant. A tomo_codec holds compression state and
 * scratch memory and must be used by one thread at a time.
 */
#ifndef TOMO_CODEC_H
#define TOMO_CODEC_H

#include <stddef.h>
#include <stdint.h>

/* Bytes of the header in front of the zstd frame. */
#define TOMO_CHUNK_HEADER_BYTES 16

/*
 * Byte-shuffles `n` 4-byte elements: dst receives byte 0 of every element, then byte 1, then
 * byte 2, then byte 3 (4 planes of n bytes). src and dst must not overlap.
 */
void tomo_shuffle4(const void *src, void *dst, size_t n);

/* The inverse of tomo_shuffle4: rebuilds `n` 4-byte elements from 4 planes of n bytes. */
void tomo_unshuffle4(const void *src, void *dst, size_t n);

/*
 * Continues a CRC-32C over `len` bytes. Start with crc = 0; the result of one call can be
 * passed to the next to checksum data in pieces. Uses the SSE4.2 instruction when the CPU has
 * it. tomo_crc32c(0, "123456789", 9) == 0xe3069283.
 */
uint32_t tomo_crc32c(uint32_t crc, const void *data, size_t len);

typedef struct tomo_codec tomo_codec;

/*
 * A codec compressing at zstd `level` (1 to 3 is the useful range for float data: higher
 * levels gain at most 2% for 5 to 100 times the CPU time). NULL when out of memory.
 */
tomo_codec *tomo_codec_create(int level);

void tomo_codec_destroy(tomo_codec *codec);

/* The most bytes tomo_chunk_encode() can produce for `raw_len` raw bytes. */
size_t tomo_chunk_bound(size_t raw_len);

/*
 * Encodes `raw_len` bytes (a multiple of 4 when `shuffle` is set) into dst, which has room for
 * `dst_cap` bytes (tomo_chunk_bound(raw_len) is always enough). Returns the encoded length, or
 * 0 when dst is too small, raw_len is too large (4 GiB or more) or memory ran out.
 */
size_t tomo_chunk_encode(tomo_codec *codec, const void *raw, size_t raw_len, int shuffle, void *dst,
                         size_t dst_cap);

/* Why a chunk was refused. Every value but TOMO_CHUNK_OK means: do not use these bytes. */
typedef enum tomo_chunk_status {
    TOMO_CHUNK_OK = 0,
    TOMO_CHUNK_BAD_HEADER = -1,   /* too short, wrong magic, unknown codec or flags */
    TOMO_CHUNK_BAD_LENGTH = -2,   /* raw length differs from what the caller expects */
    TOMO_CHUNK_BAD_FRAME = -3,    /* zstd refused the frame, or it decoded to the wrong size */
    TOMO_CHUNK_BAD_CHECKSUM = -4, /* decoded fine, but the CRC-32C differs */
    TOMO_CHUNK_NOMEM = -5,        /* scratch memory could not be allocated */
} tomo_chunk_status;

/* "checksum mismatch", "bad header", ... for messages. */
const char *tomo_chunk_status_text(tomo_chunk_status status);

/*
 * Decodes a chunk of `src_len` bytes into dst, which receives exactly `raw_len` bytes.
 * Nothing is trusted: the header, the frame and the checksum are all checked, and on any
 * failure dst holds garbage that must not be used.
 */
tomo_chunk_status tomo_chunk_decode(tomo_codec *codec, const void *src, size_t src_len, void *dst,
                                    size_t raw_len);

/* The raw length recorded in a chunk's header, or -1 when the header is unreadable. */
int64_t tomo_chunk_raw_length(const void *src, size_t src_len);

#endif
