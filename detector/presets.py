"""Preprocessing presets: how a picture becomes the model's input, in training and scoring.

Each preset is a small frozen dataclass with keyword-only, bounded parameters
(torchvision's ``references/classification/presets.py`` style). A checkpoint stores
``to_dict()`` so the scan rebuilds exactly the preprocessing the model was trained with.

- ``baseline``: the original project, exactly: ``Resize((224, 224))`` (+ ``RandomHorizontalFlip``
  in training) and ImageNet normalisation. One input per picture.
- ``native``: never resamples and never pads. Training takes random ``image_size`` crops at
  native resolution (bounded by the picture: a 32-px image gives a 32-px crop), with blur,
  JPEG re-compression and down-scaling augmentation applied to *both* classes so that file
  format and compression cannot be the signal. Scoring covers the whole picture at native
  resolution: a picture of at most ``tile_size`` on each side is one input as it is; a
  larger one is covered by up to ``max_tiles`` tiles of ``tile_size`` spread evenly over it
  (all of it when they suffice: 4 tiles of 512 cover 1024 x 1024), whose evidence the
  scorer averages (global average pooling is linear, so this is one fully convolutional
  pass over the tiles). Cost per picture: at most ``max_tiles * tile_size**2`` pixels.
  Offsets are multiples of 8, which keeps the JPEG block grid and NPR's 2x2 grid aligned.

Both halves return uint8 so batches stay small: ``prepare(image)`` -> ``(tiles (n, 3, h, w),
boxes (n, 4))`` for scoring, ``train_crop(image)`` -> ``(3, h, w)`` for training;
``normalize(batch)`` makes the model's float input.

    python -c "from detector.presets import get_preset; print(get_preset('native').to_dict())"
"""

from __future__ import annotations

import dataclasses
import io
import math
import random
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image, ImageFilter
from torchvision.transforms import v2 as T
from torchvision.transforms.functional import pil_to_tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_SIDE = 4096  # bound on every size parameter: a checkpoint's metadata is untrusted input


@dataclass(frozen=True, kw_only=True)
class Preset:
    name: ClassVar[str]
    image_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError(f"preset {self.name}: " + "; ".join(problems))

    def problems(self) -> list[str]:
        """What is out of bounds (each preset adds its own)."""
        p = []
        if not 16 <= self.image_size <= MAX_SIDE:
            p.append(f"image_size must be 16-{MAX_SIDE}, got {self.image_size}")
        if len(self.mean) != 3 or not all(math.isfinite(m) for m in self.mean):
            p.append(f"mean must be 3 finite numbers, got {self.mean}")
        if len(self.std) != 3 or not all(math.isfinite(s) and s > 0 for s in self.std):
            p.append(f"std must be 3 finite positive numbers, got {self.std}")
        return p

    # -- scoring ---------------------------------------------------------------------
    def prepare(self, image: Image.Image) -> tuple[torch.Tensor, np.ndarray]:
        """RGB PIL image -> (uint8 tiles (n, 3, h, w), int32 boxes (n, 4)): the model's
        inputs and the (left, top, right, bottom) region of the picture each one shows."""
        raise NotImplementedError

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> float32 (B, 3, H, W), normalised."""
        mean = torch.tensor(self.mean, device=batch.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=batch.device).view(1, 3, 1, 1)
        return (batch.float().div_(255.0) - mean) / std

    # -- training --------------------------------------------------------------------
    def train_crop(self, image: Image.Image, rng: random.Random | None = None, *, fake: bool = False) -> torch.Tensor:
        """One RGB PIL image -> an augmented uint8 (3, h, w) training input (``fake``: its label,
        for augmentation that applies to one class only)."""
        raise NotImplementedError

    # -- serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {"name": self.name, **{k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}}


@dataclass(frozen=True, kw_only=True)
class BaselinePreset(Preset):
    """The original project's recipe: squash to ``image_size`` x ``image_size``."""

    name: ClassVar[str] = "baseline"
    hflip_prob: float = 0.5

    def problems(self) -> list[str]:
        return super().problems() + _probabilities(hflip_prob=self.hflip_prob)

    def _resized(self, image: Image.Image) -> torch.Tensor:
        # Same call as the original's transforms.Resize((224, 224)) on a PIL image.
        return pil_to_tensor(T.functional.resize(image, [self.image_size, self.image_size]))

    def prepare(self, image: Image.Image) -> tuple[torch.Tensor, np.ndarray]:
        return self._resized(image).unsqueeze(0), np.array([[0, 0, image.width, image.height]], np.int32)

    def train_crop(self, image: Image.Image, rng: random.Random | None = None, *, fake: bool = False) -> torch.Tensor:
        x = self._resized(image)
        return x.flip(-1) if (rng or random).random() < self.hflip_prob else x


@dataclass(frozen=True, kw_only=True)
class NativeCropPreset(Preset):
    """Native resolution: random crops in training, the whole picture (tiled) in scoring."""

    name: ClassVar[str] = "native"
    image_size: int = 96
    tile_size: int = 512
    max_tiles: int = 4
    hflip_prob: float = 0.5
    blur_prob: float = 0.1
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    jpeg_prob: float = 0.7  # docs/QUALITY.md: robustness to re-compression and down-scaling
    jpeg_quality: tuple[int, int] = (50, 100)
    resample_prob: float = 0.3  # resize a region by resample_scale before cropping
    resample_scale: tuple[float, float] = (0.5, 1.0)  # above 1: up-scaling too (up to 2)
    # Fakes only: the share of crops first put through a real photo's processing (squash_like_a_photo).
    # Off by default; docs/QUALITY.md round 5 measures it.
    squash_fake_prob: float = 0.0

    def problems(self) -> list[str]:
        p = super().problems() + _probabilities(hflip_prob=self.hflip_prob, blur_prob=self.blur_prob,
                                                jpeg_prob=self.jpeg_prob, resample_prob=self.resample_prob,
                                                squash_fake_prob=self.squash_fake_prob)
        if not 32 <= self.tile_size <= MAX_SIDE or not 1 <= self.max_tiles <= 64:
            p.append(f"tile_size must be 32-{MAX_SIDE} and max_tiles 1-64, got {self.tile_size}, {self.max_tiles}")
        lo, hi = self.jpeg_quality
        if not 1 <= lo <= hi <= 100:
            p.append(f"jpeg_quality must be 1 <= low <= high <= 100, got {self.jpeg_quality}")
        if not 0 <= self.blur_sigma[0] <= self.blur_sigma[1] <= 50:
            p.append(f"blur_sigma must be 0 <= low <= high <= 50, got {self.blur_sigma}")
        if not 0.1 <= self.resample_scale[0] <= self.resample_scale[1] <= 2:
            p.append(f"resample_scale must be 0.1 <= low <= high <= 2, got {self.resample_scale}")
        return p

    def tile_boxes(self, width: int, height: int) -> np.ndarray:
        """int32 (n, 4) boxes of equal size covering the picture (spread over it when
        ``max_tiles`` do not suffice), origins on multiples of 8."""
        tw, th = min(self.tile_size, width), min(self.tile_size, height)
        nx, ny = math.ceil(width / tw), math.ceil(height / th)
        while nx * ny > self.max_tiles:  # drop a column or a row, keeping the grid's aspect
            nx, ny = (nx - 1, ny) if nx >= ny else (nx, ny - 1)
        xs, ys = _spread(width - tw, nx), _spread(height - th, ny)
        return np.array([(x, y, x + tw, y + th) for y in ys for x in xs], np.int32)

    def prepare(self, image: Image.Image) -> tuple[torch.Tensor, np.ndarray]:
        boxes = self.tile_boxes(image.width, image.height)
        pixels = pil_to_tensor(image)  # (3, H, W) uint8, no copy of the pixels per tile
        tiles = torch.stack([pixels[:, t:b, l:r] for l, t, r, b in boxes.tolist()])
        return tiles, boxes

    def train_crop(self, image: Image.Image, rng: random.Random | None = None, *, fake: bool = False) -> torch.Tensor:
        """A random ``image_size`` crop (smaller when the picture is), augmented: a region a
        little larger than the crop is taken at a multiple-of-8 offset, maybe (fakes only)
        processed like a real photo, maybe resized, blurred and re-compressed as JPEG,
        then cropped at an even offset."""
        rng = rng or random
        crop = min(self.image_size, image.width, image.height)
        scale = rng.uniform(*self.resample_scale) if rng.random() < self.resample_prob else 1.0
        squash = fake and self.squash_fake_prob > 0 and rng.random() < self.squash_fake_prob  # 0: the same draws as before
        # + 16 when squashing: room for the resampling kernels' borders
        side = min(math.ceil((crop + 8 + 16 * squash) / scale) + 2, image.width, image.height)
        left = rng.randrange(0, (image.width - side) // 8 + 1) * 8
        top = rng.randrange(0, (image.height - side) // 8 + 1) * 8
        region = image.crop((left, top, left + side, top + side))
        if squash:
            region = squash_like_a_photo(region, rng)
        if scale != 1.0:
            size = max(crop, round(side * scale))
            region = region.resize((size, size), rng.choice((Image.BICUBIC, Image.BILINEAR, Image.LANCZOS)))
        if rng.random() < self.blur_prob:
            region = region.filter(ImageFilter.GaussianBlur(rng.uniform(*self.blur_sigma)))
        if rng.random() < self.jpeg_prob:
            region = reencode_jpeg(region, rng.randint(*self.jpeg_quality))
        x0 = rng.randrange(0, (region.width - crop) // 2 + 1) * 2
        y0 = rng.randrange(0, (region.height - crop) // 2 + 1) * 2
        x = pil_to_tensor(region)[:, y0:y0 + crop, x0:x0 + crop]
        return x.flip(-1) if rng.random() < self.hflip_prob else x


def _spread(span: int, n: int) -> list[int]:
    """``n`` offsets from 0 to ``span`` (the centre when n == 1), rounded down to multiples of 8."""
    if n == 1:
        return [span // 2 // 8 * 8]
    return [round(i * span / (n - 1)) // 8 * 8 for i in range(n)]


def _probabilities(**values: float) -> list[str]:
    return [f"{k} must be a probability in [0, 1], got {v}" for k, v in values.items() if not 0 <= v <= 1]


SQUASH_FACTOR = (0.7, 1.4)  # the made-up original's side / the stored side, per axis (log-uniform)
SQUASH_QUALITY = (70, 95)  # the made-up original's JPEG quality


def squash_like_a_photo(region: Image.Image, rng: random.Random) -> Image.Image:
    """``region`` processed as a data set's real photos often are: as if its picture had been
    a JPEG of another size and aspect (SQUASH_*) resized to the stored size without keeping
    the aspect, then saved at JPEG q95 (sd-coco-dev's own SOURCE.md: COCO and ImageNet
    photos -> LANCZOS 512 x 512 -> q95; its fakes skipped both steps). Applied to fakes, it
    stops "resampled and compressed twice" from meaning "real". The region must sit on the
    picture's 8-pixel grid so the last JPEG's blocks fall where the stored file's did."""
    w, h = region.size
    fx, fy = (math.exp(rng.uniform(*map(math.log, SQUASH_FACTOR))) for _ in range(2))
    original = region.resize((max(8, round(w * fx)), max(8, round(h * fy))), Image.BICUBIC)
    original = reencode_jpeg(original, rng.randint(*SQUASH_QUALITY))
    return reencode_jpeg(original.resize((w, h), Image.LANCZOS), 95)


def reencode_jpeg(image: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    out = Image.open(buf, formats=["JPEG"])
    out.load()
    return out.convert("RGB")


PRESETS: dict[str, type[Preset]] = {p.name: p for p in (BaselinePreset, NativeCropPreset)}


def get_preset(name: str, **params: Any) -> Preset:
    """A preset by name, with parameters overridden (e.g. ``image_size=32``); ValueError
    for an unknown name, an unknown parameter or a value out of bounds."""
    try:
        cls = PRESETS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(params) - fields
    if unknown:
        raise ValueError(f"preset {name!r} has no parameter(s) {sorted(unknown)}; it has {sorted(fields)}")
    # JSON gives lists; the dataclass wants tuples.
    params = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
    try:
        return cls(**params)
    except TypeError as e:  # a value of the wrong type from a checkpoint's metadata
        raise ValueError(f"preset {name!r}: {e}") from None


def preset_from_dict(d: dict[str, Any]) -> Preset:
    if not isinstance(d, dict):
        raise ValueError(f"a preset is a JSON object, got {type(d).__name__}")
    d = dict(d)
    name = d.pop("name", None)
    if name == "native":
        d.pop("eval_size", None)  # checkpoints before tiling scored one centre crop of this size
    return get_preset(name, **d)
