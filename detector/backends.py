"""Model runtimes for scoring: what runs the network's convolutions (``--runtime``).

One graph runs in the runtime (``ScoringGraph``): uint8 tiles in, normalisation, the trunk,
global average pooling and the closed-form heat map's channel sum ``sum_k w_k A_k``
(detector/cam.py), so scores and heat maps come from the same forward pass and only
C + h*w numbers per tile come back, not the C*h*w feature maps (0.5M floats for a 512-px
tile: copying, pooling and summing those in torch cost as much as the forward pass). The
head, the tile combination and the heat map's scaling stay in torch (detector/inference.py).

- ``torch``: the reference, and the GPU path. Eager PyTorch, ``channels_last``.
- ``openvino``: Intel's OpenVINO on the CPU, ~3x torch on CPUs with AVX-512 (BF16/VNNI),
  where its default precision is bf16 (BENCHMARKS.md has the measured speed and score
  change; tests/detector/test_backends.py holds it to max |dP(fake)| <= 0.01). The network
  is converted once per model version (in the Scorer actor: never per batch; kept in
  ``cache_dir()`` for later scans) and compiled once per input shape (batch dynamic), the
  compiled models kept in a small LRU. It runs as one single-threaded stream per CPU, each
  batch split across the streams: on 2 shared cores that beat one 2-thread stream by 1.3x
  alone and 1.4x beside a decoding thread (BENCHMARKS.md), because a multi-threaded stream
  waits at every layer for its slowest thread, and a core busy decoding makes one slow.
- ``auto`` (default): openvino when it is installed and the scan runs on the CPU, else torch.

ONNX Runtime was measured at 1.5x torch here against OpenVINO's 3.2x with the same scores
(issue notes), so it is not offered; int8 quantisation moved scores by up to 0.19 and is not
offered either.

    python -c "from detector.backends import available; print(available())"
"""

from __future__ import annotations

import importlib.util
import os
import threading
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from detector.cam import cam_weights
from detector.model import FAKE, npr_residual
from detector.presets import Preset

RUNTIMES = ("auto", "torch", "openvino")
COMPILED_SHAPES = 8  # compiled OpenVINO models kept per scorer (one per tile shape seen)

GRAPH_VERSION = "g2"  # part of the conversion cache's key: bump when ScoringGraph changes
# uint8 tiles (B, 3, H, W) -> (pooled last-stage features (B, C), raw heat maps (B, h, w)), float32
Features = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def available() -> tuple[str, ...]:
    """The runtimes this environment can run."""
    return ("torch",) + (("openvino",) if importlib.util.find_spec("openvino") else ())


def resolve(name: str, *, use_gpu: bool) -> str:
    """``auto`` resolved, and a clear error for a runtime that cannot run here."""
    if name not in RUNTIMES:
        raise ValueError(f"--runtime must be one of {', '.join(RUNTIMES)}, got {name!r}")
    if name == "auto":
        return "openvino" if "openvino" in available() and not use_gpu else "torch"
    if name == "openvino" and use_gpu:
        raise ValueError("--runtime openvino runs on the CPU; use --runtime torch (or auto) with --use-gpu")
    if name not in available():
        raise ValueError(f"--runtime {name} is not installed here (pip install {name}); use --runtime torch")
    return name


def make_features(name: str, model: nn.Module, preset: Preset, *, num_threads: int, cache_key: str | None = None,
                  memory_format: torch.memory_format = torch.contiguous_format) -> Features:
    """``ScoringGraph`` of ``model`` (eval mode, on its device) and ``preset``'s normalisation
    as a callable in runtime ``name``. ``cache_key`` (the model_version) lets a converted
    network be reused by later scans."""
    if name == "openvino":
        return OpenVINOFeatures(ScoringGraph(model.cpu(), preset), num_threads=num_threads, cache_key=cache_key)
    graph = ScoringGraph(model, preset, memory_format=memory_format)
    return torch.inference_mode()(graph.forward)


def cache_dir() -> Path:
    """Where converted networks are kept between scans: $GENSCAN_CACHE, else ~/.cache/genscan."""
    return Path(os.environ.get("GENSCAN_CACHE") or Path.home() / ".cache" / "genscan") / "openvino"


def _save(ov, graph, path: Path) -> None:
    """Write the IR (.xml + .bin) under temporary names, then rename: a scan running at the
    same time reads a whole file or none. A cache that cannot be written is skipped."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.xml")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        ov.save_model(graph, str(tmp), compress_to_fp16=False)
        os.replace(tmp.with_suffix(".bin"), path.with_suffix(".bin"))
        os.replace(tmp, path)
    except OSError:
        pass
    finally:
        for leftover in (tmp, tmp.with_suffix(".bin")):
            leftover.unlink(missing_ok=True)


class ScoringGraph(nn.Module):
    """uint8 tiles (B, 3, H, W) -> (GAP of the last-stage features (B, C), the raw heat maps
    ``sum_k w_k A_k`` (B, h, w)): what every runtime runs (the module doc says why)."""

    def __init__(self, model: nn.Module, preset: Preset, *, memory_format: torch.memory_format = torch.contiguous_format):
        super().__init__()
        self.model = model
        self.memory_format = memory_format
        weights = cam_weights(model, FAKE).detach().float()
        self.register_buffer("weights", weights.to(model.fc.weight.device), persistent=False)
        self.register_buffer("mean", torch.tensor(preset.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(preset.std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        if getattr(self.model, "spec", None) is not None and self.model.spec.input == "npr":
            # the residual of the raw 0-255 values, then scaled: equal to the residual of the
            # normalised input (the mean cancels), but exact in bf16 (integers up to 255),
            # where subtracting normalised neighbours would cancel most of their precision
            x = (npr_residual(x.float()) / (255.0 * std)).contiguous(memory_format=self.memory_format)
            a = self.model.trunk(x).float()
        else:
            x = ((x.float() / 255.0 - mean) / std).contiguous(memory_format=self.memory_format)
            a = self.model.features(x).float()
        return a.mean(dim=(2, 3)), torch.einsum("bchw,c->bhw", a, self.weights.to(a.device))


_START_LOCK = threading.Lock()


class OpenVINOFeatures:
    """A ``ScoringGraph`` converted to OpenVINO once, compiled per input (H, W) on first use.

    Compiled with one single-threaded stream per thread (``num_threads`` streams); a call
    splits its batch over the streams and waits for all. A call takes a set of infer
    requests no other call is using (from an idle pool, or new), so concurrent calls (the
    FetchScorer's two) run at once: their requests queue on the same streams.

    The requests are held by this object, not in thread-local storage: a Ray threaded
    actor's worker threads lose their Python thread state while the process exits, and
    OpenVINO objects freed with it crashed every Ray Data scan's scoring actor on the way
    out (SIGSEGV in tstate_delete_common, after the report was written)."""

    def __init__(self, graph: ScoringGraph, *, num_threads: int, cache_key: str | None = None):
        import openvino as ov

        self._core = ov.Core()
        self.streams = max(1, int(num_threads))
        self._config = {"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": self.streams,
                        "INFERENCE_NUM_THREADS": self.streams}
        cached = cache_dir() / f"{cache_key}-{GRAPH_VERSION}.xml" if cache_key else None
        if cached is not None and cached.is_file():
            self._graph = self._core.read_model(str(cached))  # converted by an earlier scan of this model
        else:
            example = torch.zeros(1, 3, 64, 64, dtype=torch.uint8)
            with torch.no_grad():  # dynamic batch and size in the graph; shapes are fixed at compile time
                self._graph = ov.convert_model(graph.eval(), example_input=example,
                                               input=[((-1, 3, -1, -1), ov.Type.u8)])
            if cached is not None:
                _save(ov, self._graph, cached)
        self._compiled: OrderedDict[tuple[int, int], object] = OrderedDict()
        self._lock = threading.Lock()
        self._idle: dict[tuple[int, int], list[tuple[object, list]]] = {}  # (h, w) -> [(compiled, requests)], under _lock

    def _for(self, h: int, w: int):
        """The model compiled for (h, w); the caller holds ``_lock``."""
        key = (h, w)
        if key not in self._compiled:
            graph = self._graph.clone()
            graph.reshape([-1, 3, h, w])  # static spatial size: OpenVINO's fast kernels
            self._compiled[key] = self._core.compile_model(graph, "CPU", self._config)
            if len(self._compiled) > COMPILED_SHAPES:
                old, _ = self._compiled.popitem(last=False)
                self._idle.pop(old, None)
        self._compiled.move_to_end(key)
        return self._compiled[key]

    def _take(self, h: int, w: int) -> tuple[object, list]:
        """A set of ``streams`` infer requests for (h, w) that no other call is using."""
        with self._lock:
            compiled = self._for(h, w)
            idle = self._idle.setdefault((h, w), [])
            while idle:
                held = idle.pop()
                if held[0] is compiled:  # not recompiled (LRU) since
                    return held
        return compiled, [compiled.create_infer_request() for _ in range(self.streams)]

    def _give_back(self, h: int, w: int, held: tuple[object, list]) -> None:
        with self._lock:
            if self._compiled.get((h, w)) is held[0]:
                self._idle.setdefault((h, w), []).append(held)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = x.shape[2], x.shape[3]
        held = self._take(h, w)
        try:
            return self._run(held[1], x)
        finally:
            self._give_back(h, w, held)

    def _run(self, requests: list, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        array = x.contiguous().numpy()
        parts = [p for p in np.array_split(array, max(1, min(len(requests), len(array)))) if len(p)]
        # Starting is serialised across threads: the first tensor.shape set in pyopenvino runs a C++
        # static initialiser that deadlocked two threads starting at once (both in __cxa_guard_acquire,
        # a CI run of test_scan_s3). Starting only copies the input in; the inferences still overlap.
        with _START_LOCK:
            for request, part in zip(requests, parts):
                request.start_async(part)
        outs = []
        for request in requests[:len(parts)]:
            request.wait()
            # the request's output buffers are reused by its next call: copy them out
            outs.append([request.get_output_tensor(i).data.copy() for i in range(2)])
        return tuple(torch.from_numpy(np.concatenate([o[i] for o in outs])) for i in range(2))
