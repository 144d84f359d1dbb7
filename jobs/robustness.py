"""The transformations images meet on the way to a bucket, for jobs.evaluate's
``--robustness`` re-runs: JPEG re-compression, resizing, a centre crop.

Resizing comes in three strengths: a 0.5x down-scale (a thumbnail: the finest traces
are gone), a mild 0.8x down-scale (a platform fitting pictures to its size) and a 1.5x
up-scale (an upscaler, as some generators' services run on their output). A detector
that reads pixel-grid traces should lose most at 0.5x; one that has learnt "resampled
means real" from its training data (sd-coco-dev's real photos were all resized, its
fakes not: docs/QUALITY.md) loses at every resize, up-scales included.

    python -c "from jobs.robustness import ROBUSTNESS; print(ROBUSTNESS)"
"""

from __future__ import annotations

from typing import Callable

from PIL import Image

from detector.presets import reencode_jpeg


def _jpeg(quality: int) -> Callable[[Image.Image], Image.Image]:
    return lambda im: reencode_jpeg(im, quality)


def _resize(factor: float) -> Callable[[Image.Image], Image.Image]:
    def f(im: Image.Image) -> Image.Image:
        size = (max(1, round(im.width * factor)), max(1, round(im.height * factor)))
        return im.resize(size, Image.Resampling.BICUBIC)
    return f


def _center_crop(fraction: float) -> Callable[[Image.Image], Image.Image]:
    def f(im: Image.Image) -> Image.Image:
        w, h = max(1, round(im.width * fraction)), max(1, round(im.height * fraction))
        left, top = (im.width - w) // 2, (im.height - h) // 2
        return im.crop((left, top, left + w, top + h))
    return f


TRANSFORMS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "jpeg90": _jpeg(90),
    "jpeg75": _jpeg(75),
    "jpeg50": _jpeg(50),
    "downscale0.5": _resize(0.5),
    "downscale0.8": _resize(0.8),
    "upscale1.5": _resize(1.5),
    "crop": _center_crop(0.75),  # keep the central 75% of each side
}

ROBUSTNESS = tuple(TRANSFORMS)
