"""From image bytes to scores and heat maps: the detector's whole scoring path, in two
stages so a pipeline can run them in different processes.

1. ``prepare(data, preset)``: decode untrusted bytes, cut the model inputs (the preset's
   tiles, uint8) and the thumbnail base. CPU-bound, one image at a time.
2. ``score_images(model, preset, images)``: the tiles of many images through the model,
   batched by tile shape; per image P(fake), logits and one heat map over the whole picture.

How tiles combine (exact, not an approximation): the head is ``fc(mean over positions of
A)``, so an image's logits are ``fc`` of the mean of its tiles' pooled features (tiles
have equal sizes), and its Grad-CAM map is the tiles' ``sum_k w_k A_k`` maps placed where
the tiles lie (averaged where they overlap), then ReLU and min-max scaling.

    python -c "from detector.inference import Detector; d = Detector.from_path('OUT'); print(d.model_version)"
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from detector.backends import Features, make_features, resolve
from detector.cam import normalise_cam
from detector.checkpoint import Checkpoint, load_checkpoint
from detector.decode import DEFAULT_MAX_PIXELS, decode_image
from detector.model import FAKE
from detector.presets import BaselinePreset, Preset
from detector.thumbnail import THUMBNAIL_SIZE, thumbnail_view

# JPEGs decode in draft mode (detector.decode) only down to this many times the size
# they are resized to afterwards.
JPEG_DRAFT_MARGIN = 2
MAX_CAM_SIDE = 32  # heat maps are stored at most this many cells on their longer side
TILE_PIXELS_PER_BATCH = 16 * 512 * 512  # model batches hold about this many input pixels


@dataclass(frozen=True)
class PreparedImage:
    tiles: torch.Tensor  # uint8 (n, 3, h, w): the model's inputs before normalisation
    boxes: np.ndarray  # int32 (n, 4): (left, top, right, bottom) of each tile in the picture
    view: np.ndarray  # uint8 (h, w, 3): thumbnail base, the whole picture
    width: int  # decoded size, after EXIF orientation
    height: int
    format: str


@dataclass(frozen=True)
class ImageScore:
    prob_fake: float
    logits: np.ndarray  # (K,)
    cam: np.ndarray  # float32 (h, w) in [0, 1] over the whole picture, h, w <= MAX_CAM_SIDE


def prepare(data: bytes, preset: Preset, *, max_pixels: int = DEFAULT_MAX_PIXELS,
            thumbnail_size: int = THUMBNAIL_SIZE) -> PreparedImage:
    """Decode and preprocess one image. Raises ImageDecodeError for bad input.

    A preset that resizes the whole picture (baseline) lets a JPEG of 4x the model input
    or more decode at 1/2-1/8 scale, still at least twice the larger of the model input
    and the thumbnail (``JPEG_DRAFT_MARGIN``; BENCHMARKS.md). Other presets work at native
    resolution and decode in full."""
    draft = JPEG_DRAFT_MARGIN * max(preset.image_size, thumbnail_size) if isinstance(preset, BaselinePreset) else None
    decoded = decode_image(data, max_pixels=max_pixels, draft_size=draft)
    image = decoded.image
    tiles, boxes = preset.prepare(image)
    if image.size != (decoded.width, decoded.height):  # drafted: boxes in the file's own pixels
        boxes = np.array([[0, 0, decoded.width, decoded.height]], np.int32)
    return PreparedImage(tiles=tiles, boxes=boxes, view=thumbnail_view(image, (0, 0, *image.size), thumbnail_size),
                         width=decoded.width, height=decoded.height, format=decoded.format)


@torch.inference_mode()
def score_images(model: torch.nn.Module, preset: Preset, images: Sequence[tuple[torch.Tensor, np.ndarray, int, int]],
                 *, memory_format: torch.memory_format = torch.contiguous_format,
                 features: Features | None = None) -> list[ImageScore]:
    """Score images given as ``(tiles uint8 (n, 3, h, w), boxes (n, 4), width, height)``.

    Tiles of equal shape, from any images, share model batches of about
    ``TILE_PIXELS_PER_BATCH`` pixels. The model must be in eval mode; ``features`` runs its
    normalisation, trunk, pooling and heat-map sum in a runtime (detector.backends; default
    torch on the model's device), the head and the heat map's placing and scaling stay here."""
    device = next(model.parameters()).device
    if features is None:
        features = make_features("torch", model, preset, num_threads=torch.get_num_threads(), memory_format=memory_format)
    by_shape: dict[tuple[int, ...], list[tuple[int, int]]] = defaultdict(list)  # shape -> (image, tile)
    for i, (tiles, _, _, _) in enumerate(images):
        for j in range(len(tiles)):
            by_shape[tuple(tiles.shape[1:])].append((i, j))
    pooled: dict[tuple[int, int], torch.Tensor] = {}
    maps: dict[tuple[int, int], torch.Tensor] = {}
    for shape, members in by_shape.items():
        per_batch = max(1, TILE_PIXELS_PER_BATCH // (shape[1] * shape[2]))
        for k in range(0, len(members), per_batch):
            chunk = members[k:k + per_batch]
            x = torch.stack([images[i][0][j] for i, j in chunk]).to(device)
            pool, raw = features(x)  # (b, C), (b, h, w)
            pool, raw = pool.float().to(device), raw.float().cpu()
            for m, key in enumerate(chunk):
                pooled[key], maps[key] = pool[m], raw[m]
    return [_combine(model, [pooled[(i, j)] for j in range(len(t))], [maps[(i, j)] for j in range(len(t))], b, w, h)
            for i, (t, b, w, h) in enumerate(images)]


def _combine(model, pooled: list[torch.Tensor], maps: list[torch.Tensor], boxes: np.ndarray,
             width: int, height: int) -> ImageScore:
    """One image's logits from its tiles' pooled features, and its heat map."""
    logits = model.fc(torch.stack(pooled).mean(0, keepdim=True).to(model.fc.weight.dtype))[0].float().cpu()
    prob = float(torch.softmax(logits, 0)[FAKE])
    mh, mw = maps[0].shape  # every tile of an image has the same size, so the same map size
    sy, sx = (boxes[0, 3] - boxes[0, 1]) / mh, (boxes[0, 2] - boxes[0, 0]) / mw  # picture pixels per cell
    gh, gw = max(mh, round(height / sy)), max(mw, round(width / sx))
    canvas, count = torch.zeros(gh, gw), torch.zeros(gh, gw)
    for (left, top, _, _), m in zip(boxes.tolist(), maps):
        y, x = min(round(top / sy), gh - mh), min(round(left / sx), gw - mw)
        canvas[y:y + mh, x:x + mw] += m
        count[y:y + mh, x:x + mw] += 1
    cam = canvas / count.clamp(min=1)
    if max(gh, gw) > MAX_CAM_SIDE:
        size = (max(1, round(gh * MAX_CAM_SIDE / max(gh, gw))), max(1, round(gw * MAX_CAM_SIDE / max(gh, gw))))
        cam = F.adaptive_avg_pool2d(cam[None, None], size)[0, 0]
    return ImageScore(prob_fake=prob, logits=logits.numpy(), cam=normalise_cam(cam[None])[0].numpy())


class Detector:
    """A loaded checkpoint ready to score prepared images on one device."""

    def __init__(self, checkpoint: Checkpoint, *, device: str = "cpu", channels_last: bool = True,
                 runtime: str = "torch", num_threads: int | None = None):
        self.device = torch.device(device)
        self.checkpoint = checkpoint
        self.preset = checkpoint.preset
        self.threshold = checkpoint.threshold
        self.model_version = checkpoint.model_version
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = checkpoint.model.to(self.device, memory_format=self.memory_format).eval()
        self.runtime = resolve(runtime, use_gpu=self.device.type != "cpu")
        self.features = make_features(self.runtime, self.model, self.preset, memory_format=self.memory_format,
                                      num_threads=num_threads or torch.get_num_threads(),
                                      cache_key=self.model_version)

    @classmethod
    def from_path(cls, path: str | Path, *, device: str = "cpu", channels_last: bool = True) -> "Detector":
        return cls(load_checkpoint(path, device="cpu"), device=device, channels_last=channels_last)

    def score(self, images: Sequence[PreparedImage]) -> list[ImageScore]:
        """P(fake), logits and heat map of each prepared image."""
        return self.score_tiles([(p.tiles, p.boxes, p.width, p.height) for p in images])

    def score_tiles(self, images: Sequence[tuple[torch.Tensor, np.ndarray, int, int]]) -> list[ImageScore]:
        """``score_images`` with this detector's model, device and runtime."""
        return score_images(self.model, self.preset, images, memory_format=self.memory_format, features=self.features)
