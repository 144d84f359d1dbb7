"""From image bytes to scores and heat-map thumbnails: the detector's whole scoring path,
in two stages so a pipeline can run them in different processes.

1. ``prepare(data, preset)``: decode untrusted bytes, make the model input (uint8, small)
   and the thumbnail base. CPU-bound, one image at a time.
2. ``Detector.score(pixels)``: a batch through the model: P(fake), logits, heat maps.

    python -c "from detector.inference import Detector; d = Detector.from_path('OUT'); print(d.model_version)"
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from detector.cam import Scores, score_batch
from detector.checkpoint import Checkpoint, load_checkpoint
from detector.decode import DEFAULT_MAX_PIXELS, decode_image
from detector.presets import BaselinePreset, Preset
from detector.thumbnail import THUMBNAIL_SIZE, thumbnail_view

# JPEGs decode in draft mode (detector.decode) only down to this many times the size
# they are resized to afterwards.
JPEG_DRAFT_MARGIN = 2


@dataclass(frozen=True)
class PreparedImage:
    pixels: torch.Tensor  # uint8 (3, S, S): the model's input before normalisation
    view: np.ndarray  # uint8 (h, w, 3): thumbnail base, the region the model saw
    width: int  # decoded size, after EXIF orientation
    height: int
    format: str


def prepare(
    data: bytes,
    preset: Preset,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    thumbnail_size: int = THUMBNAIL_SIZE,
) -> PreparedImage:
    """Decode and preprocess one image. Raises ImageDecodeError for bad input.

    A preset that resizes the whole picture (baseline) lets a JPEG of 4x the model
    input or more decode at 1/2-1/8 scale, still at least twice the larger of the
    model input and the thumbnail (``JPEG_DRAFT_MARGIN``): a 12 MP photo decodes
    several times faster, and the model input moves by about 0.2 of 255 levels on
    average (BENCHMARKS.md, benchmarks/jpeg_draft.py). Other presets crop at native
    resolution and decode in full."""
    draft = JPEG_DRAFT_MARGIN * max(preset.input_size, thumbnail_size) if isinstance(preset, BaselinePreset) else None
    decoded = decode_image(data, max_pixels=max_pixels, draft_size=draft)
    image = decoded.image
    box = preset.view_box(image.width, image.height)
    return PreparedImage(
        pixels=preset.prepare(image),
        view=thumbnail_view(image, box, thumbnail_size),
        width=decoded.width,
        height=decoded.height,
        format=decoded.format,
    )


class Detector:
    """A loaded checkpoint ready to score uint8 batches on one device."""

    def __init__(self, checkpoint: Checkpoint, *, device: str = "cpu", channels_last: bool = True):
        self.device = torch.device(device)
        self.checkpoint = checkpoint
        self.preset = checkpoint.preset
        self.threshold = checkpoint.threshold
        self.model_version = checkpoint.model_version
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = checkpoint.model.to(self.device, memory_format=self.memory_format).eval()

    @classmethod
    def from_path(cls, path: str | Path, *, device: str = "cpu", channels_last: bool = True) -> "Detector":
        return cls(load_checkpoint(path, device="cpu"), device=device, channels_last=channels_last)

    def score(self, pixels: torch.Tensor) -> Scores:
        """uint8 (B, 3, S, S) -> Scores on the CPU (prob_fake (B,), logits (B, 2), cam (B, h, w))."""
        x = pixels.to(self.device, non_blocking=True)
        x = self.preset.normalize(x).contiguous(memory_format=self.memory_format)
        s = score_batch(self.model, x)
        return Scores(prob_fake=s.prob_fake.cpu(), logits=s.logits.cpu(), cam=s.cam.cpu())
