/*
 * fs/fs.h - the FUSE filesystem (libfuse3 low-level API) over a tomo_volume.
 *
 *   MNT/scan.json                 geometry and every reconstruction parameter
 *   MNT/slices/slice_NNNNN.tif    one float32 (or uint16) TIFF per slice, computed when first read
 *   MNT/rings-removed/...         the same after stripe removal
 *   MNT/centre-search/center_C.tif  with -o center_search: one slice at each trial centre
 *   MNT/volumes/FOLDER.nrrd       each folder of slices as one NRRD volume file
 *   MNT/denoised/README.txt       how to obtain denoised slices
 *   MNT/.tomofs/status            live counters (queue, cache, backend, errors)
 *
 * Metadata never computes: names, sizes and times follow from the geometry. Reads are
 * answered asynchronously from the engine's threads, so lookups and listings stay fast while
 * slices are being reconstructed. Everything is read-only.
 */
#ifndef TOMO_FS_H
#define TOMO_FS_H

#include "../common/error.h"
#include "volume.h"

struct fuse_args;

/*
 * Mounts `vol` at `mountpoint`, detaches from the terminal unless `foreground`, starts the
 * volume's threads and serves requests until unmounted (tomofs umount, fusermount3 -u) or
 * sent SIGTERM/SIGINT/SIGHUP, then unmounts. `args` holds extra FUSE options (-o allow_other,
 * -d ...). Returns 0 after a clean unmount, or a negative TOMO_E_* code with err set when the
 * mount could not be made.
 */
int tomo_fs_serve(tomo_volume *vol, struct fuse_args *args, const char *mountpoint, int foreground,
                  tomo_error *err);

#endif
