/*
 * tests/unit/fixture.h - temporary directories and files for the C unit tests that write
 * synthetic scans (test_formats.c, test_his.c, test_spring8.c).
 *
 * make_dir() creates a fresh directory /tmp/<FIXTURE_TMP_NAME>_XXXXXX (define FIXTURE_TMP_NAME
 * before including this header to tell the tests' leftovers apart); remove_dir() deletes it with
 * everything inside. path_of() joins a directory and a file name, write_bytes() and
 * write_text() create a file in a directory. Every helper exits the test program with a message
 * naming the path when the file system refuses: a fixture that cannot be written is not a test
 * result.
 *
 * check_open_fails() opens a scan that must be refused and checks the error code and message.
 */
#ifndef TOMO_FIXTURE_H
#define TOMO_FIXTURE_H

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../../recon/scan.h"
#include "check.h"

#ifndef FIXTURE_TMP_NAME
#define FIXTURE_TMP_NAME "tomo_test"
#endif

static inline void make_dir(char dir[64])
{
    strcpy(dir, "/tmp/" FIXTURE_TMP_NAME "_XXXXXX");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        exit(1);
    }
}

static inline int fixture_remove_entry(const char *path, const struct stat *st, int flag,
                                       struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static inline void remove_dir(const char *dir)
{
    nftw(dir, fixture_remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static inline void path_of(char *out, size_t n, const char *dir, const char *name)
{
    if (snprintf(out, n, "%s/%s", dir, name) >= (int)n) {
        fprintf(stderr, "path too long: %s/%s\n", dir, name);
        exit(1);
    }
}

static inline void write_bytes(const char *dir, const char *name, const void *bytes, size_t len)
{
    char path[512];
    path_of(path, sizeof path, dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(bytes, 1, len, f) != len || fclose(f) != 0) {
        perror(path);
        exit(1);
    }
}

static inline void write_text(const char *dir, const char *name, const char *text)
{
    write_bytes(dir, name, text, strlen(text));
}

/* Opens `path` as `format` (NULL: detect), expects failure with `code`, no scan and a message
 * holding both strings. */
static inline void check_open_fails(const char *path, const char *format, int code,
                                    const char *want1, const char *want2)
{
    tomo_scan *scan = (tomo_scan *)&scan;
    tomo_error err;
    tomo_error_clear(&err);
    int rc = tomo_scan_open(path, format, &scan, &err);
    CHECK_INT(rc, -code);
    CHECK_INT(err.code, code);
    CHECK(scan == NULL);
    CHECK_CONTAINS(err.message, want1);
    CHECK_CONTAINS(err.message, want2);
    if (rc == 0)
        tomo_scan_close(scan);
}

#endif
