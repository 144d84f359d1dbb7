"""The genscan checkpoint: the only place weights are written and read.

A checkpoint is one ``model.safetensors`` file: the weights as plain tensors, and in the
safetensors header a JSON record (architecture, classes, preprocessing preset and its
parameters, threshold, metrics, data summary). Loading never unpickles: a pickle-based
file is refused (detector/weights.py reads weight files for ``--weights``). Loads from
a path or from bytes (``load_checkpoint_bytes``: a checkpoint fetched from S3 or handed
to a Ray actor never touches a temporary file).

``model_version`` is a content hash of everything that changes a scan's output
(weights, architecture, classes, preset, threshold), so reports can say which model
scored them and incremental scans can tell when to re-score.

    python -c "from detector.checkpoint import load_checkpoint; print(load_checkpoint('OUT').meta)"
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from detector.errors import CheckpointError
from detector.model import CLASSES, ModelSpec, build_model

ARCHITECTURE = "resnet18"  # the family every genscan model belongs to (detector.model)
from detector.presets import Preset, preset_from_dict
from detector.weights import is_pickle, state_dict_from_bytes

CHECKPOINT_FILE = "model.safetensors"
FORMAT_VERSION = 1
_META_KEY = "genscan"
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


@dataclass
class Checkpoint:
    model: nn.Module  # eval mode, on the requested device
    preset: Preset
    threshold: float  # operating threshold on P(fake)
    model_version: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.meta["classes"])


def checkpoint_file(path: str | Path) -> Path:
    """``path`` itself, or ``path/model.safetensors`` when ``path`` is a folder."""
    p = Path(path)
    return p / CHECKPOINT_FILE if p.is_dir() else p


def model_version(state: dict[str, torch.Tensor], meta: dict[str, Any]) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().contiguous().cpu()
        h.update(name.encode())
        h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    scoring = {k: meta[k] for k in ("architecture", "classes", "preset", "threshold")}
    if "model" in meta:  # absent in checkpoints from before detector.model.ModelSpec: their hash stays
        scoring["model"] = meta["model"]
    h.update(json.dumps(scoring, sort_keys=True).encode())
    return "sha256-" + h.hexdigest()[:16]


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    *,
    preset: Preset,
    threshold: float = 0.5,
    metrics: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """Write ``model`` and its metadata to ``path`` (a file, or a folder that gets
    ``model.safetensors``). Returns the ``model_version``."""
    state = {k: v.detach().contiguous().cpu() for k, v in _unwrap(model).state_dict().items()}
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "architecture": ARCHITECTURE,
        "model": getattr(_unwrap(model), "spec", ModelSpec()).to_dict(),
        "classes": list(CLASSES),
        "preset": preset.to_dict(),
        "threshold": float(threshold),
        "metrics": metrics or {},
        "data": data or {},
        **(extra or {}),
    }
    meta["model_version"] = model_version(state, meta)
    target = Path(path)
    if target.suffix != ".safetensors":
        target.mkdir(parents=True, exist_ok=True)
        target = target / CHECKPOINT_FILE
    tmp = target.with_name(target.name + ".tmp")
    save_file(state, str(tmp), metadata={_META_KEY: json.dumps(meta)})
    tmp.replace(target)  # a reader never sees half a file
    return meta["model_version"]


def read_meta(path: str | Path) -> dict[str, Any]:
    """The metadata record alone, without reading the weights."""
    f = _checked_file(path)
    try:
        with f.open("rb") as fh:
            head = fh.read(8)
            header = fh.read(min(int.from_bytes(head, "little"), _MAX_HEADER)) if len(head) == 8 else b""
    except OSError as e:
        raise CheckpointError(f"cannot read {f}: {e.strerror or e}") from None
    return _meta(head + header, source=str(f))


def load_checkpoint(path: str | Path, *, device: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild the model and preset from a checkpoint file or training output folder."""
    f = _checked_file(path)
    return load_checkpoint_bytes(f.read_bytes(), source=str(f), device=device)


def load_checkpoint_bytes(data: bytes, *, source: str = "the checkpoint", device: str | torch.device = "cpu") -> Checkpoint:
    """``load_checkpoint`` for the bytes of a ``model.safetensors`` (e.g. fetched from
    S3 or handed to a Ray actor); ``source`` names them in errors (the user's URI)."""
    if is_pickle(data[:9], len(data)):
        raise CheckpointError(
            f"{source} is a pickle-based file; genscan checkpoints are safetensors and pickles are never "
            f"loaded (they can run code). Use a checkpoint written by jobs.train."
        )
    meta = _meta(data, source=source)
    state = state_dict_from_bytes(data, source=source)
    check_scoring_values(meta, state, source=source)
    expected = meta.get("model_version")
    try:
        actual = model_version(state, meta)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: malformed metadata ({type(e).__name__}: {e})") from None
    if expected != actual:
        raise CheckpointError(f"{source}: content hash {actual} does not match the recorded {expected}; the file was altered or damaged")
    try:
        spec = ModelSpec(**meta.get("model", {}))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: its model is not one this genscan builds ({e})") from None
    model = build_model("none", num_classes=len(meta["classes"]), arch=spec)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{source}: weights do not fit {ARCHITECTURE}: {e}") from None
    try:
        preset = preset_from_dict(meta["preset"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: its preset is not one this genscan knows ({type(e).__name__}: {e})") from None
    model.to(device).eval()
    return Checkpoint(model=model, preset=preset, threshold=float(meta["threshold"]), model_version=actual, meta=meta)


def check_scoring_values(meta: dict[str, Any], state: dict[str, torch.Tensor], *, source: str) -> None:
    """CheckpointError unless what decides a score is sane: the classes this genscan
    knows, a threshold in [0, 1], finite normalisation with std > 0, finite weights.
    (A NaN anywhere gives every image a NaN score, labelled "real"; a threshold of 2
    flags nothing.) Comparisons are written ``not (ok)`` so that NaN fails them."""
    if meta.get("classes") != list(CLASSES):
        raise CheckpointError(f"{source}: classes {meta.get('classes')!r} are not this genscan's {list(CLASSES)}")
    threshold = meta.get("threshold")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not (0.0 <= threshold <= 1.0):
        raise CheckpointError(f"{source}: threshold {threshold!r} is not a probability in [0, 1]")
    preset = meta.get("preset")
    if not isinstance(preset, dict):
        raise CheckpointError(f"{source}: its preset is not a record ({type(preset).__name__})")
    for name in ("mean", "std"):
        values = preset.get(name, [0.5] * 3)  # absent: the preset's default
        if not isinstance(values, list) or len(values) != 3 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            raise CheckpointError(f"{source}: preset {name} {values!r} is not three finite numbers")
        if name == "std" and not all(v > 0 for v in values):
            raise CheckpointError(f"{source}: preset std {values!r} must be positive (it divides)")
    bad = [name for name, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise CheckpointError(f"{source}: {len(bad)} weight tensors hold NaN or infinity, e.g. {bad[0]}")


def _meta(data: bytes, *, source: str) -> dict[str, Any]:
    """The genscan record from the safetensors header at the start of ``data``."""
    size = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    if not 2 <= size <= min(len(data) - 8, _MAX_HEADER):
        raise CheckpointError(f"{source} is not a valid safetensors checkpoint (bad header length)")
    try:
        header = json.loads(data[8:8 + size])
        raw = (header.get("__metadata__") or {}).get(_META_KEY)
    except (ValueError, AttributeError) as e:
        raise CheckpointError(f"{source} is not a valid safetensors checkpoint: {e}") from None
    if raw is None:
        raise CheckpointError(f"{source} is a safetensors file but not a genscan checkpoint (no metadata)")
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, TypeError) as e:
        raise CheckpointError(f"{source}: metadata is not valid JSON: {e}") from None
    if not isinstance(meta, dict) or meta.get("architecture") != ARCHITECTURE or meta.get("format_version") != FORMAT_VERSION:
        got = meta if not isinstance(meta, dict) else (meta.get("architecture"), meta.get("format_version"))
        raise CheckpointError(
            f"{source}: unsupported checkpoint ({got!r}); this genscan reads {ARCHITECTURE} format {FORMAT_VERSION}"
        )
    return meta


def _checked_file(path: str | Path) -> Path:
    f = checkpoint_file(path)
    if not f.is_file():
        raise CheckpointError(f"no checkpoint at {f} (expected a training output folder holding {CHECKPOINT_FILE}, or the file itself)")
    with f.open("rb") as fh:
        if is_pickle(fh.read(9), f.stat().st_size):
            raise CheckpointError(
                f"{f} is a pickle-based file; genscan checkpoints are safetensors and pickles are never "
                f"loaded (they can run code). Use a checkpoint written by jobs.train."
            )
    return f


def _unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DDP / torch.compile wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or getattr(model, "_orig_mod")
    return model
