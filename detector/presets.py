"""Preprocessing presets: how an image becomes the model's input, in training and scoring.

Each preset is a small frozen dataclass with keyword-only parameters (torchvision's
``references/classification/presets.py`` style). A checkpoint stores ``to_dict()`` so the
scan rebuilds exactly the preprocessing the model was trained with.

- ``baseline``: the original project, exactly: train ``Resize((224, 224))`` +
  ``RandomHorizontalFlip`` + ImageNet normalisation; eval ``Resize`` + normalisation.
- ``native``: keeps generation traces: crops at native resolution instead of resizing
  (pads images smaller than the crop), with blur and JPEG re-compression augmentation
  applied to *both* classes so file format and compression cannot be the signal.
  Trains on random ``image_size`` crops; scores a centre crop of ``eval_size`` (default:
  ``image_size``). ResNet18 ends in global average pooling, so a larger eval crop than
  the train crop averages the same local evidence over more of the picture.

Eval is split in two so the scan can batch the cheap part: ``prepare(image)`` does the
geometry on one PIL image and returns uint8 ``(3, S, S)``, ``S = input_size``;
``normalize(batch)`` turns a uint8 ``(B, 3, S, S)`` batch into the model's float input.

    python -c "from detector.presets import get_preset; print(get_preset('native').to_dict())"
"""

from __future__ import annotations

import dataclasses
import io
import random
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from PIL import Image, ImageFilter
from torchvision.transforms import v2 as T
from torchvision.transforms.functional import pil_to_tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True, kw_only=True)
class Preset:
    name: ClassVar[str]
    image_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    # -- scoring ---------------------------------------------------------------------
    @property
    def input_size(self) -> int:
        """The side S of what ``prepare`` returns (the train crop is ``image_size``)."""
        return self.image_size

    def prepare(self, image: Image.Image) -> torch.Tensor:
        """RGB PIL image -> uint8 (3, S, S): the deterministic eval geometry."""
        raise NotImplementedError

    def view_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """The (left, top, right, bottom) region of the image that ``prepare`` shows the
        model, so a heat map can be drawn back onto the picture."""
        raise NotImplementedError

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, S, S) -> float32 (B, 3, S, S), ImageNet-normalised."""
        mean = torch.tensor(self.mean, device=batch.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=batch.device).view(1, 3, 1, 1)
        return (batch.float().div_(255.0) - mean) / std

    def eval_transform(self, image: Image.Image) -> torch.Tensor:
        """One image -> float (3, S, S): ``prepare`` then ``normalize``."""
        return self.normalize(self.prepare(image).unsqueeze(0))[0]

    # -- training --------------------------------------------------------------------
    def train_transform(self, image: Image.Image) -> torch.Tensor:
        """One RGB PIL image -> augmented float (3, S, S)."""
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

    def prepare(self, image: Image.Image) -> torch.Tensor:
        # Same call as the original's transforms.Resize((224, 224)) on a PIL image.
        size = (self.image_size, self.image_size)
        return pil_to_tensor(T.functional.resize(image, list(size)))

    def view_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        return (0, 0, width, height)

    def train_transform(self, image: Image.Image) -> torch.Tensor:
        x = self.prepare(image)
        if random.random() < self.hflip_prob:
            x = x.flip(-1)
        return self.normalize(x.unsqueeze(0))[0]


@dataclass(frozen=True, kw_only=True)
class NativeCropPreset(Preset):
    """Crop at native resolution (no resampling of the pixels the model sees)."""

    name: ClassVar[str] = "native"
    hflip_prob: float = 0.5
    blur_prob: float = 0.1
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    jpeg_prob: float = 0.5
    jpeg_quality: tuple[int, int] = (65, 100)
    eval_size: int | None = None  # centre crop that prepare() scores; None: image_size

    @property
    def input_size(self) -> int:
        return self.eval_size or self.image_size

    @staticmethod
    def _pad(image: Image.Image, s: int) -> Image.Image:
        if image.width >= s and image.height >= s:
            return image
        canvas = Image.new("RGB", (max(s, image.width), max(s, image.height)))
        canvas.paste(image, (0, 0))  # zero padding, right/bottom, like RandomCrop(pad_if_needed)
        return canvas

    def view_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        s = self.input_size
        left, top = max(0, (width - s) // 2), max(0, (height - s) // 2)
        return (left, top, min(width, left + s), min(height, top + s))

    def prepare(self, image: Image.Image) -> torch.Tensor:
        s = self.input_size
        left, top, _, _ = self.view_box(image.width, image.height)
        return pil_to_tensor(self._pad(image.crop((left, top, left + s, top + s)), s))

    def train_transform(self, image: Image.Image) -> torch.Tensor:
        s = self.image_size
        image = self._pad(image, s)
        left = random.randint(0, image.width - s)
        top = random.randint(0, image.height - s)
        image = image.crop((left, top, left + s, top + s))
        if random.random() < self.blur_prob:
            image = image.filter(ImageFilter.GaussianBlur(random.uniform(*self.blur_sigma)))
        if random.random() < self.jpeg_prob:
            image = reencode_jpeg(image, random.randint(*self.jpeg_quality))
        x = pil_to_tensor(image)
        if random.random() < self.hflip_prob:
            x = x.flip(-1)
        return self.normalize(x.unsqueeze(0))[0]


def reencode_jpeg(image: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    out = Image.open(buf)
    out.load()
    return out.convert("RGB")


PRESETS: dict[str, type[Preset]] = {p.name: p for p in (BaselinePreset, NativeCropPreset)}


def get_preset(name: str, **params: Any) -> Preset:
    """A preset by name, with parameters overridden (e.g. ``image_size=32``)."""
    try:
        cls = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(params) - set(fields)
    if unknown:
        raise ValueError(f"preset {name!r} has no parameter(s) {sorted(unknown)}; it has {sorted(fields)}")
    # JSON gives lists; the dataclass wants tuples.
    params = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
    return cls(**params)


def preset_from_dict(d: dict[str, Any]) -> Preset:
    d = dict(d)
    return get_preset(d.pop("name"), **d)
