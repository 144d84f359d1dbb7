"""The torch Dataset that jobs.train's workers read: ``(uri, label)`` pairs in, model
inputs out, with files that cannot be read or decoded turned into weight-0 samples that
carry their reason (see jobs/train/loop.py for why they are not dropped).

Bytes are cached in memory per worker (up to ``CACHE_BYTES``) so later epochs do not
fetch again; decoded pixels are not cached, since decoding costs far less than a training
step and the native preset crops the full image at random.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from detector.decode import decode_image
from detector.errors import ImageDecodeError
from detector.presets import Preset
from jobs import storage

CACHE_BYTES = 1 << 30  # per worker (per loader process when there are several)


class LabelledImages(Dataset):
    """``(uri, label)`` pairs -> ``(x float (3,S,S), label, index, error or "")``."""

    def __init__(self, samples: list[tuple[str, int]], transform: Any, preset: Preset, max_pixels: int,
                 *, train: bool = True, repeats: int = 1):
        """``repeats``: each sample appears that many times per pass (the native preset's
        ``crops_per_image``: another random crop each time); the index returned is the
        sample's."""
        self.samples, self.transform, self.max_pixels = samples, transform, max_pixels
        self.repeats = repeats
        # the side of a sample: the train crop, or what eval scores (native: eval_size)
        self.size = preset.image_size if train else preset.input_size
        self._cache: dict[str, bytes] = {}
        self._cached = 0

    def __len__(self) -> int:
        return len(self.samples) * self.repeats

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int, str]:
        i %= len(self.samples)
        uri, label = self.samples[i]
        try:
            image = decode_image(self._read(uri), max_pixels=self.max_pixels).image
        except (ImageDecodeError, FileNotFoundError, IsADirectoryError, PermissionError) as e:
            return torch.zeros(3, self.size, self.size), label, i, f"{type(e).__name__}: {e}"
        return self.transform(image), label, i, ""

    def _read(self, uri: str) -> bytes:
        data = self._cache.get(uri)
        if data is None:
            data = storage.read_bytes(uri)
            if self._cached + len(data) <= CACHE_BYTES:
                self._cache[uri] = data
                self._cached += len(data)
        return data
