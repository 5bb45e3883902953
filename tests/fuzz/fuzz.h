/*
 * tests/fuzz/fuzz.h - what the fuzz targets share.
 *
 * Each fuzz_<target>.c defines LLVMFuzzerTestOneInput(data, size): it must return 0 and never
 * crash, leak, hang or read out of bounds, whatever the bytes. tests/fuzz/run.sh links the
 * targets with libFuzzer (clang -fsanitize=fuzzer,address); the unit suite links them with
 * replay.c, which feeds every file of tests/fuzz/corpus/<target>/ through the target once.
 */
#ifndef TOMO_FUZZ_H
#define TOMO_FUZZ_H

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/*
 * A private scratch folder for this process (created once, removed at exit), and
 * fuzz_write(), which replaces the file `name` in it with the bytes given. Return the path, or
 * NULL when the file cannot be written (the input is then skipped).
 */
const char *fuzz_scratch(void);
const char *fuzz_write(const char *name, const uint8_t *data, size_t size);

/* Reads a band of rows of every frame of an open scan, within a budget of pixels. */
struct tomo_scan;
void fuzz_read_scan(const struct tomo_scan *scan);

#endif
