"""jobs.robustness: each transformation keeps an RGB picture and changes it as named."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from jobs.robustness import TRANSFORMS


@pytest.fixture
def picture() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))


@pytest.mark.parametrize("name, size", [("jpeg90", (64, 48)), ("jpeg75", (64, 48)), ("jpeg50", (64, 48)),
                                        ("downscale0.5", (32, 24)), ("downscale0.8", (51, 38)),
                                        ("upscale1.5", (96, 72)), ("crop", (48, 36))])
def test_size_and_pixels(picture: Image.Image, name: str, size: tuple[int, int]) -> None:
    out = TRANSFORMS[name](picture)
    assert out.mode == "RGB" and out.size == size
    if size == picture.size:  # re-compressed in place: pixels move, stronger at lower quality
        change = np.abs(np.asarray(out, np.int16) - np.asarray(picture, np.int16)).mean()
        assert change > 1


def test_lower_jpeg_quality_changes_more(picture: Image.Image) -> None:
    def change(name: str) -> float:
        return float(np.abs(np.asarray(TRANSFORMS[name](picture), np.int16) - np.asarray(picture, np.int16)).mean())

    assert change("jpeg90") < change("jpeg75") < change("jpeg50")

