"""Batched JPEG decoding on the scoring device (``jobs.scan --use-gpu``): the CPU-side
decode is what bounds a GPU scan (one core decodes a few hundred 512-px JPEGs a second, a
GPU scores thousands), so the GPU decodes its own batches with nvJPEG through
``torchvision.io.decode_jpeg(list, device="cuda")`` and cuts the tiles where they are.

Only what this path decodes exactly like ``detector.inference.prepare`` is taken: baseline
or progressive JPEGs in RGB or greyscale (checked from the header by ``open_image``, which
refuses every format the scan does not list), within ``max_pixels``, for a preset that
cuts tiles at native resolution (``native``; ``baseline`` resizes with PIL). Everything
else, and any picture the device fails to decode, returns None: the caller decodes it on
the CPU, where a bad file becomes its error row. EXIF orientation is applied as PIL's
path applies it. The thumbnail base is shrunk on the device (bilinear, antialiased) and
copied back: it may differ from PIL's by a level or two, the model's tiles do not.

On the CPU (``device="cpu"``) the same code runs with libjpeg-turbo: the tests compare it
with ``prepare`` there, since no test may need a GPU.
"""

from __future__ import annotations

import threading
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from detector.decode import open_image
from detector.presets import NativeCropPreset, Preset
from detector.thumbnail import THUMBNAIL_SIZE

_DEVICE_LOCK = threading.Lock()  # one nvJPEG batch at a time per process (its handles are shared)


def decode_on_device(blobs: list[bytes], preset: Preset, device: str | torch.device, *, max_pixels: int,
                     thumbnail_size: int = THUMBNAIL_SIZE) -> list[tuple[torch.Tensor, np.ndarray, np.ndarray, int, int] | None]:
    """Per blob: (tiles uint8 (n, 3, h, w) on ``device``, boxes int32 (n, 4), thumbnail base
    uint8 (h, w, 3) on the CPU, width, height), or None where the CPU must decode it."""
    if not isinstance(preset, NativeCropPreset):
        return [None] * len(blobs)
    take = [i for i, b in enumerate(blobs) if _decodable(b, max_pixels)]
    images = _decode([blobs[i] for i in take], torch.device(device))
    out: list = [None] * len(blobs)
    for i, image in zip(take, images):
        if image is not None:
            out[i] = _prepare(image, preset, thumbnail_size)
    return out


def _decodable(data: bytes, max_pixels: int) -> bool:
    """A JPEG (not MPO, CMYK or another mode) within the pixel bound, from its header."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with open_image(data) as img:
                return img.format == "JPEG" and img.mode in ("RGB", "L") and 0 < img.width * img.height <= max_pixels
    except Exception:  # noqa: BLE001 (the CPU path names what is wrong with it)
        return False


def _decode(blobs: list[bytes], device: torch.device) -> list[torch.Tensor | None]:
    from torchvision.io import ImageReadMode, decode_jpeg

    if not blobs:
        return []
    data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    kwargs = {"mode": ImageReadMode.RGB, "device": device, "apply_exif_orientation": True}
    with _DEVICE_LOCK:
        try:
            return list(decode_jpeg(data, **kwargs))
        except RuntimeError:  # one bad picture fails the batch: retry one by one
            out = []
            for d in data:
                try:
                    out.append(decode_jpeg(d, **kwargs))
                except RuntimeError:
                    out.append(None)
            return out


def _prepare(image: torch.Tensor, preset: NativeCropPreset, thumbnail_size: int):
    """(3, H, W) uint8 -> what ``detector.inference.prepare`` makes of the same picture."""
    height, width = image.shape[1:]
    boxes = preset.tile_boxes(width, height)
    tiles = torch.stack([image[:, t:b, left:r] for left, t, r, b in boxes.tolist()])
    scale = min(1.0, thumbnail_size / max(width, height))
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    view = image if size == (height, width) else F.interpolate(
        image[None].float(), size=size, mode="bilinear", antialias=True, align_corners=False)[0].round().clamp(0, 255)
    view = view.to(torch.uint8).permute(1, 2, 0).contiguous().cpu().numpy()
    return tiles, boxes, view, width, height
