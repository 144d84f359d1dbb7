"""The scan's first stage: listing rows in, decoded model inputs out (CPU tasks).

``fetch_and_prepare`` never raises for a bad object: a fetch or decode failure is the
row's ``error`` and flows through the scorer into the report. Between this stage and
``jobs.scan.scorer.Scorer`` a batch is a dict of numpy arrays::

    uri, etag        object (str / None)
    size_bytes       int64 (B,)            -1 when unknown
    tiles            object (B,)           raw uint8 (n, 3, h, w) model inputs (bytes), b"" on error
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
) -> dict[str, np.ndarray]:
    """Listing rows (uri, etag, size_bytes) -> decoded model inputs (see the module doc).

    Long because it is one stage: the output arrays, then the per-object work that must
    turn every failure into that object's error, run in a thread pool."""
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

    def one(i: int) -> None:
        uri, size = out["uri"][i], int(out["size_bytes"][i])
        if size > max_bytes:
            out["error"][i] = f"fetch: object is {size:,} bytes, over --max-bytes {max_bytes:,}; not downloaded"
            return
        try:
            data = storage.read_bytes(uri, max_bytes=max_bytes)
        except Exception as e:  # noqa: BLE001 (any failure is this object's error row)
            out["error"][i] = f"fetch: {type(e).__name__}: {e}"
            return
        out["size_bytes"][i] = len(data) if size < 0 else size
        try:
            image = prepare(data, p, max_pixels=max_pixels)
        except ImageDecodeError as e:
            out["error"][i] = f"decode: {e}"
            return
        except Exception as e:  # noqa: BLE001
            out["error"][i] = f"decode: {type(e).__name__}: {e}"
            return
        out["tiles"][i] = image.tiles.numpy().tobytes()
        out["tiles_shape"][i] = image.tiles.shape
        out["boxes"][i] = image.boxes.astype(np.int32).tobytes()
        if keep_view:
            out["view"][i] = np.ascontiguousarray(image.view).tobytes()
            out["view_hw"][i] = image.view.shape[:2]
        out["width"][i], out["height"][i], out["format"][i] = image.width, image.height, image.format

    if n:
        with ThreadPoolExecutor(max_workers=min(FETCH_THREADS, n)) as pool:
            list(pool.map(one, range(n)))
    return out


