"""The detector network: a ResNet18 trunk, global average pooling and a 2-class linear head.

Classes follow the original project's folder order (`ImageFolder` sorts them): index 0 is
``fake``, index 1 is ``real``. The model knows nothing about distribution, storage or Ray.

Every architecture is ResNet18 (torchvision's modules, so its weights load by name) in one
of the ``ARCHITECTURES`` cuts, described by a ``ModelSpec``:

- ``resnet18``: torchvision's ResNet18 whole: 7x7 stride-2 stem, max pool, layer1-layer4
  (512 channels, output stride 32). The original project's model.
- ``resnet18-npr``: NPR (Tan et al., CVPR 2024, "Rethinking the up-sampling operations in
  CNN-based generative network"): the input is the neighbouring-pixel residual
  ``x - up(down(x))`` (nearest, factor 2), which keeps the traces a generator's 2x
  up-sampling leaves and drops most of what the picture shows; a 3x3 stride-2 stem, max
  pool, layer1 and layer2 only (128 channels, output stride 8), so a 32-px image still has
  4x4 features. About half of ResNet18's work per pixel.

Both end in global average pooling and one linear layer, so Grad-CAM is closed-form
(detector/cam.py) and the network is fully convolutional: it scores any size >= 2 strides.

    python -c "from detector.model import build_model; print(build_model('none', arch='resnet18-npr'))"
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models

from detector.weights import read_state_dict

CLASSES: tuple[str, str] = ("fake", "real")
FAKE: int = CLASSES.index("fake")
REAL: int = CLASSES.index("real")
WEIGHT_CHOICES = ("none", "imagenet")


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    input: str = "rgb"  # "rgb": the normalised pixels; "npr": their neighbouring-pixel residual
    stem: str = "7x7s2"  # conv1: torchvision's 7x7 stride 2, or "3x3s2" (NPR's)
    depth: int = 4  # the last ResNet18 stage kept: 2, 3 or 4

    def __post_init__(self) -> None:
        if self.input not in ("rgb", "npr") or self.stem not in ("7x7s2", "3x3s2") or self.depth not in (2, 3, 4):
            raise ValueError(f"unsupported model {self}: input rgb|npr, stem 7x7s2|3x3s2, depth 2-4")

    @property
    def channels(self) -> int:
        return 64 * 2 ** (self.depth - 1)

    @property
    def stride(self) -> int:
        """Input pixels per feature-map cell (stem 2, max pool 2, layer2-4 each 2)."""
        return 4 * 2 ** (self.depth - 1)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


ARCHITECTURES: dict[str, ModelSpec] = {
    "resnet18": ModelSpec(),
    "resnet18-npr": ModelSpec(input="npr", stem="3x3s2", depth=2),
}


def npr_residual(x: torch.Tensor) -> torch.Tensor:
    """``x - up(down(x))`` with nearest resampling by 2, times 2/3 (NPR's scale): each 2x2
    block minus its top-left pixel. An odd last row or column is dropped: (B, C, H, W) ->
    (B, C, H - H % 2, W - W % 2). Crops must start at even offsets to keep the grid."""
    h, w = x.shape[-2:]
    x = x[..., : h - h % 2, : w - w % 2]
    corner = x[..., ::2, ::2]  # (B, C, H/2, W/2)
    up = corner.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
    return (x - up) * (2.0 / 3.0)


class Detector18(nn.Module):
    """ResNet18 trunk per ``spec``, global average pool, ``Linear(channels, num_classes)``.
    Module names are torchvision's (conv1, bn1, layer1..., fc) so its weights load."""

    def __init__(self, spec: ModelSpec = ModelSpec(), num_classes: int = len(CLASSES)):
        super().__init__()
        base = models.resnet18(weights=None)
        self.spec = spec
        if spec.stem == "3x3s2":
            base.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=2, padding=1, bias=False)
            nn.init.kaiming_normal_(base.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.conv1, self.bn1, self.relu, self.maxpool = base.conv1, base.bn1, base.relu, base.maxpool
        for i in range(1, spec.depth + 1):
            setattr(self, f"layer{i}", getattr(base, f"layer{i}"))
        self.fc = nn.Linear(spec.channels, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised input -> (B, C, H/stride, W/stride) last-stage features."""
        return self.trunk(npr_residual(x) if self.spec.input == "npr" else x)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """``features`` after the input transform (NPR residual or none): stem and layers."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(1, self.spec.depth + 1):
            x = getattr(self, f"layer{i}")(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))  # (B, K)


def build_model(weights: str = "none", num_classes: int = len(CLASSES), *, arch: str | ModelSpec = "resnet18") -> Detector18:
    """The detector network for ``arch`` (a name in ``ARCHITECTURES`` or a ModelSpec).

    ``weights``: ``"none"`` (random init), ``"imagenet"`` (torchvision's
    ``ResNet18_Weights.IMAGENET1K_V1`` for the layers the architecture keeps; downloads
    once, needs the internet) or the path of a local file with a ResNet18 state dict
    (``.safetensors``, or ``.pt``/``.pth`` read with ``weights_only=True``; a full genscan
    checkpoint works too). A head of another shape in the file is dropped and replaced.
    """
    spec = ARCHITECTURES[arch] if isinstance(arch, str) else arch
    model = Detector18(spec, num_classes)
    if weights == "none":
        return model
    if weights == "imagenet":
        state = models.resnet18(weights=models.ResNet18_Weights.IMAGENET1K_V1).state_dict()
    else:
        path = Path(weights)
        if not path.is_file():
            raise ValueError(f"--weights must be one of {', '.join(WEIGHT_CHOICES)} or a local file; {weights!r} is neither")
        state = read_state_dict(path)
    own = model.state_dict()
    # keep what fits this architecture (a cut model takes the layers it has; another head is dropped)
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in usable and not k.startswith("fc.") and not k.startswith("conv1.")]
    if missing or not usable:
        raise ValueError(f"{weights} is not a ResNet18 state dict for {spec}: missing {missing[:5]}")
    model.load_state_dict(usable, strict=False)
    return model
