/*
 * recon/h5io.h - what the HDF5 scan readers (DXchange, NXtomo) share.
 *
 * Every HDF5 call made by tomofs runs under one process-wide lock (tomo_h5_lock), so the
 * readers work with HDF5 builds that are not thread-safe, and HDF5 never prints: its error
 * stack is silenced and its innermost reason is appended to our own messages instead.
 *
 * A stack of frames (a rank-3 dataset: frame, detector row, detector column) is read a band
 * of rows at a time. Where the dataset is stored unfiltered (contiguous, or chunked without
 * compression) in a plain integer or IEEE float type, the rows are read with pread on a
 * descriptor of the file that holds them, outside the lock, so frames are read in parallel;
 * every other layout (compressed chunks, virtual datasets, exotic types) goes through
 * H5Dread of a hyperslab, which converts to float and reads only the chunks the rows need.
 * The direct path is checked once at open against H5Dread and dropped if they disagree.
 *
 * External links are resolved by HDF5's own rule: HDF5_EXT_PREFIX, then the folder of the
 * file that holds the link, then the current directory.
 */
#ifndef TOMO_H5IO_H
#define TOMO_H5IO_H

#include <stdint.h>

#include <hdf5.h>

#include "../common/error.h"
#include "samples.h"
#include "scan.h"

/* Takes and releases the HDF5 lock (recursive). Taking it also silences HDF5's printing for
 * the calling thread. */
void tomo_h5_lock(void);
void tomo_h5_unlock(void);

/* True when `path` is a regular file with the HDF5 signature. Takes the lock. */
int tomo_hdf5_file_detect(const char *path);

/*
 * Records a failure like tomo_error_set, appending ": " and the innermost reason HDF5 left on
 * its error stack, if any; then clears that stack. Call with the lock held.
 */
int tomo_h5_fail(tomo_error *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Opens an HDF5 file read-only. Call with the lock held. */
int tomo_h5_open_file(const char *path, hid_t *file, tomo_error *err);

/*
 * What `path` (absolute within `file`) is: H5O_TYPE_GROUP or H5O_TYPE_DATASET when it can be
 * opened, else H5O_TYPE_UNKNOWN with `why` (if not NULL) saying which component is missing or
 * which soft or external link dangles, and to where. Call with the lock held.
 */
H5O_type_t tomo_h5_object_type(hid_t file, const char *path, char *why, size_t why_size);

/*
 * Reads a string attribute (fixed or variable length, scalar or the first element of an
 * array) into buf. Returns 1 when found and a string, else 0. Call with the lock held.
 */
int tomo_h5_string_attr(hid_t obj, const char *name, char *buf, size_t size);

/* Reads a scalar string dataset the same way. Returns 1 or 0. Call with the lock held. */
int tomo_h5_string_dataset(hid_t loc, const char *path, char *buf, size_t size);

/*
 * Reads a rank-1 numeric dataset as doubles. *values is malloc'd (caller frees), *n its
 * length. `master` names the file in messages. Call with the lock held.
 */
int tomo_h5_read_vector(hid_t file, const char *master, const char *path, double **values, int *n,
                        tomo_error *err);

/*
 * The file that holds dataset `path` of `file` (another file behind an external link) into
 * buf. Returns 1, or 0 when it cannot be told. Call with the lock held.
 */
int tomo_h5_dataset_file(hid_t file, const char *path, char *buf, size_t size);

/* True when two open objects are the same object in the same file. Call with the lock held. */
int tomo_h5_same_object(hid_t a, hid_t b);

/* A rank-3 stack of frames (frame, row, column). */
typedef struct tomo_h5_stack {
    char path[512];    /* the dataset as named in the master file */
    char file[4096];   /* the file that holds it (differs from the master behind links) */
    char master[4096]; /* the file that was opened, for messages */
    hid_t dset;
    int frames, rows, width;
    tomo_sample_format fmt; /* the stored type; fmt.bytes == 0 for types only HDF5 converts */
    char type_name[32];     /* "uint16", "float32", ... for reports */
    int chunked;            /* 1 when stored in chunks */
    int64_t chunk[3];       /* chunk dimensions when chunked */
    int filtered;           /* 1 when a filter (compression, ...) is in the pipeline */
    /* direct reading */
    int fd;             /* -1 when every read goes through H5Dread */
    int64_t base;       /* added to HDF5's addresses (0, or the user block size) */
    int64_t offset;     /* contiguous: address of element 0 */
    int64_t *chunk_at;  /* chunked, one chunk per frame band: file offset of each, 0 = unknown */
    int64_t n_chunk_at; /* entries of chunk_at */
} tomo_h5_stack;

/*
 * Opens dataset `path` of `file` as a stack and checks that it is a non-empty rank-3 numeric
 * array with frames of at most 2^20 x 2^20 pixels. Messages name `master` and `path`. Call
 * with the lock held; reads afterwards take the lock themselves when they need it.
 */
int tomo_h5_stack_open(hid_t file, const char *master, const char *path, tomo_h5_stack *st,
                       tomo_error *err);

/*
 * Reads rows [z0, z0 + nz) of frame `index` into dst (nz * width floats). Thread-safe.
 */
int tomo_h5_stack_read(tomo_h5_stack *st, int index, int z0, int nz, float *dst, tomo_error *err);

/* Describes the stack for tomo_scan.source: "PATH TYPE (F, R, W)[, chunked (a, b, c)][,
 * compressed]". */
void tomo_h5_stack_describe(const tomo_h5_stack *st, char *buf, size_t size);

/* Closes the dataset and the descriptor. Call without the lock; takes it. */
void tomo_h5_stack_close(tomo_h5_stack *st);

/*
 * A scan reader over up to three stacks: every kind of frame (projection, flat, dark) maps
 * the scan's frame index to (stack, frame within the stack). Owned by the scan once opened.
 */
typedef struct tomo_h5_reader {
    hid_t file;
    tomo_h5_stack stack[3];
    int n_stacks;
    struct {
        int *stack; /* [count] which stack */
        int *frame; /* [count] frame within it */
        int count;
    } kind[3]; /* indexed by tomo_frame_kind */
} tomo_h5_reader;

extern const tomo_scan_reader_ops tomo_h5_reader_ops;

/* Frees the reader: stacks, file, maps. NULL allowed. Takes the lock. */
void tomo_h5_reader_free(tomo_h5_reader *r);

/*
 * Allocates the map of one kind of frame for `count` frames. Returns 0 or -1 when out of
 * memory.
 */
int tomo_h5_reader_map(tomo_h5_reader *r, tomo_frame_kind kind, int count);

/* An in-process opener of an HDF5 scan, as tomo_scan_open() describes. */
typedef int (*tomo_h5_open_fn)(const char *path, tomo_scan **out, tomo_error *err);

/*
 * Opens an HDF5 scan with `open`, after a dry run in a child process: the child opens the
 * file the same way and reads the first and last rows of the first and last frame of each
 * kind. libhdf5 1.10 can read past its buffers or crash on damaged metadata (fuzzing finds
 * such files within minutes), and no check of ours can foresee them all; a child that dies
 * turns into one clear error instead ("... the HDF5 library crashed reading it"), and so does
 * one still running after 120 s (TOMO_HDF5_PROBE_TIMEOUT, in seconds, changes that; damaged
 * heaps can make HDF5 loop forever). A child that fails cleanly passes its message on, so the
 * file is not opened twice. TOMO_HDF5_PROBE=0 in the environment skips the dry run (for
 * debugging). Call without the lock, from a process with no other thread inside HDF5.
 */
int tomo_h5_open_checked(const char *path, tomo_h5_open_fn open, tomo_scan **out, tomo_error *err);

/* Adds a file's identity (name, size, modification time) to a fingerprint; raises *mtime. */
uint64_t tomo_h5_hash_file(uint64_t h, const char *path, int64_t *mtime);

#endif
