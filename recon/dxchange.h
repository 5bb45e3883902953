/*
 * recon/dxchange.h - APS Data Exchange HDF5 files (tomopy, tomocupy, dxchange).
 *
 *   /exchange/data        (projections, rows, columns)  raw projections, any numeric type
 *   /exchange/data_white  (flats, rows, columns)        flat fields, required
 *   /exchange/data_dark   (darks, rows, columns)        dark fields, optional (none: dark = 0)
 *   /exchange/theta       (projections,)                angles; a "units" attribute naming
 *                                                       degrees or radians decides the unit,
 *                                                       otherwise |theta| > 2 pi + 0.1 means
 *                                                       degrees
 *
 * Data Exchange records no acquisition times, so all flats form one group and are averaged;
 * all darks are averaged. Rows are read by hyperslab (or pread when the data are stored
 * plainly), never whole frames. See docs/formats.md.
 */
#ifndef TOMO_DXCHANGE_H
#define TOMO_DXCHANGE_H

#include "scan.h"

/* True when `path` is an HDF5 file holding /exchange/data. */
int tomo_dxchange_detect(const char *path);

/*
 * Opens a Data Exchange file in this process. See tomo_scan_open() for the contract;
 * tomo_scan_open() runs this after a dry run in a child process (tomo_h5_open_checked).
 */
int tomo_dxchange_open(const char *path, tomo_scan **out, tomo_error *err);

#endif
