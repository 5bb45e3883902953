"""Quantitative accuracy: reconstructions of analytic phantoms against their exact truth.

Metric: over the pixels inside the reconstruction circle and at least 2 px from any edge of
the phantom (where the truth is constant over a 5x5 neighbourhood), the RMS difference to the
truth relative to the largest attenuation in the slice.
"""

import json
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import (Results, fov_mask, interior_mask, phantom, phantom_center, read_tiff,  # noqa
                    run)

WIDTH, ROWS, PROJ = 256, 6, 360


def relative_error(recon_dir, scan, center):
    errors = []
    for z in range(ROWS):
        name = f"slice_{z:05d}.tif"
        truth = read_tiff(os.path.join(scan, "truth", name))
        rec = read_tiff(os.path.join(recon_dir, name))
        mask = fov_mask(WIDTH, center, WIDTH) & interior_mask(truth)
        if truth.max() <= 0 or mask.sum() < 100:
            continue
        diff = (rec - truth)[mask]
        errors.append(np.sqrt(np.mean(diff ** 2)) / truth.max())
    assert errors, "no slice with content"
    return float(np.mean(errors))


def main():
    r = Results()
    tmp = tempfile.mkdtemp(prefix="tomofs-acc-")
    clean = phantom(os.path.join(tmp, "clean"), WIDTH, ROWS, PROJ)
    true_center = phantom_center(clean)

    def noise_free_reconstruction():
        out = os.path.join(tmp, "clean-rec")
        run("export", clean, out)
        info = json.load(open(os.path.join(out, "scan.json")))
        assert abs(info["center"] - true_center) < 0.1, (info["center"], true_center)
        err = relative_error(out, clean, true_center)
        print(f"     noise-free, chesler: relative RMS error {err:.5f}")
        assert err < 0.01, err
        # outside the reconstruction circle everything is exactly zero
        rec = read_tiff(os.path.join(out, "slice_00003.tif"))
        assert np.all(rec[~fov_mask(WIDTH, info["center"], WIDTH)] == 0)
        assert rec.dtype == np.float32 and rec.shape == (WIDTH, WIDTH)

    def every_filter_is_accurate():
        for name in ["ram-lak", "shepp-logan", "chesler"]:
            out = os.path.join(tmp, "rec-" + name)
            run("export", clean, out, "-o", f"filter={name},center={true_center}")
            err = relative_error(out, clean, true_center)
            print(f"     noise-free, {name}: relative RMS error {err:.5f}")
            assert err < 0.01, (name, err)

    def wrong_center_is_worse():
        out = os.path.join(tmp, "rec-offcentre")
        run("export", clean, out, "-o", f"center={true_center + 2}")
        err = relative_error(out, clean, true_center)
        good = relative_error(os.path.join(tmp, "rec-chesler"), clean, true_center)
        print(f"     centre off by 2 px: {err:.5f} against {good:.5f}")
        assert err > 3 * good

    def error_falls_as_photons_rise():
        errs = []
        for photons in [500, 5000, 50000]:
            scan = phantom(os.path.join(tmp, f"noisy{photons}"), WIDTH, ROWS, PROJ,
                           "--photons", photons, "--seed", 7)
            out = os.path.join(tmp, f"noisy{photons}-rec")
            run("export", scan, out, "-o", f"center={true_center}")
            errs.append(relative_error(out, scan, true_center))
        print("     photons 500, 5000, 50000: " + ", ".join(f"{e:.4f}" for e in errs))
        assert errs[0] > errs[1] > errs[2], errs
        # Poisson noise: ten times the photons, about sqrt(10) less noise
        assert errs[0] / errs[1] > 2.0 and errs[1] / errs[2] > 1.5, errs

    def units_follow_pixel_size():
        a = read_tiff(os.path.join(tmp, "rec-chesler", "slice_00003.tif"))
        out = os.path.join(tmp, "rec-pixel2")
        run("export", clean, out, "--range", "3:4", "-o", f"pixel_um=2,center={true_center}")
        b = read_tiff(os.path.join(out, "slice_00003.tif"))
        assert np.allclose(a, 2 * b, rtol=1e-5, atol=1e-6)

    r.check("noise-free phantom matches the truth", noise_free_reconstruction)
    r.check("every filter matches the truth", every_filter_is_accurate)
    r.check("a wrong centre is visibly worse", wrong_center_is_worse)
    r.check("error falls as photons rise", error_falls_as_photons_rise)
    r.check("cm^-1 scale follows the pixel size", units_follow_pixel_size)
    r.finish()


if __name__ == "__main__":
    main()
