"""Sample images for the demo and for trying genscan without data of your own.

Nothing is downloaded. Both classes are cut from the same three photographs that ship
inside installed packages (scikit-learn's ``china.jpg`` and ``flower.jpg``, matplotlib's
``grace_hopper.jpg``), so content cannot tell them apart:

- ``real/``: crops of the photographs at their native resolution;
- ``fake/``: the same kind of crops made by a toy *generator*: the crop is reduced to
  half size and brought back up by a stride-2 transposed convolution, the upsampling
  layer of GAN and diffusion decoders that leaves periodic "checkerboard" traces
  (Odena et al., 2016, "Deconvolution and Checkerboard Artifacts"). Here the trace is
  exaggerated (neighbouring pixels differ in gain by up to 25%) so that the demo's
  minute of CPU training finds it; it is visible when zoomed in.

Both are saved the same way (JPEG, quality 90, same size), so format and compression
carry no signal either. A detector trained on them learns to see that upsampling
trace; it says nothing about Stable Diffusion or any real generator. Use it to see the
jobs work end to end, not to judge detection quality (``jobs.evaluate`` and the README's
results table on public data do that).

    python -m jobs.demo.samples --output samples/ --count 100
"""

from __future__ import annotations

import argparse
import functools
import io
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from jobs import storage

SIZE = 96


@functools.cache  # decoding them takes seconds; make_samples is called several times
def source_photos() -> list[Image.Image]:
    """The photographs shipped inside installed packages (at least one must be there)."""
    import matplotlib
    import sklearn.datasets

    candidates = [
        Path(sklearn.datasets.__file__).parent / "images" / "china.jpg",
        Path(sklearn.datasets.__file__).parent / "images" / "flower.jpg",
        Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg",
    ]
    photos = [Image.open(p).convert("RGB") for p in candidates if p.is_file()]
    if not photos:
        raise FileNotFoundError(f"none of the sample photographs were found: {[str(c) for c in candidates]}")
    return photos


def _crop(photo: Image.Image, size: int, rng: np.random.Generator) -> np.ndarray:
    left = int(rng.integers(0, photo.width - size + 1))
    top = int(rng.integers(0, photo.height - size + 1))
    arr = np.asarray(photo.crop((left, top, left + size, top + size)))
    return arr[:, ::-1] if rng.random() < 0.5 else arr


# A fixed 4x4 stride-2 transposed-convolution kernel: bilinear upsampling (whose
# overlaps sum evenly) plus a random part, as in a learnt layer, that makes the four
# output phases differ in gain. At 0.15 they are 0.72-1.25 (seed 7): an exaggerated
# trace that a ResNet18 trained from scratch for a minute on 2 CPUs finds (at 0.05,
# +-9%, it stayed at chance in that time); real decoders leave fainter ones.
ARTIFACT_STRENGTH = 0.15


def _upsampling_kernel(seed: int = 7, strength: float = ARTIFACT_STRENGTH) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    k1 = torch.tensor([0.25, 0.75, 0.75, 0.25])
    k = torch.outer(k1, k1) + strength * torch.randn(4, 4, generator=g)
    return (k / k.sum() * 4).view(1, 1, 4, 4)  # x4: stride 2 spreads each input over 4 outputs


def generate(real: np.ndarray, kernel: torch.Tensor) -> np.ndarray:
    """The toy generator: uint8 (S, S, 3) -> uint8 (S, S, 3) with upsampling traces."""
    s = real.shape[0]
    x = torch.from_numpy(np.array(real, dtype=np.uint8)).permute(2, 0, 1).float().unsqueeze(1)  # (3, 1, S, S)
    low = F.avg_pool2d(x, 2)  # (3, 1, S/2, S/2)
    up = F.conv_transpose2d(low, kernel, stride=2, padding=1)  # (3, 1, S, S)
    return up[:, 0, :s, :s].clamp(0, 255).round().byte().permute(1, 2, 0).numpy()


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_samples(output: str, count: int, *, seed: int = 0, size: int = SIZE, start: int = 0) -> dict[str, int]:
    """Write ``count`` real and ``count`` fake JPEGs under ``output``/{real,fake}/ (local or
    s3://). ``start`` numbers the files, so a later call adds new ones. Returns counts."""
    rng = np.random.default_rng(seed + 1_000_003 * start)
    photos = source_photos()
    kernel = _upsampling_kernel()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: threads only add overhead (5x slower on 2 busy cores)
    try:
        for i in range(start, start + count):
            photo = photos[i % len(photos)]
            storage.write_bytes(storage.join(output, "real", f"real_{i:05d}.jpg"), _jpeg(_crop(photo, size, rng)))
            fake = generate(_crop(photo, size, rng), kernel)
            storage.write_bytes(storage.join(output, "fake", f"fake_{i:05d}.jpg"), _jpeg(fake))
    finally:
        torch.set_num_threads(threads)
    return {"real": count, "fake": count}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m jobs.demo.samples", description=__doc__.split("\n\n")[0])
    p.add_argument("--output", required=True, help="folder or s3:// prefix to write real/ and fake/ into")
    p.add_argument("--count", type=int, default=100, help="images per class (default 100)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--size", type=int, default=SIZE, help=f"side of each square image in pixels (default {SIZE})")
    args = p.parse_args(argv)
    if args.count < 1 or args.size < 8:
        p.error("--count must be at least 1 and --size at least 8")
    print(make_samples(args.output, args.count, seed=args.seed, size=args.size))


if __name__ == "__main__":
    main()
