"""The scan's first stage: listing rows in, decoded model inputs out (CPU tasks).

``fetch_and_prepare`` never raises for a bad object: a fetch or decode failure is the
row's ``error`` and flows through the scorer into the report. Between this stage and
``jobs.scan.scorer.Scorer`` a batch is a dict of numpy arrays::

    uri, etag        object (str / None)
    size_bytes       int64 (B,)            -1 when unknown
    tiles            object (B,)           raw uint8 (n, 3, h, w) model inputs (bytes; a tensor on the
                                           scoring device when it decoded them), b"" on error
    tiles_shape      int32 (B, 4)          their shape (n, 3, h, w)
    boxes            object (B,)           raw int32 (n, 4) tile boxes in the picture (bytes)
    view             object (B,)           raw uint8 h x w x 3 thumbnail base (bytes), b"" if unused
    view_hw          int32 (B, 2)          its height and width
    width, height    int32 (B,)            decoded size; 0 on error
    format           object (B,)           "" on error
    error            object (B,)           "" when the image was decoded

    python -c "from jobs.scan.fetch import fetch_and_prepare; help(fetch_and_prepare)"
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from detector.device_decode import decode_on_device
from detector.errors import ImageDecodeError
from detector.inference import prepare
from detector.presets import preset_from_dict
from jobs import storage

# Reads overlap on S3 (latency-bound); PIL releases the GIL while decoding.
FETCH_THREADS = 8


def fetch_and_prepare(
    batch: dict[str, np.ndarray],
    *,
    preset: dict[str, Any],
    max_pixels: int,
    max_bytes: int,
    keep_view: bool,
    device: str | None = None,
) -> dict[str, np.ndarray]:
    """Listing rows (uri, etag, size_bytes) -> decoded model inputs (see the module doc).

    ``device`` (a GPU scan's scoring actor): JPEGs are decoded there in one batch
    (detector.device_decode) and their ``tiles`` are tensors on it, not bytes; the rest,
    and what the device cannot decode, are decoded on the CPU as usual."""
    p = preset_from_dict(preset)
    n = len(batch["uri"])
    out: dict[str, np.ndarray] = {
        "uri": batch["uri"],
        "etag": batch["etag"],
        "size_bytes": np.array([-1 if v is None or v != v else int(v) for v in batch["size_bytes"]], np.int64),
        "tiles": np.full(n, b"", dtype=object),
        "tiles_shape": np.zeros((n, 4), np.int32),
        "boxes": np.full(n, b"", dtype=object),
        "view": np.full(n, b"", dtype=object),
        "view_hw": np.zeros((n, 2), np.int32),
        "width": np.zeros(n, np.int32),
        "height": np.zeros(n, np.int32),
        "format": np.full(n, "", dtype=object),
        "error": np.full(n, "", dtype=object),
    }
    data: list[bytes | None] = [None] * n

    def read(i: int) -> None:
        uri, size = out["uri"][i], int(out["size_bytes"][i])
        if size > max_bytes:
            out["error"][i] = f"fetch: object is {size:,} bytes, over --max-bytes {max_bytes:,}; not downloaded"
            return
        try:
            data[i] = storage.read_bytes(uri, max_bytes=max_bytes)
        except Exception as e:  # noqa: BLE001 (any failure is this object's error row)
            out["error"][i] = f"fetch: {type(e).__name__}: {e}"
            return
        out["size_bytes"][i] = len(data[i]) if size < 0 else size

    def on_cpu(i: int) -> None:
        try:
            image = prepare(data[i], p, max_pixels=max_pixels)
        except ImageDecodeError as e:
            out["error"][i] = f"decode: {e}"
            return
        except Exception as e:  # noqa: BLE001
            out["error"][i] = f"decode: {type(e).__name__}: {e}"
            return
        _put(out, i, image.tiles.numpy().tobytes(), image.tiles.shape, image.boxes, image.view if keep_view else None,
             image.width, image.height, image.format)

    if not n:
        return out
    with ThreadPoolExecutor(max_workers=min(FETCH_THREADS, n)) as pool:
        if device is None:
            list(pool.map(lambda i: (read(i), data[i] is not None and on_cpu(i)), range(n)))
            return out
        list(pool.map(read, range(n)))
        fetched = [i for i in range(n) if data[i] is not None]
        decoded = decode_on_device([data[i] for i in fetched], p, device, max_pixels=max_pixels)
        for i, d in zip(fetched, decoded):
            if d is not None:
                tiles, boxes, view, width, height = d
                _put(out, i, tiles, tiles.shape, boxes, view if keep_view else None, width, height, "JPEG")
        list(pool.map(on_cpu, [i for i, d in zip(fetched, decoded) if d is None]))
    return out


def _put(out: dict[str, np.ndarray], i: int, tiles: Any, shape: Any, boxes: np.ndarray, view: np.ndarray | None,
         width: int, height: int, fmt: str) -> None:
    """Row ``i``'s decoded picture into the batch arrays (tiles: bytes, or a device tensor)."""
    out["tiles"][i] = tiles
    out["tiles_shape"][i] = tuple(shape)
    out["boxes"][i] = boxes.astype(np.int32).tobytes()
    if view is not None:
        out["view"][i] = np.ascontiguousarray(view).tobytes()
        out["view_hw"][i] = view.shape[:2]
    out["width"][i], out["height"][i], out["format"][i] = width, height, fmt
