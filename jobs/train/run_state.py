"""A training run's folder: what Ray Train keeps in it, and what a run remembers between
epochs, restarts and re-runs. One home for the layout of ``--output/ray-train/``::

    ray-train/genscan-run.json                       # the data and recipe (claim_run_dir)
    ray-train/checkpoint_epoch_NNNN/model.safetensors  # detector.checkpoint: weights, preset, threshold
    ray-train/checkpoint_epoch_NNNN/training_weights.safetensors  # --ema-decay only: the raw weights
    ray-train/checkpoint_epoch_NNNN/optimizer.pt       # optimizer state (tensors only)
    ray-train/checkpoint_epoch_NNNN/state.json         # TrainState: history, skipped files, resumes

With ``--ema-decay``, ``model.safetensors`` holds the averaged weights (validated and
published) and ``training_weights.safetensors`` the weights the optimizer steps, which a
resumed run continues from. Everything but the optimizer state is plain JSON or safetensors, so reading it never
runs code; ``optimizer.pt`` is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from detector.checkpoint import load_checkpoint, save_checkpoint
from detector.presets import Preset
from jobs import storage
from jobs.metrics import json_safe
from jobs.train.config import TrainConfig
from jobs.train.data import LabelledData

RUN_DIR = "ray-train"  # Ray Train's run folder inside --output; a stable name makes re-runs resume
RUN_SPEC_FILE = "genscan-run.json"
STATE_FILE = "state.json"
OPTIMIZER_FILE = "optimizer.pt"
TRAINING_WEIGHTS_FILE = "training_weights.safetensors"
# A resumed run must see the same data and the same recipe; these may change between runs.
MAY_CHANGE = ("output", "epochs", "num_workers", "cpus_per_worker", "use_gpu", "max_failures")


class RunConflictError(ValueError):
    """--output holds a run of other data or settings, which a re-run would wrongly resume."""


@dataclass
class TrainState:
    epoch: int = 0  # the last finished epoch
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per epoch
    skipped: dict[str, str] = field(default_factory=dict)  # uri -> why it was not used
    resumes: list[dict[str, Any]] = field(default_factory=list)  # one per restart from a checkpoint

    def to_json(self) -> str:
        return json.dumps(json_safe(asdict(self)), indent=1, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> TrainState:
        d = json.loads(text)
        return cls(epoch=int(d["epoch"]), history=list(d["history"]), skipped=dict(d["skipped"]),
                   resumes=list(d.get("resumes", [])))


def epoch_dir_name(epoch: int) -> str:
    return f"checkpoint_epoch_{epoch:04d}"


def write_epoch(folder: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: TrainState, *,
                preset: Preset, threshold: float, metrics: dict[str, Any], data_summary: dict[str, Any],
                recipe: dict[str, Any], training_model: torch.nn.Module | None = None) -> None:
    """The files of one epoch's checkpoint, into ``folder``: ``model`` is the one published;
    ``training_model``, when weights are averaged, the one the optimizer steps."""
    save_checkpoint(folder, model, preset=preset, threshold=threshold, metrics=metrics, data=data_summary,
                    extra={"training": recipe})
    if training_model is not None:
        save_file({k: v.detach().contiguous().cpu() for k, v in training_model.state_dict().items()},
                  os.path.join(folder, TRAINING_WEIGHTS_FILE))
    torch.save({"optimizer": optimizer.state_dict(), "epoch": state.epoch}, os.path.join(folder, OPTIMIZER_FILE))
    Path(folder, STATE_FILE).write_text(state.to_json())


def read_epoch(folder: str) -> tuple[dict[str, torch.Tensor], dict[str, Any], TrainState, dict[str, torch.Tensor] | None]:
    """(training weights, optimizer state, TrainState, averaged weights or None) of an
    epoch's checkpoint folder."""
    published = load_checkpoint(folder).model.state_dict()
    saved = torch.load(Path(folder) / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
    state = TrainState.from_json((Path(folder) / STATE_FILE).read_text())
    raw = Path(folder) / TRAINING_WEIGHTS_FILE
    if raw.exists():
        return load_file(str(raw)), saved["optimizer"], state, published
    return published, saved["optimizer"], state, None


def read_file(checkpoint: Any, name: str) -> bytes:
    """One file of a Ray Train ``Checkpoint`` (local or on S3), e.g. ``CHECKPOINT_FILE``."""
    with checkpoint.filesystem.open_input_stream(f"{checkpoint.path}/{name}") as f:
        return f.read()


def claim_run_dir(config: TrainConfig, data: LabelledData) -> None:
    """Record what this run trains on; refuse to resume a run that trained on something else."""
    # as JSON reads it back (tuples become lists), so an unchanged setting compares equal
    spec = json.loads(json.dumps({k: v for k, v in dataclasses.asdict(config).items() if k not in MAY_CHANGE}))
    splits = [[(s.uri, s.label) for s in part] for part in (data.train, data.validation)]
    digest = hashlib.sha256(json.dumps(splits).encode()).hexdigest()
    spec["data_digest"] = f"sha256-{digest[:16]}"
    uri = storage.join(config.output, RUN_DIR, RUN_SPEC_FILE)
    if storage.exists(uri):
        previous = json.loads(storage.read_bytes(uri))
        changed = sorted(k for k in spec.keys() | previous.keys() if spec.get(k) != previous.get(k))
        changed = ["the listed images" if k == "data_digest" else f"--{k.replace('_', '-')}" for k in changed]
        if changed:
            raise RunConflictError(
                f"--output {config.output} holds a run with other settings ({', '.join(changed)}); "
                f"a re-run resumes it only with the same data and recipe. Use a new --output, or "
                f"delete {storage.join(config.output, RUN_DIR)} to start over."
            )
        print(f"resuming the run in {storage.join(config.output, RUN_DIR)}", flush=True)
    else:
        storage.write_bytes(uri, json.dumps(json_safe(spec), indent=1, allow_nan=False).encode())
