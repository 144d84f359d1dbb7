"""The scan's two Ray Data stages: fetch + decode (CPU tasks) and scoring (model actors).

``fetch_and_prepare`` turns listing rows into model inputs; ``Scorer`` turns those into
report rows (``jobs.schema.FILE_SCHEMA``). Neither ever raises for a bad object: a
fetch or decode failure is a row with ``error`` set that flows through to the report.

Between the stages a batch is a dict of numpy arrays::

    uri, etag        object (str / None)
    size_bytes       int64 (B,)            -1 when unknown
    pixels           uint8 (B, 3, S, S)    model input before normalisation; zeros on error
    view             object (B,)           raw uint8 h x w x 3 thumbnail base (bytes), b"" if unused
    view_hw          int32 (B, 2)          its height and width
    width, height    int32 (B,)            decoded size; 0 on error
    format           object (B,)           "" on error
    error            object (B,)           "" when the image was decoded

    python -c "from jobs.scoring import Scorer; help(Scorer)"
"""

from __future__ import annotations

import os
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from detector.errors import ImageDecodeError
from detector.inference import Detector, prepare
from detector.presets import preset_from_dict
from detector.thumbnail import render_thumbnail
from jobs import storage
from jobs.schema import FILE_SCHEMA

# Reads overlap on S3 (latency-bound); PIL releases the GIL while decoding.
FETCH_THREADS = 8
# Fetch tasks ask for half a CPU: fetching is partly waiting on storage, and resources
# that differ from the actors' keep Ray Data from fusing decoding into the model actors
# (which would leave spare cores idle while an actor decodes).
FETCH_CPUS = 0.5
THUMBNAIL_MODES = ("all", "flagged", "none")


def score_dataset(
    ds: Any,
    *,
    checkpoint: Any,
    preset: dict[str, Any],
    threshold: float,
    thumbnails: str,
    batch_size: int,
    concurrency: int,
    cpus_per_scorer: float,
    use_gpu: bool,
    max_pixels: int,
    max_bytes: int,
) -> Any:
    """Listing rows (a Ray Dataset of uri, etag, size_bytes) -> report rows (FILE_SCHEMA),
    one per input row: fetch/decode tasks, then a fixed pool of ``concurrency`` Scorer
    actors. ``checkpoint``: an ObjectRef to the checkpoint file's bytes."""
    import ray

    ds = ds.map_batches(
        fetch_and_prepare,
        batch_size=batch_size,
        batch_format="numpy",
        num_cpus=FETCH_CPUS,
        fn_kwargs={"preset": preset, "max_pixels": max_pixels, "max_bytes": max_bytes,
                   "keep_view": thumbnails != "none"},
    )
    return ds.map_batches(
        Scorer,
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=concurrency),  # `concurrency=` is deprecated in Ray 2.51+
        num_cpus=cpus_per_scorer,
        num_gpus=1 if use_gpu else 0,
        fn_constructor_kwargs={"checkpoint": checkpoint, "threshold": threshold, "thumbnails": thumbnails,
                               "use_gpu": use_gpu},
    )


def fetch_and_prepare(
    batch: dict[str, np.ndarray],
    *,
    preset: dict[str, Any],
    max_pixels: int,
    max_bytes: int,
    keep_view: bool,
) -> dict[str, np.ndarray]:
    """Listing rows (uri, etag, size_bytes) -> decoded model inputs (see the module doc)."""
    p = preset_from_dict(preset)
    s = p.input_size  # prepare()'s output side
    n = len(batch["uri"])
    out: dict[str, np.ndarray] = {
        "uri": batch["uri"],
        "etag": batch["etag"],
        "size_bytes": np.array([-1 if v is None or v != v else int(v) for v in batch["size_bytes"]], np.int64),
        "pixels": np.zeros((n, 3, s, s), np.uint8),
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
        out["pixels"][i] = image.pixels.numpy()
        if keep_view:
            out["view"][i] = np.ascontiguousarray(image.view).tobytes()
            out["view_hw"][i] = image.view.shape[:2]
        out["width"][i], out["height"][i], out["format"][i] = image.width, image.height, image.format

    if n:
        with ThreadPoolExecutor(max_workers=min(FETCH_THREADS, n)) as pool:
            list(pool.map(one, range(n)))
    return out


class Scorer:
    """A Ray Data actor holding the detector: decoded batches -> report rows (Arrow).

    Args:
        checkpoint: the checkpoint file's bytes, or a Ray ObjectRef to them (the driver
            puts them in the object store once, so workers need no access to --model).
        threshold: flag images with ``score >= threshold``; None: the checkpoint's.
        thumbnails: "all", "flagged" or "none": which rows get a heat-map thumbnail.
        use_gpu: score on CUDA.
        num_threads: torch CPU threads; default the CPUs Ray gave this actor.
    """

    def __init__(
        self,
        checkpoint: Any,
        *,
        threshold: float | None = None,
        thumbnails: str = "all",
        use_gpu: bool = False,
        num_threads: int | None = None,
    ):
        if thumbnails not in THUMBNAIL_MODES:
            raise ValueError(f"thumbnails must be one of {THUMBNAIL_MODES}, got {thumbnails!r}")
        if not isinstance(checkpoint, (bytes, bytearray, memoryview)):
            import ray

            checkpoint = ray.get(checkpoint)
        torch.set_num_threads(num_threads or _assigned_cpus())
        with tempfile.TemporaryDirectory(prefix="genscan-model-") as tmp:
            path = os.path.join(tmp, "model.safetensors")
            with open(path, "wb") as f:
                f.write(checkpoint)
            self.detector = Detector.from_path(path, device="cuda" if use_gpu else "cpu")
        self.threshold = float(self.detector.threshold if threshold is None else threshold)
        self.thumbnails = thumbnails

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        n = len(batch["uri"])
        error = np.array([e or None for e in batch["error"]], dtype=object)
        ok = np.array([e is None for e in error], dtype=bool)
        idx = np.flatnonzero(ok)
        score = np.full(n, np.nan, np.float32)
        cams: list[np.ndarray | None] = [None] * n
        thumbs: list[bytes | None] = [None] * n
        if idx.size:
            pixels = batch["pixels"] if idx.size == n else batch["pixels"][idx]  # (b, 3, S, S)
            with warnings.catch_warnings():  # Ray hands out read-only arrays; torch only reads them
                warnings.simplefilter("ignore", UserWarning)
                s = self.detector.score(torch.from_numpy(pixels))
            prob, cam = s.prob_fake.numpy(), s.cam.numpy()  # (b,), (b, h, w)
            score[idx] = prob
            for j, i in enumerate(idx):
                cams[i] = cam[j].reshape(-1)
                if self.thumbnails == "all" or (self.thumbnails == "flagged" and prob[j] >= self.threshold):
                    h, w = batch["view_hw"][i]
                    view = np.frombuffer(batch["view"][i], np.uint8).reshape(h, w, 3)
                    thumbs[i] = render_thumbnail(view, cam[j])
        return self._table(batch, ok, score, cams, thumbs, error)

    def _table(self, batch, ok, score, cams, thumbs, error) -> pa.Table:
        n, bad = len(ok), ~ok
        flagged = score >= self.threshold
        size = np.asarray(batch["size_bytes"], np.int64)
        label = np.where(flagged, "fake", "real").astype(object)
        label[bad] = None
        fmt = np.array(batch["format"], dtype=object)
        fmt[bad] = None
        cam_lengths = np.array([0 if c is None else c.size for c in cams], np.int32)
        cam_values = np.concatenate([c for c in cams if c is not None] or [np.zeros(0, np.float32)])
        cam_offsets = np.concatenate([[0], np.cumsum(cam_lengths)]).astype(np.int32)
        now = datetime.now(timezone.utc)
        columns = {
            "uri": pa.array(batch["uri"], pa.string()),
            # a block whose etags are all null (a manifest without them) arrives as float NaN
            "etag": pa.array([e if isinstance(e, str) else None for e in batch["etag"]], pa.string()),
            "size_bytes": pa.array(size, pa.int64(), mask=size < 0),
            "width": pa.array(batch["width"], pa.int32(), mask=bad),
            "height": pa.array(batch["height"], pa.int32(), mask=bad),
            "format": pa.array(fmt, pa.string()),
            "label": pa.array(label, pa.string()),
            "score": pa.array(score, pa.float32(), mask=bad),
            "flagged": pa.array(flagged, pa.bool_(), mask=bad),
            "threshold": pa.array(np.full(n, self.threshold, np.float32)),
            "thumbnail": pa.array(thumbs, pa.binary()),
            "cam": pa.ListArray.from_arrays(pa.array(cam_offsets), pa.array(cam_values, pa.float32()),
                                            mask=pa.array(bad)),
            "model_version": pa.array([self.detector.model_version] * n, pa.string()),
            "error": pa.array(error, pa.string()),
            "scanned_at": pa.array([now] * n, pa.timestamp("us", tz="UTC")),
        }
        return pa.table(columns, schema=FILE_SCHEMA)


def _assigned_cpus() -> int:
    """Whole CPUs Ray assigned to this actor (1 outside Ray)."""
    try:
        import ray

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    except Exception:  # noqa: BLE001 (not in a Ray worker)
        cpus = 1
    return max(1, int(round(cpus)))
