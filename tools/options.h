/*
 * tools/options.h - the -o options shared by mount, export, info and bench.
 *
 *   filter=chesler|shepp-logan|ram-lak   FBP filter (default chesler)
 *   center=X                             rotation axis in detector columns (default: found)
 *   pixel_um=P                           detector pixel size in micrometres (default 1)
 *   pad=auto|edge|zero                   row padding before filtering (default auto)
 *   bin=B                                binning in x, y and z (default 1)
 *   dtype=float32|uint16                 sample type of the files (default float32)
 *   range=LO:HI                          uint16 range in cm^-1 (default automatic)
 *   center_search=Z:FROM:TO:STEP         the centre-search/ folder
 *   floor=F                              low-transmission floor in counts (default 2)
 *   black_fraction=R                     clipped share that marks a line black (default 0.5)
 *   format=NAME                          spring8, dxchange, nxtomo or tiff-series
 *                                        (default: detected)
 *   ram_cache=SIZE                       RAM tier budget, e.g. 512M, 4G (default 1G)
 *   cache=DIR|none, no_cache             disk tier folder (default ~/.cache/tomofs), or none
 *   cache_size=SIZE                      disk tier capacity (default 16G)
 *   cache_level=L                        zstd level of the disk tier, 1-3 (default 1)
 *   threads=N                            CPU threads (default: all)
 *   max_chunk=N                          slices per chunk at most (default 32)
 */
#ifndef TOMO_OPTIONS_H
#define TOMO_OPTIONS_H

#include <stddef.h>
#include <stdint.h>

#include "../fs/volume.h"

/*
 * Applies a comma-separated option list to *opts. Options this module does not know are
 * appended to `unknown` (comma-separated, may be NULL: then they are errors). Returns 0, or -1
 * after printing one message naming the option.
 */
int tomo_options_parse(const char *list, tomo_volume_options *opts, char *unknown,
                       size_t unknown_size);

/* Parses "512M", "4G", "1048576" into bytes; -1 on error. */
int64_t tomo_parse_size(const char *text);

/*
 * Opens the scan named on the command line (any path; made absolute, because the daemon
 * changes to /) as a volume with `opts`. On failure prints one line and returns NULL.
 */
tomo_volume *tomo_open_scan_argument(const char *arg, const tomo_volume_options *opts);

/* The option summary above, for --help texts. */
extern const char tomo_options_help[];

#endif
