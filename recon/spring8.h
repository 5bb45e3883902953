/*
 * recon/spring8.h - SPring-8 scan directories (the layout ct-rec and hp_tg read).
 *
 *   SCAN/output.log     one line per frame: "number time angle flag", flag 0 = flat, 1 = projection
 *   SCAN/dark.img|tif   one dark frame, already averaged (.img preferred when both exist)
 *   SCAN/q<number>.img  HiPic frames, or q<number>.tif 16-bit TIFF frames; any digit count
 *   SCAN/<name>.his     or, when there are no q* frames, one HiPic stream holding them all:
 *                       frame k of output.log is the k-th frame of the stream (see his.h)
 *
 * Frames in the directory that output.log does not list are ignored; a frame that the log
 * lists but that is missing, truncated or of another size is an error at open.
 */
#ifndef TOMO_SPRING8_H
#define TOMO_SPRING8_H

#include <stddef.h>
#include <stdint.h>

#include "scan.h"

/* True when `dir` looks like a SPring-8 scan (it holds output.log). */
int tomo_spring8_detect(const char *dir);

/* Opens a SPring-8 scan directory. See tomo_scan_open() for the contract. */
int tomo_spring8_open(const char *dir, tomo_scan **out, tomo_error *err);

/* ---- pieces, exposed for tests and for the phantom writer ---- */

/* One parsed output.log line. */
typedef struct tomo_log_entry {
    int frame;    /* frame number, names the file q<frame>.img */
    double time;  /* acquisition time, any unit */
    double angle; /* degrees */
    int flag;     /* 0 = flat (I0), 1 = projection */
} tomo_log_entry;

/*
 * Parses the text of an output.log (`len` bytes; need not be NUL-terminated). Blank lines
 * are skipped; any other line that is not "int float float int" with flag 0 or 1 is an
 * error naming `path` and the line number. Duplicate frame numbers are an error.
 * On success *entries (malloc'd, caller frees) holds *count entries in file order.
 */
int tomo_outputlog_parse(const char *path, const char *text, size_t len, tomo_log_entry **entries,
                         int *count, tomo_error *err);

#define TOMO_HIPIC_HEADER_SIZE 64
#define TOMO_HIPIC_TYPE_U16    2

/* The fields of a HiPic .img header that matter. */
typedef struct tomo_hipic_header {
    int comment_length; /* bytes of ASCII comment after the 64-byte header */
    int width;
    int height;
    int type;            /* 2 = 16-bit little-endian */
    int64_t data_offset; /* 64 + comment_length: where row 0 starts */
} tomo_hipic_header;

/*
 * Decodes a HiPic header from the first `len` bytes of a file (at least 64). Checks the
 * magic "IM", positive width and height, and type 2. `path` is used in messages only.
 */
int tomo_hipic_parse_header(const char *path, const unsigned char *bytes, size_t len,
                            tomo_hipic_header *hdr, tomo_error *err);

/* Writes a 64-byte HiPic header for a 16-bit frame with the given comment length. */
void tomo_hipic_write_header(unsigned char out[TOMO_HIPIC_HEADER_SIZE], int width, int height,
                             int comment_length);

#endif
