"""Fixtures for detector tests: small models and images made on the spot, no network."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from detector.model import build_model


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("none").eval()


def make_image(width=64, height=48, mode="RGB", seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    return rgb if mode == "RGB" else rgb.convert(mode)


def encode(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()
