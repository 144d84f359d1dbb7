"""Thumbnails for moderators: the picture with its heat map blended in, as JPEG bytes.

The heat map covers the whole picture (detector.inference); the thumbnail shows the
picture with its aspect ratio kept, longest side ``size`` pixels.

    python -c "from detector.thumbnail import render_thumbnail; help(render_thumbnail)"
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from PIL import Image

THUMBNAIL_SIZE = 224
THUMBNAIL_QUALITY = 80


def thumbnail_view(image: Image.Image, box: tuple[int, int, int, int], size: int = THUMBNAIL_SIZE) -> np.ndarray:
    """The part of ``image`` inside ``box``, shrunk so its longest side is at most ``size``:
    uint8 (h, w, 3). Computed once at decode time so the full image need not travel."""
    region = image.crop(box)
    region.thumbnail((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(region.convert("RGB"))


def render_thumbnail(
    view: np.ndarray,
    cam: np.ndarray | torch.Tensor,
    *,
    alpha: float = 0.45,
    quality: int = THUMBNAIL_QUALITY,
) -> bytes:
    """Blend ``cam`` ((h, w) in [0, 1], any grid size) over ``view`` (uint8 (H, W, 3)) with
    the JET colour map, and encode as JPEG. Returns the JPEG bytes."""
    if view.ndim != 3 or view.shape[2] != 3 or view.dtype != np.uint8:
        raise ValueError(f"view must be uint8 (H, W, 3), got {view.dtype} {view.shape}")
    cam = cam.detach().cpu().numpy() if isinstance(cam, torch.Tensor) else np.asarray(cam)
    h, w = view.shape[:2]
    heat = cv2.resize(cam.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    heat = np.uint8(255 * np.clip(heat, 0.0, 1.0))
    colour = cv2.cvtColor(cv2.applyColorMap(heat, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    blended = cv2.addWeighted(colour, alpha, view, 1.0 - alpha, 0.0)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(blended, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding of the thumbnail failed")
    return buf.tobytes()
