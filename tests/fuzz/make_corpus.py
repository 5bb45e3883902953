#!/usr/bin/python3
"""Writes the seed inputs of tests/fuzz/corpus/ (small valid files of every layout the
readers take). Run from anywhere; needs numpy, h5py and tifffile. Seeds are committed, so this
only needs running to change them."""

import os
import struct

import numpy as np

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def out(target, name):
    os.makedirs(os.path.join(HERE, target), exist_ok=True)
    return os.path.join(HERE, target, name)


def frames(n, h, w, base=100):
    i, y, x = np.meshgrid(np.arange(n), np.arange(h), np.arange(w), indexing="ij")
    return base + 97 * i + 13 * y + 3 * x


def outputlog():
    logs = {
        "plain.log": "1 0.0 0.0 0\n2 1.0 0.0 1\n3 2.0 90.0 1\n4 3.0 180.0 1\n5 4.0 0.0 0\n",
        "crlf_bom.log": "\ufeff1 0 0 0\r\n2 1 45.5 1\r\n\r\n3 2 1e2 1\r\n",
        "bad.log": "1 0 0 0\n2 x 0 1\n",
        "dup.log": "1 0 0 0\n1 1 0 1\n",
    }
    for name, text in logs.items():
        with open(out("outputlog", name), "wb") as f:
            f.write(text.encode("utf-8"))


def hipic_header(w, h, typ, comment, frames=0, time=0.0):
    hdr = bytearray(64)
    hdr[0:2] = b"IM"
    struct.pack_into("<HHHHHH", hdr, 2, len(comment), w, h, 0, 0, typ)
    struct.pack_into("<HH", hdr, 14, frames & 0xFFFF, frames >> 16)
    struct.pack_into("<d", hdr, 22, time)
    return bytes(hdr) + comment


def pack12(v):
    v = list(v) + ([0] if len(v) % 2 else [])
    b = bytearray()
    for a, c in zip(v[0::2], v[1::2]):
        b += bytes([a >> 4, ((a & 15) << 4) | (c >> 8), c & 255])
    return bytes(b)


def hipic():
    img = frames(1, 4, 8)[0].astype("<u2")
    with open(out("hipic", "frame.img"), "wb") as f:
        f.write(hipic_header(8, 4, 2, b"comment") + img.tobytes())
    with open(out("hipic", "stream16.his"), "wb") as f:
        for k in range(3):
            f.write(hipic_header(8, 4, 2, b"c" * (5 if k == 0 else 0), 3, 10.0 * k))
            f.write((img + k).astype("<u2").tobytes())
    with open(out("hipic", "stream12.his"), "wb") as f:
        for k in range(2):
            f.write(hipic_header(5, 3, 6, b"", 2, 1.0))
            f.write(pack12([(int(v) + k) & 0xFFF for v in frames(1, 3, 5)[0].ravel()]))
    with open(out("hipic", "stream8.his"), "wb") as f:
        f.write(hipic_header(4, 2, 0, b"", 1) + bytes(range(8)))


def tiff():
    import tifffile
    a = frames(1, 6, 8)[0]
    tifffile.imwrite(out("tiff", "u16.tif"), a.astype(np.uint16), rowsperstrip=2)
    tifffile.imwrite(out("tiff", "u16_be.tif"), a.astype(">u2"), byteorder=">")
    tifffile.imwrite(out("tiff", "f32.tif"), a.astype(np.float32))
    tifffile.imwrite(out("tiff", "i16_white.tif"), (a - 500).astype(np.int16),
                     photometric="miniswhite")
    b = frames(1, 18, 20)[0]
    tifffile.imwrite(out("tiff", "tiled_deflate.tif"), b.astype(np.uint16), tile=(16, 16),
                     compression="zlib")
    tifffile.imwrite(out("tiff", "f64_deflate.tif"), a.astype(np.float64), compression="zlib")


def hdf5():
    import h5py

    def stack(g, name, data, **kw):
        g.create_dataset(name, data=data, **kw)

    with h5py.File(out("hdf5", "dx_contiguous.h5"), "w") as f:
        stack(f, "/exchange/data", frames(3, 2, 4).astype(np.uint16))
        stack(f, "/exchange/data_white", frames(1, 2, 4, 500).astype(np.uint16))
        stack(f, "/exchange/data_dark", frames(1, 2, 4, 5).astype(np.uint16))
        f["/exchange/theta"] = np.array([0.0, 90.0, 180.0])
        f["/exchange/theta"].attrs["units"] = "degrees"
    with h5py.File(out("hdf5", "dx_chunked.h5"), "w") as f:
        stack(f, "/exchange/data", frames(3, 2, 4).astype(">f4"), chunks=(1, 2, 4))
        stack(f, "/exchange/data_white", frames(2, 2, 4, 500).astype(np.float32))
        f["/exchange/theta"] = np.array([0.0, 1.5, 3.1])
    with h5py.File(out("hdf5", "dx_deflate.h5"), "w") as f:
        stack(f, "/exchange/data", frames(3, 2, 4).astype(np.int32), chunks=(2, 1, 3),
              compression="gzip")
        stack(f, "/exchange/data_white", frames(1, 2, 4, 500).astype(np.uint16))
        f["/exchange/theta"] = np.array([0.0, 90.0, 180.0], dtype=np.float32)
    key = np.array([1, 2, 0, 0, 0, 3, 1, 2], dtype=np.int32)
    ang = np.array([0, 0, 0, 90, 180, 0, 0, 0], dtype=np.float64)
    with h5py.File(out("hdf5", "nx_standard.h5"), "w") as f:
        e = f.create_group("entry")
        e.attrs["NX_class"] = "NXentry"
        e["definition"] = "NXtomo"
        d = e.create_group("instrument/detector")
        d.attrs["NX_class"] = "NXdetector"
        stack(d, "data", frames(8, 2, 3).astype(np.uint16), chunks=(1, 2, 3))
        d["image_key"] = key
        e["sample/rotation_angle"] = ang
        e["sample/rotation_angle"].attrs["units"] = "degree"
    with h5py.File(out("hdf5", "nx_diad.h5"), "w") as f:
        e = f.create_group("entry")
        e.attrs["NX_class"] = "NXentry"
        d = e.create_group("instrument/imaging")
        d.attrs["NX_class"] = "NXdetector"
        stack(d, "data", frames(8, 2, 3).astype(np.uint16))
        d["image_key"] = key
        n = e.create_group("imaging")
        n.attrs["NX_class"] = "NXdata"
        n.attrs["signal"] = "data"
        n["data"] = d["data"]
        n["gts_theta_value"] = ang + 90
        n["gts_theta_value_set"] = h5py.ExternalLink("missing.h5", "/x")


if __name__ == "__main__":
    outputlog()
    hipic()
    tiff()
    hdf5()
