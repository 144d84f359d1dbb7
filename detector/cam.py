"""Batched scoring with a Grad-CAM heat map for every image, no backward pass.

The detector ends in global average pooling and one linear layer, so for the feature maps
``A`` of its last stage (B, C, h, w) and the class score ``y_c = sum_k W[c,k] mean(A_k) + b_c``
the Grad-CAM weights are ``dy_c/dA_k = W[c,k] / (h*w)``, constant over space, and
Grad-CAM is ``ReLU(sum_k W[c,k] A_k)`` up to a positive factor (Grad-CAM paper,
section 3.1, "Grad-CAM generalizes CAM"). The map therefore costs one einsum on
features the forward pass already made.

The target explained by default is the fake log-odds ``y_fake - y_real``: with two
classes ``P(fake) = sigmoid(y_fake - y_real)``, so this map explains the score itself.
``target="class"`` gives the plain class logit (pytorch-grad-cam's
``ClassifierOutputTarget``). ``tests/detector`` checks both against pytorch-grad-cam.

    python -c "from detector.cam import score_batch; help(score_batch)"
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from detector.model import FAKE, REAL

Target = Literal["log_odds", "class"]


@dataclass(frozen=True)
class Scores:
    prob_fake: torch.Tensor  # (B,) float32 in [0, 1]
    logits: torch.Tensor  # (B, 2)
    cam: torch.Tensor  # (B, h, w) float32, each map scaled to [0, 1] (7x7 at 224 px)


def features_and_logits(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward a detector (detector.model.Detector18), returning (last-stage features
    (B, C, h, w), logits (B, K)): the features the heat map is made of, from the same pass."""
    a = model.features(x)  # (B, C, h, w)
    return a, model.fc(a.mean(dim=(2, 3)))  # GAP then the linear head: (B, K)


def cam_weights(model: nn.Module, class_index: int = FAKE, target: Target = "log_odds") -> torch.Tensor:
    """Per-channel Grad-CAM weights (C,) of ``model.fc`` for the chosen target."""
    w = model.fc.weight  # (K, C)
    if target == "class":
        return w[class_index]
    other = REAL if class_index == FAKE else FAKE
    return w[class_index] - w[other]


def class_activation_map(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """ReLU(sum_k w_k A_k), then each map min-max scaled to [0, 1] as pytorch-grad-cam does.

    features: (B, C, h, w); weights: (C,) -> (B, h, w)."""
    return normalise_cam(torch.einsum("bchw,c->bhw", features.float(), weights.float()))


def normalise_cam(cam: torch.Tensor) -> torch.Tensor:
    """(B, h, w) raw maps ``sum_k w_k A_k`` -> ReLU, each map min-max scaled to [0, 1]."""
    cam = cam.clamp(min=0)
    flat = cam.flatten(1)
    lo = flat.min(dim=1).values.view(-1, 1, 1)
    cam = cam - lo
    hi = cam.flatten(1).max(dim=1).values.view(-1, 1, 1)
    return cam / (hi + 1e-7)


@torch.inference_mode()
def score_batch(
    model: nn.Module,
    x: torch.Tensor,
    *,
    class_index: int = FAKE,
    target: Target = "log_odds",
) -> Scores:
    """Score a normalised float batch (B, 3, H, W) on the model's device.

    Returns P(fake), the logits, and the heat map of ``class_index`` on ``layer4``.
    Put the model in eval mode (and ``channels_last``, which is 2-5x faster on CPU) first.
    """
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected a (B, 3, H, W) batch, got {tuple(x.shape)}")
    features, logits = features_and_logits(model, x)
    prob = F.softmax(logits.float(), dim=1)[:, FAKE]
    cam = class_activation_map(features, cam_weights(model, class_index, target))
    return Scores(prob_fake=prob, logits=logits.float(), cam=cam)
