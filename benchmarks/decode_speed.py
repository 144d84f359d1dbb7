"""JPEG decoders side by side: what the scan's fetch stage could decode with, one thread.

On the same JPEGs: PIL (what the scan uses: ``detector.decode``, every listed format),
torchvision.io.decode_jpeg (libjpeg-turbo through torch), and simplejpeg when installed
(``pip install simplejpeg``). Two sizes: sd-coco-dev's 512 x 512 pictures and the same
resized to a 12-megapixel photo (4000 x 3000), where the decoder's speed matters most.
Prints img/s, the ratio to PIL, and how far each decoder's pixels are from PIL's (mean and
max absolute difference, 0-255 levels: libjpeg-turbo builds may differ in their IDCT and
chroma upsampling).

    .venv/bin/python benchmarks/decode_speed.py --images 64
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import input_images, json_line, load_average, machine, timed  # noqa: E402


def pil(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def tv(data: bytes) -> np.ndarray:
    from torchvision.io import ImageReadMode, decode_jpeg

    return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB).permute(1, 2, 0).numpy()


def simple(data: bytes) -> np.ndarray:
    import simplejpeg

    return simplejpeg.decode_jpeg(data, colorspace="RGB")


def photo_jpegs(files: list[Path], size: tuple[int, int], n: int) -> list[bytes]:
    out = []
    for f in files[:n]:
        buf = io.BytesIO()
        Image.open(f).convert("RGB").resize(size, Image.Resampling.LANCZOS).save(buf, "JPEG", quality=92)
        out.append(buf.getvalue())
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=64, help="512 px pictures (default 64); a quarter as many 12 MP ones")
    p.add_argument("--data", default=None, help="folder with real/ and fake/ JPEGs (default ../shared/data/sd-coco-dev)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    decoders = {"pil": pil, "torchvision": tv}
    if importlib.util.find_spec("simplejpeg"):
        decoders["simplejpeg"] = simple
    print(f"{machine()}; load average {load_average()}; one thread")
    row: dict = {}
    with tempfile.TemporaryDirectory(prefix="genscan-decode-") as tmp:
        files = input_images(args.images, args.data, Path(tmp))
        sets = {"512px": [Path(f).read_bytes() for f in files],
                "12mp": photo_jpegs(files, (4000, 3000), max(2, args.images // 4))}
        print(f"{'set':<7}{'decoder':<13}{'img/s':>9}{'x PIL':>7}{'mean|d|':>9}{'max|d|':>8}")
        for name, blobs in sets.items():
            ref = [pil(b) for b in blobs]
            base = None
            for dec_name, dec in decoders.items():
                dec(blobs[0])  # warm-up (imports, allocations)
                out, secs = timed(lambda: [dec(b) for b in blobs])
                rate = len(blobs) / secs
                base = base or rate
                diff = [np.abs(a.astype(np.int16) - b.astype(np.int16)) for a, b in zip(out, ref)]
                mean_d, max_d = float(np.mean([d.mean() for d in diff])), int(max(d.max() for d in diff))
                print(f"{name:<7}{dec_name:<13}{rate:>9.1f}{rate / base:>7.2f}{mean_d:>9.3f}{max_d:>8}")
                row[f"{name}_{dec_name}_img_s"] = rate
                row[f"{name}_{dec_name}_mean_abs_diff"] = mean_d
    row["load_avg_end"] = load_average()
    print(json_line(row))


if __name__ == "__main__":
    main()
