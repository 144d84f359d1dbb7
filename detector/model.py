"""The detector network: ResNet18 with a 2-class head.

Classes follow the original project's folder order (`ImageFolder` sorts them):
index 0 is ``fake``, index 1 is ``real``. The model knows nothing about distribution,
storage or Ray.

    python -c "from detector.model import build_model; print(build_model('none'))"
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision import models

from detector.weights import read_state_dict

CLASSES: tuple[str, str] = ("fake", "real")
FAKE: int = CLASSES.index("fake")
REAL: int = CLASSES.index("real")
ARCHITECTURE = "resnet18"
WEIGHT_CHOICES = ("none", "imagenet")


def build_model(weights: str = "none", num_classes: int = len(CLASSES)) -> nn.Module:
    """ResNet18 whose last layer is replaced by a ``num_classes``-way linear head.

    ``weights``: ``"none"`` (random init), ``"imagenet"`` (torchvision's
    ``ResNet18_Weights.IMAGENET1K_V1``; downloads once, needs the internet) or the path of
    a local file with a ResNet18 state dict (``.safetensors``, or ``.pt``/``.pth`` read with
    ``weights_only=True``; a full genscan checkpoint works too). An ImageNet-shaped head
    in the file is dropped and replaced.
    """
    if weights == "imagenet":
        model = models.resnet18(weights=models.ResNet18_Weights.IMAGENET1K_V1)
    elif weights == "none":
        model = models.resnet18(weights=None)
    else:
        path = Path(weights)
        if not path.is_file():
            raise ValueError(
                f"--weights must be one of {', '.join(WEIGHT_CHOICES)} or a local file; "
                f"{weights!r} is neither"
            )
        model = models.resnet18(weights=None)
        state = read_state_dict(path)
        if state.get("fc.weight", torch.empty(0)).shape[:1] != (num_classes,):
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("fc.")]
        if missing or unexpected:
            raise ValueError(
                f"{path} is not a ResNet18 state dict: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
    if model.fc.out_features != num_classes:
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model
