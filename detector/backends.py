"""Model runtimes for scoring: what runs the network's convolutions (``--runtime``).

Only the trunk runs in the runtime: it returns the last-stage features, and the head, the
tile combination and the closed-form heat map are computed from them in torch
(detector/inference.py), so every runtime yields scores and heat maps from the same
forward pass.

- ``torch``: the reference, and the GPU path. Eager PyTorch, ``channels_last``.
- ``openvino``: Intel's OpenVINO on the CPU, ~3x torch on CPUs with AVX-512 (BF16/VNNI),
  where its default precision is bf16 (BENCHMARKS.md has the measured speed and score
  change; tests/detector/test_backends.py holds it to max |dP(fake)| <= 0.01). The network
  is converted once per model version (in the Scorer actor: never per batch; kept in
  ``cache_dir()`` for later scans) and compiled once per input shape (batch dynamic), the
  compiled models kept in a small LRU.
- ``auto`` (default): openvino when it is installed and the scan runs on the CPU, else torch.

ONNX Runtime was measured at 1.5x torch here against OpenVINO's 3.2x with the same scores
(issue notes), so it is not offered; int8 quantisation moved scores by up to 0.19 and is not
offered either.

    python -c "from detector.backends import available; print(available())"
"""

from __future__ import annotations

import importlib.util
import os
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import torch
from torch import nn

RUNTIMES = ("auto", "torch", "openvino")
COMPILED_SHAPES = 8  # compiled OpenVINO models kept per scorer (one per tile shape seen)

Features = Callable[[torch.Tensor], torch.Tensor]  # normalised (B, 3, H, W) -> (B, C, h, w)


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


def make_features(name: str, model: nn.Module, *, num_threads: int, cache_key: str | None = None) -> Features:
    """The trunk of ``model`` (eval mode, on its device) as a callable in runtime ``name``.
    ``cache_key`` (the model_version) lets a converted network be reused by later scans."""
    if name == "openvino":
        return OpenVINOFeatures(model, num_threads=num_threads, cache_key=cache_key)
    return torch.inference_mode()(model.features)


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


class _Trunk(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x)


class OpenVINOFeatures:
    """The trunk converted to OpenVINO once, compiled per input (H, W) on first use."""

    def __init__(self, model: nn.Module, *, num_threads: int, cache_key: str | None = None):
        import openvino as ov

        self._core = ov.Core()
        self._config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": int(num_threads)}
        cached = cache_dir() / f"{cache_key}.xml" if cache_key else None
        if cached is not None and cached.is_file():
            self._graph = self._core.read_model(str(cached))  # converted by an earlier scan of this model
        else:
            example = torch.zeros(1, 3, 64, 64)
            with torch.no_grad():  # dynamic batch and size in the graph; shapes are fixed at compile time
                self._graph = ov.convert_model(_Trunk(model.cpu().eval()), example_input=example,
                                               input=[(-1, 3, -1, -1)])
            if cached is not None:
                _save(ov, self._graph, cached)
        self._compiled: OrderedDict[tuple[int, int], object] = OrderedDict()

    def _for(self, h: int, w: int):
        key = (h, w)
        if key not in self._compiled:
            graph = self._graph.clone()
            graph.reshape([-1, 3, h, w])  # static spatial size: OpenVINO's fast kernels
            self._compiled[key] = self._core.compile_model(graph, "CPU", self._config)
            if len(self._compiled) > COMPILED_SHAPES:
                self._compiled.popitem(last=False)
        self._compiled.move_to_end(key)
        return self._compiled[key]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        compiled = self._for(x.shape[2], x.shape[3])
        return torch.from_numpy(compiled(x.contiguous().numpy())[0])
