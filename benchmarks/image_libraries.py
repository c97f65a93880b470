"""Our 16-bit TIFF reader/writer and ICC matrix conversion beside tifffile (+ imagecodecs) and
Pillow's ImageCms: agreement on the layouts and compressions real files use, interchange both ways,
the damaged files the fuzz targets found, and speed (ratios, side by side in one run).

    python benchmarks/image_libraries.py [--side 1024] [--out result.json]

tifffile and imagecodecs are not dependencies of the pack (the `bench` extra installs them);
without them their columns read "not installed". The conclusions drawn from a run are in
docs/images.md ("Own code and libraries").
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import Probes, write_result
from icc_profiles import DISPLAY_P3, rgb_profile
from PIL import Image, ImageCms
from tiff_files import retag, tiff16, tiff16_bytes

from pisa_core.errors import PiSAError
from pisa_core.files.images import read_image
from pisa_core.files.images.icc import matrix_to_srgb, parse_profile
from pisa_core.files.images.tiff import _write_tiff

try:
    import tifffile
except ImportError:
    tifffile = None

LAYOUTS = {"strips": {}, "big-endian": {"order": ">"}, "planar": {"planar": True}, "tiled": {"tile": 64},
           "deflate+predictor": {"deflate": True, "predictor": True},
           "tiled+deflate+predictor": {"tile": 64, "deflate": True, "predictor": True}}
# what other programs write (tifffile as the writer): compressions our test encoder does not make
TIFFFILE_WRITES = {"lzw": {"compression": "lzw"}, "lzw+predictor": {"compression": "lzw", "predictor": True},
                   "zlib+predictor": {"compression": "zlib", "predictor": True},
                   "packbits": {"compression": "packbits"}, "zstd": {"compression": "zstd"}}


def seconds(call, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def ours(path: Path) -> np.ndarray:
    return read_image(path, convert_profile=False)[0].numpy()


def theirs(path: Path) -> np.ndarray:
    """tifffile's array in our layout and type: [H, W, C] (it gives planar files as [C, H, W]), float32."""
    levels = tifffile.imread(path)
    levels = np.moveaxis(levels, 0, -1) if levels.shape[0] in (2, 3, 4) and levels.shape[-1] > 4 else levels
    return levels.astype(np.float32) / np.float32(65535)


def outcome(call) -> str:
    try:
        call()
    except PiSAError:
        return "PiSAError"
    except Exception as exc:  # noqa: BLE001  (recording which exception a library raises is the point)
        return type(exc).__name__
    return "read"


def tiff_reading(folder: Path, side: int) -> dict:
    levels = np.random.default_rng(0).integers(0, 65536, (side, side, 3)).astype(np.uint16)
    rows = {}
    cases = {name: tiff16_bytes(levels, **layout) for name, layout in LAYOUTS.items()}
    if tifffile is not None:
        for name, options in TIFFFILE_WRITES.items():
            buffer = io.BytesIO()
            try:
                tifffile.imwrite(buffer, levels, photometric="rgb", **options)
                cases["tifffile " + name] = buffer.getvalue()
            except Exception as exc:  # noqa: BLE001  (a codec imagecodecs lacks)
                rows["tifffile " + name] = {"written": type(exc).__name__}
    for name, data in cases.items():
        path = folder / "in.tif"
        path.write_bytes(data)
        row = {"ours_equal": outcome(lambda path=path: np.testing.assert_array_equal(np.round(ours(path) * 65535).astype(np.uint16), levels))}
        row["ours_s"] = seconds(lambda path=path: ours(path)) if row["ours_equal"] == "read" else None
        if tifffile is not None:
            row["tifffile_equal"] = outcome(lambda path=path: np.testing.assert_array_equal(
                np.round(theirs(path) * 65535).astype(np.uint16), levels))
            row["tifffile_s"] = seconds(lambda path=path: theirs(path)) if row["tifffile_equal"] == "read" else None
            if row["ours_s"] and row["tifffile_s"]:
                row["ours_over_tifffile"] = round(row["ours_s"] / row["tifffile_s"], 2)
        rows[name] = row
    return rows


def tiff_writing(folder: Path, side: int) -> dict:
    levels = np.random.default_rng(1).integers(0, 65536, (side, side, 4)).astype(np.uint16)
    levels[: side // 2] = levels[0, 0]  # half flat, as photos have smooth areas
    out = {}

    def write_ours():
        with open(folder / "ours.tif", "wb") as f:
            _write_tiff(f, levels)

    out["ours_s"] = seconds(write_ours)
    out["ours_bytes"] = (folder / "ours.tif").stat().st_size
    if tifffile is not None:
        out["tifffile_reads_ours"] = outcome(
            lambda: np.testing.assert_array_equal(tifffile.imread(folder / "ours.tif"), levels))
        out["tifffile_s"] = seconds(lambda: tifffile.imwrite(folder / "lib.tif", levels, photometric="rgb",
                                                             extrasamples=[2], compression="zlib", predictor=True))
        out["tifffile_bytes"] = (folder / "lib.tif").stat().st_size
        out["ours_over_tifffile"] = round(out["ours_s"] / out["tifffile_s"], 2)
    return out


def damaged_tiffs(folder: Path) -> dict:
    """The TIFF findings of fuzz_images and test_image_hostile, read by both."""
    cases = {"header cut short": b"II*\0\x08\0", "strip offsets as fractions": retag(tiff16(), 273, 5),
             "photometric as text": retag(tiff16(), 262, 2), "no rows per strip": retag(tiff16(), 278, value=0),
             "height beyond its strips": retag(tiff16(), 257, value=60),
             "width of 2**30": retag(tiff16(), 256, value=1 << 30)}
    rows = {}
    for name, data in cases.items():
        path = folder / "bad.tif"
        path.write_bytes(data)
        rows[name] = {"ours": outcome(lambda path=path: read_image(path))}
        if tifffile is not None:
            rows[name]["tifffile"] = outcome(lambda path=path: tifffile.imread(path))
    return rows


def icc_conversion(side: int) -> dict:
    """Display P3 -> sRGB: ours in float32 against littleCMS at 8 bits (ImageCms has no 16-bit
    colour mode), speed and agreement; and how many of 65536 16-bit levels each keeps."""
    profile_bytes = rgb_profile(DISPLAY_P3)
    profile = parse_profile(profile_bytes)
    pixels = np.random.default_rng(2).integers(0, 256, (side, side, 3)).astype(np.uint8)
    source = ImageCms.ImageCmsProfile(io.BytesIO(profile_bytes))
    transform = ImageCms.buildTransform(source, ImageCms.createProfile("sRGB"), "RGB", "RGB")
    image = Image.fromarray(pixels)
    tensor = torch.from_numpy(pixels.astype(np.float32) / 255)
    ours_8 = np.floor(matrix_to_srgb(tensor, profile.matrix).numpy() * 255 + 0.5).astype(np.int16)
    lcms_8 = np.asarray(ImageCms.applyTransform(image, transform)).astype(np.int16)
    ramp = torch.linspace(0, 1, 65536).reshape(256, 256, 1).expand(256, 256, 3).contiguous()
    ours_ramp = np.round(matrix_to_srgb(ramp, profile.matrix).numpy()[..., 0] * 65535)
    lcms_ramp = np.asarray(ImageCms.applyTransform(Image.fromarray(
        np.floor(ramp.numpy() * 255 + 0.5).astype(np.uint8)), transform))[..., 0]
    ours_s = seconds(lambda: matrix_to_srgb(tensor, profile.matrix))
    lcms_s = seconds(lambda: ImageCms.applyTransform(image, transform))
    return {"max_diff_8bit_levels": int(np.abs(ours_8 - lcms_8).max()),
            "share_differing_8bit": round(float((ours_8 != lcms_8).mean()), 4),
            "distinct_levels_of_a_16bit_ramp": {"ours": int(np.unique(ours_ramp).size),
                                                "imagecms": int(np.unique(lcms_ramp).size)},
            "ours_s": ours_s, "imagecms_s": lcms_s, "ours_over_imagecms": round(ours_s / lcms_s, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--out")
    args = parser.parse_args()
    probes = Probes()
    figures = {"tifffile": getattr(tifffile, "__version__", "not installed"), "side": args.side}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        # a probe before each timed part: the quiet gate judges the run by their spread
        for part, measure in (("tiff16_reading", lambda: tiff_reading(folder, args.side)),
                              ("tiff16_writing", lambda: tiff_writing(folder, args.side)),
                              ("damaged_tiffs", lambda: damaged_tiffs(folder)),
                              ("icc_p3_to_srgb", lambda: icc_conversion(args.side))):
            probes.take(part)
            figures[part] = measure()
    probes.take("after")
    if tifffile is not None:
        import imagecodecs

        figures["imagecodecs"] = imagecodecs.__version__
    path = write_result("image-libraries", figures, probe=probes, out=args.out)
    print(path.read_text())


if __name__ == "__main__":
    sys.exit(main())
