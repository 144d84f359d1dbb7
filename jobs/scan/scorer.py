"""The scan's scoring stage: a model actor turning decoded batches (``jobs.scan.fetch``)
into report rows (``jobs.report.schema.FILE_SCHEMA``). An image that failed to fetch or
decode passes through as a row with ``error`` set.

    python -c "from jobs.scan.scorer import Scorer; help(Scorer)"
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from detector.checkpoint import load_checkpoint_bytes
from detector.inference import Detector
from detector.thumbnail import render_thumbnail
from jobs.report.schema import FILE_SCHEMA, decide
from jobs.scan.fetch import fetch_and_prepare

THUMBNAIL_MODES = ("all", "flagged", "none")


class Scorer:
    """A Ray Data actor holding the detector: decoded batches -> report rows (Arrow).

    Args:
        checkpoint: the checkpoint file's bytes, or a Ray ObjectRef to them (the driver
            puts them in the object store once, so workers need no access to --model).
        threshold: flag images with ``score >= threshold``; None: the checkpoint's.
        thumbnails: "all", "flagged" or "none": which rows get a heat-map thumbnail.
        use_gpu: score on CUDA.
        num_threads: torch CPU threads; default the CPUs Ray gave this actor.
        runtime: what runs the network (detector.backends): auto, torch or openvino.
    """

    def __init__(
        self,
        checkpoint: Any,
        *,
        threshold: float | None = None,
        thumbnails: str = "all",
        use_gpu: bool = False,
        num_threads: int | None = None,
        runtime: str = "auto",
    ):
        if thumbnails not in THUMBNAIL_MODES:
            raise ValueError(f"thumbnails must be one of {THUMBNAIL_MODES}, got {thumbnails!r}")
        if not isinstance(checkpoint, (bytes, bytearray, memoryview)):
            import ray

            checkpoint = ray.get(checkpoint)
        threads = num_threads or _assigned_cpus()
        torch.set_num_threads(threads)
        self.detector = Detector(load_checkpoint_bytes(bytes(checkpoint)), device="cuda" if use_gpu else "cpu",
                                 runtime=runtime, num_threads=threads)  # converted here, once per actor
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
            images = [(_tiles(batch, i), np.frombuffer(batch["boxes"][i], np.int32).reshape(-1, 4),
                       int(batch["width"][i]), int(batch["height"][i])) for i in idx]
            scores = self.detector.score_tiles(images)
            for s, i in zip(scores, idx):
                score[i], cams[i] = s.prob_fake, s.cam
                if self.thumbnails == "all" or (self.thumbnails == "flagged" and s.prob_fake >= self.threshold):
                    h, w = batch["view_hw"][i]
                    view = np.frombuffer(batch["view"][i], np.uint8).reshape(h, w, 3)
                    thumbs[i] = render_thumbnail(view, s.cam)
        return self._table(batch, ok, score, cams, thumbs, error)

    def _table(self, batch, ok, score, cams, thumbs, error) -> pa.Table:
        n, bad = len(ok), ~ok
        flagged, label = decide(score, self.threshold)
        size = np.asarray(batch["size_bytes"], np.int64)
        label[bad] = None
        fmt = np.array(batch["format"], dtype=object)
        fmt[bad] = None
        cam_lengths = np.array([0 if c is None else c.size for c in cams], np.int32)
        cam_width = np.array([0 if c is None else c.shape[1] for c in cams], np.int32)
        cam_values = np.concatenate([c.reshape(-1) for c in cams if c is not None] or [np.zeros(0, np.float32)])
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
            "cam_width": pa.array(cam_width, pa.int32(), mask=bad),
            "model_version": pa.array([self.detector.model_version] * n, pa.string()),
            "error": pa.array(error, pa.string()),
            "scanned_at": pa.array([now] * n, pa.timestamp("us", tz="UTC")),
        }
        return pa.table(columns, schema=FILE_SCHEMA)


class FetchScorer(Scorer):
    """A Scorer that fetches and decodes its own batches (listing rows in, report rows out).

    Ray Data runs it as a threaded actor with two calls at once: while one batch is in the
    model (OpenVINO and torch release the GIL), the other is read and decoded (PIL too),
    so one actor keeps the cores busy with no decoded pixels crossing the object store
    (~0.8 MB per 512-px picture) and no separate fetch workers to start. With OpenVINO the
    two calls score at the same time too (each has its own requests on the runtime's
    single-threaded streams: detector.backends); torch's model part is serialised by a
    lock, as two calls would each start all its threads.

    With ``use_gpu`` the JPEGs of each batch are decoded on the GPU (nvJPEG, batched;
    detector.device_decode), the rest on the CPU threads.

    Args: those of ``Scorer``, plus ``preset``, ``max_pixels`` and ``max_bytes`` for
    ``jobs.scan.fetch.fetch_and_prepare``.
    """

    def __init__(self, checkpoint: Any, *, preset: dict[str, Any], max_pixels: int, max_bytes: int, **kwargs: Any):
        super().__init__(checkpoint, **kwargs)
        self._fetch = {"preset": preset, "max_pixels": max_pixels, "max_bytes": max_bytes,
                       "keep_view": self.thumbnails != "none",
                       "device": "cuda" if kwargs.get("use_gpu") else None}  # GPU scans decode JPEGs there
        self._model_lock = threading.Lock() if self.detector.runtime != "openvino" else contextlib.nullcontext()

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        prepared = fetch_and_prepare(batch, **self._fetch)
        with self._model_lock:
            return super().__call__(prepared)


def _tiles(batch: dict[str, np.ndarray], i: int) -> torch.Tensor:
    """Row ``i``'s uint8 tiles (n, 3, h, w), without copying Ray's read-only buffer."""
    if isinstance(batch["tiles"][i], torch.Tensor):  # decoded on the scoring device (FetchScorer, GPU)
        return batch["tiles"][i]
    with warnings.catch_warnings():  # torch warns about read-only arrays; it only reads them
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.frombuffer(batch["tiles"][i], np.uint8).reshape(tuple(batch["tiles_shape"][i])))


def _assigned_cpus() -> int:
    """Whole CPUs Ray assigned to this actor (1 outside Ray)."""
    try:
        import ray

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    except Exception:  # noqa: BLE001 (not in a Ray worker)
        cpus = 1
    return max(1, int(round(cpus)))
