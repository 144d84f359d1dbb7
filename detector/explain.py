"""Heat maps through pytorch-grad-cam: any layer, any method. The general path and the
reference that the closed-form map in ``scoring`` is tested against.

    python -c "from detector.explain import METHODS; print(sorted(METHODS))"
"""

from __future__ import annotations

import importlib

import numpy as np
import torch
from torch import nn

from detector.model import FAKE, REAL

# Method name -> pytorch-grad-cam class name. The library is imported on first use only:
# it imports scikit-learn, which imports pandas and pyarrow (detector/ must not).
METHODS = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "hirescam": "HiResCAM",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "scorecam": "ScoreCAM",
    "eigencam": "EigenCAM",
}


class LogOddsTarget:
    """pytorch-grad-cam target: the log-odds of ``class_index`` against the other class,
    ``y_c - y_other``; with two classes it is what the softmax probability depends on."""

    def __init__(self, class_index: int = FAKE):
        self.class_index = class_index
        self.other = REAL if class_index == FAKE else FAKE

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        if model_output.ndim == 1:
            return model_output[self.class_index] - model_output[self.other]
        return model_output[:, self.class_index] - model_output[:, self.other]


def explain(
    model: nn.Module,
    x: torch.Tensor,
    *,
    method: str = "gradcam",
    layer: str = "layer4",
    class_index: int = FAKE,
    target: str = "log_odds",
) -> np.ndarray:
    """Heat maps (B, H, W) in [0, 1] for a normalised batch ``x`` (B, 3, H, W).

    Needs gradients (a backward pass per batch, several for ScoreCAM). pytorch-grad-cam
    switches the model to eval mode; the previous mode is restored afterwards.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(sorted(METHODS))}")
    try:
        target_layer = model.get_submodule(layer)
    except AttributeError:
        raise ValueError(f"model has no layer {layer!r} (e.g. layer3, layer4, layer4.1.conv2)") from None
    library = importlib.import_module("pytorch_grad_cam")
    if target == "log_odds":
        make_target = LogOddsTarget
    else:
        make_target = importlib.import_module("pytorch_grad_cam.utils.model_targets").ClassifierOutputTarget
    was_training = model.training
    try:
        with getattr(library, METHODS[method])(model=model, target_layers=[target_layer]) as cam:
            maps = cam(input_tensor=x, targets=[make_target(class_index) for _ in range(len(x))])
    finally:
        model.train(was_training)
    if maps.shape != (x.shape[0], x.shape[2], x.shape[3]):
        # pytorch-grad-cam's __exit__ swallows IndexError: check shapes ourselves.
        raise RuntimeError(f"{method} returned maps of shape {maps.shape} for input {tuple(x.shape)}")
    return maps
