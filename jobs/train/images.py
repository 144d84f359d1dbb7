"""The torch Dataset that jobs.train's workers read: ``(uri, label)`` pairs in, model
inputs out (uint8; the loop normalises batches), with files that cannot be read or decoded
turned into weight-0 samples that carry their reason (see jobs/train/loop.py for why they
are not dropped).

Decoded pictures are cached in memory per worker (up to ``CACHE_BYTES`` of pixels) so
later epochs neither fetch nor decode again; the native preset crops them at random.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from detector.decode import decode_image
from detector.errors import ImageDecodeError
from detector.model import FAKE
from detector.presets import Preset
from jobs import storage

CACHE_BYTES = 1 << 30  # per worker (per loader process when there are several)


class LabelledImages(Dataset):
    """``(uri, label)`` pairs -> training samples ``(uint8 crop (3, h, w), label, index, error or "")``
    (``train=True``), or validation samples ``((tiles (n, 3, h, w), boxes (n, 4), width, height),
    label, index, error or "")`` cut exactly as the scan cuts them (``preset.prepare``)."""

    def __init__(self, samples: list[tuple[str, int]], preset: Preset, max_pixels: int,
                 *, train: bool = True, repeats: int = 1):
        """``repeats``: each sample appears that many times per pass (the native preset's
        ``crops_per_image``: another random crop each time); the index returned is the
        sample's."""
        self.samples, self.preset, self.max_pixels = samples, preset, max_pixels
        self.train, self.repeats = train, repeats
        self._cache: dict[str, Image.Image] = {}
        self._cached = 0

    def __len__(self) -> int:
        return len(self.samples) * self.repeats

    def __getitem__(self, i: int) -> tuple[Any, int, int, str]:
        i %= len(self.samples)
        uri, label = self.samples[i]
        try:
            image = self._decoded(uri)
        except (ImageDecodeError, OSError, ValueError) as e:
            return self._placeholder(), label, i, f"{type(e).__name__}: {e}"
        if self.train:
            return self.preset.train_crop(image, fake=label == FAKE), label, i, ""
        tiles, boxes = self.preset.prepare(image)
        return (tiles, boxes, image.width, image.height), label, i, ""

    def _placeholder(self) -> Any:
        """What an unreadable sample carries (weight 0 in the loss; left out of validation)."""
        s = self.preset.image_size
        zeros = torch.zeros(3, s, s, dtype=torch.uint8)
        return zeros if self.train else (zeros[None], np.array([[0, 0, s, s]], np.int32), s, s)

    def _decoded(self, uri: str) -> Image.Image:
        """The decoded picture, from this worker's cache after the first epoch: with the
        small native-resolution models a decode costs as much as a training step."""
        image = self._cache.get(uri)
        if image is None:
            image = decode_image(storage.read_bytes(uri), max_pixels=self.max_pixels).image
            size = image.width * image.height * 3
            if self._cached + size <= CACHE_BYTES:
                self._cache[uri] = image
                self._cached += size
        return image


def collate_crops(samples: list[tuple[torch.Tensor, int, int, str]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """A training batch: crops of different sizes (pictures smaller than the crop give
    smaller crops) are cut to the batch's smallest height and width, from their top-left
    corner. The crops were taken at random, so this is still a random crop at native
    resolution: nothing is padded or resampled. -> (uint8 (B, 3, h, w), labels, indices, errors)."""
    h = min(x.shape[1] for x, *_ in samples)
    w = min(x.shape[2] for x, *_ in samples)
    x = torch.stack([s[0][:, :h, :w] for s in samples])
    return (x, torch.tensor([s[1] for s in samples]), torch.tensor([s[2] for s in samples]), [s[3] for s in samples])


def collate_images(samples: list[tuple[Any, int, int, str]]) -> tuple[list[Any], torch.Tensor, torch.Tensor, list[str]]:
    """A validation batch: the images' tiles stay apart (they differ in size)."""
    return ([s[0] for s in samples], torch.tensor([s[1] for s in samples]), torch.tensor([s[2] for s in samples]),
            [s[3] for s in samples])
