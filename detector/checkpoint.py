"""The genscan checkpoint: the only place weights are written and read.

A checkpoint is one ``model.safetensors`` file: the weights as plain tensors, and in the
safetensors header a JSON record (architecture, classes, preprocessing preset and its
parameters, threshold, metrics, data summary). Loading never unpickles: safetensors
cannot carry code, and pickle-based ``.pt`` files are read only through
``torch.load(weights_only=True)``, which refuses anything but tensors and plain
containers.

``model_version`` is a content hash of everything that changes a scan's output
(weights, architecture, classes, preset, threshold), so reports can say which model
scored them and incremental scans can tell when to re-score.

    python -c "from detector.checkpoint import load_checkpoint; print(load_checkpoint('OUT').meta)"
"""

from __future__ import annotations

import hashlib
import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from detector.errors import CheckpointError
from detector.model import ARCHITECTURE, CLASSES, build_model
from detector.presets import Preset, preset_from_dict

CHECKPOINT_FILE = "model.safetensors"
FORMAT_VERSION = 1
_META_KEY = "genscan"
# Magic bytes of formats that can carry code: pickle protocol 2+ and torch's zip archive.
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")


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
        with safe_open(str(f), framework="pt") as sf:
            raw = (sf.metadata() or {}).get(_META_KEY)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{f} is not a valid safetensors checkpoint: {e}") from None
    if raw is None:
        raise CheckpointError(f"{f} is a safetensors file but not a genscan checkpoint (no metadata)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{f}: metadata is not valid JSON: {e}") from None
    if meta.get("architecture") != ARCHITECTURE or meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{f}: unsupported checkpoint (architecture {meta.get('architecture')!r}, "
            f"format {meta.get('format_version')!r}); this genscan reads {ARCHITECTURE} format {FORMAT_VERSION}"
        )
    return meta


def load_checkpoint(path: str | Path, *, device: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild the model and preset from a checkpoint file or training output folder."""
    f = _checked_file(path)
    meta = read_meta(f)
    state = read_state_dict(f)
    expected = meta.get("model_version")
    actual = model_version(state, meta)
    if expected != actual:
        raise CheckpointError(f"{f}: content hash {actual} does not match the recorded {expected}; the file was altered or damaged")
    model = build_model("none", num_classes=len(meta["classes"]))
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{f}: weights do not fit {ARCHITECTURE}: {e}") from None
    model.to(device).eval()
    return Checkpoint(
        model=model,
        preset=preset_from_dict(meta["preset"]),
        threshold=float(meta["threshold"]),
        model_version=actual,
        meta=meta,
    )


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a ``.safetensors`` file, or from a pickle-based ``.pt``/``.pth`` file
    through ``torch.load(weights_only=True)``; a file that carries code is refused."""
    f = Path(path)
    if _is_pickle(f):
        try:
            with f.open("rb") as fh:  # a file object: torch.load must not dispatch on the suffix
                obj = torch.load(fh, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, ValueError) as e:
            raise CheckpointError(
                f"{f} was refused: it is a pickle file that carries code or objects other than "
                f"tensors, and genscan never unpickles those ({type(e).__name__}). "
                f"Save a plain state dict (or .safetensors) instead."
            ) from None
        if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise CheckpointError(f"{f} does not hold a state dict of tensors")
        return {k.removeprefix("module."): v for k, v in obj.items()}
    try:
        return load_file(str(f), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{f} is neither a safetensors file nor a torch state dict: {e}") from None


def _checked_file(path: str | Path) -> Path:
    f = checkpoint_file(path)
    if not f.is_file():
        raise CheckpointError(f"no checkpoint at {f} (expected a training output folder holding {CHECKPOINT_FILE}, or the file itself)")
    if _is_pickle(f):
        raise CheckpointError(
            f"{f} is a pickle-based file; genscan checkpoints are safetensors and pickles are never "
            f"loaded (they can run code). Use a checkpoint written by jobs.train."
        )
    return f


def _is_pickle(f: Path) -> bool:
    """Starts like a pickle or torch zip archive and is not a safetensors file (whose first
    8 bytes are its header's length: a length whose low byte is 0x80 looks like pickle's
    magic, so the safetensors layout is checked first)."""
    if not f.is_file():
        return False
    with f.open("rb") as fh:
        head = fh.read(9)
    if len(head) == 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= f.stat().st_size - 8:
        return False
    return head.startswith(_PICKLE_MAGIC)


def _unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DDP / torch.compile wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or getattr(model, "_orig_mod")
    return model
