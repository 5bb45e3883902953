/*
 * recon/nxtomo.h - NeXus NXtomo HDF5 files (Diamond and others).
 *
 * One rank-3 stack holds every frame of the acquisition in time order; image_key says what
 * each frame is: 0 projection, 1 flat, 2 dark, 3 invalid (skipped). The reader looks, in each
 * NXentry (and NXsubentry; entries whose `definition` is NXtomo first):
 *
 *   frames     ENTRY/instrument/detector/data, then every NXdetector group of
 *              ENTRY/instrument, then ENTRY/data and every NXdata group of ENTRY (their
 *              `signal` dataset): the first rank-3 dataset that opens and has an image_key;
 *   image_key  beside the frames, then in ENTRY/instrument/detector, in any NXdetector whose
 *              data is the same dataset, then ENTRY/data;
 *   angles     ENTRY/sample/rotation_angle, rotation_angle beside the frames or in ENTRY/data,
 *              then in each NXdata group whose signal is the same dataset: rotation_angle, the
 *              first `axes` entry, then members whose names contain theta, rotation or angle
 *              (as Diamond DIAD's imaging/gts_theta_value); one value per frame.
 *
 * Angles take their unit from a "units" attribute naming degrees or radians, otherwise
 * |angle| > 2 pi + 0.1 over the projections means degrees. NXtomo records no acquisition
 * times, so the frame index is the time: flats taken before and after the projections (runs
 * of flats with no projection between them are groups) are interpolated between, and all darks
 * are averaged. External links are followed from the master file's folder.
 */
#ifndef TOMO_NXTOMO_H
#define TOMO_NXTOMO_H

#include "scan.h"

/*
 * Opens an NXtomo file in this process. See tomo_scan_open() for the contract;
 * tomo_scan_open() runs this after a dry run in a child process (tomo_h5_open_checked).
 */
int tomo_nxtomo_open(const char *path, tomo_scan **out, tomo_error *err);

#endif
