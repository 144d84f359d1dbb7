"""What a jobs.train run leaves at ``--output``, and the claim that makes re-running it safe.

- ``publish``: after training, copy the best checkpoint's ``model.safetensors`` to the top
  level (loaded once first), draw ``training_curves.png``, and write ``metrics.json`` last,
  so a run that died never leaves a complete-looking output.
- ``claim_run_dir``: before training, record the data and recipe in
  ``ray-train/genscan-run.json``. A re-run with the same ``--output`` resumes Ray Train's
  run from its latest checkpoint, which is right only for the same data and recipe;
  anything else is refused, naming what changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from typing import TYPE_CHECKING, Any

from detector.checkpoint import CHECKPOINT_FILE, load_checkpoint
from jobs import storage
from jobs.dataset import LabelledData
from jobs.plots import training_curves_png
from jobs.train_state import STATE_FILE, TrainState

if TYPE_CHECKING:
    from jobs.train import TrainConfig

RUN_DIR = "ray-train"  # Ray Train's run folder inside --output; a stable name makes re-runs resume
RUN_SPEC_FILE = "genscan-run.json"
METRICS_FILE = "metrics.json"
CURVES_FILE = "training_curves.png"
# A resumed run must see the same data and the same recipe; these may change between runs.
MAY_CHANGE = ("output", "epochs", "num_workers", "cpus_per_worker", "use_gpu", "max_failures")


class RunConflictError(ValueError):
    """--output holds a run of other data or settings, which a re-run would wrongly resume."""


def publish(config: TrainConfig, data: LabelledData, best: Any, latest: Any, seconds: float,
            *, data_check: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the run's results at ``config.output`` from Ray Train's ``best`` and ``latest``
    checkpoints; returns the metrics.json record."""
    state = TrainState.from_json(_read(latest, STATE_FILE).decode())
    model_bytes = _read(best, CHECKPOINT_FILE)
    with tempfile.TemporaryDirectory() as d:  # load it once before publishing it
        with open(os.path.join(d, CHECKPOINT_FILE), "wb") as f:
            f.write(model_bytes)
        meta = load_checkpoint(d).meta
    best_epoch = int(meta["metrics"]["epoch"])
    record = {
        "history": state.history,
        "best_epoch": best_epoch,
        "best": next(h for h in state.history if h["epoch"] == best_epoch),
        "threshold": meta["threshold"],
        "threshold_fpr": config.threshold_fpr,
        "model_version": meta["model_version"],
        "data": {**data.summary(), "skipped_count": len(state.skipped),
                 "skipped": [{"uri": u, "reason": r} for u, r in sorted(state.skipped.items())]},
        "data_check": data_check,
        "resumes": state.resumes,
        "config": dataclasses.asdict(config),
        "ray_train_dir": storage.join(config.output, RUN_DIR),
        "wall_seconds": round(seconds, 1),
    }
    storage.write_bytes(storage.join(config.output, CHECKPOINT_FILE), model_bytes)
    storage.write_bytes(storage.join(config.output, CURVES_FILE),
                        training_curves_png(state.history, title=f"{config.data} ({config.preset})"))
    storage.write_bytes(storage.join(config.output, METRICS_FILE), json.dumps(record, indent=1).encode())
    for s in record["data"]["skipped"][:20]:
        print(f"skipped {s['uri']}: {s['reason']}", flush=True)
    acc, auc = (record["best"].get(k) for k in ("val_accuracy", "val_auc"))
    print(f"best epoch {best_epoch}/{state.epoch} by {config.select_by}: val_accuracy "
          f"{acc if acc is None else f'{acc:.4f}'}, val_auc {auc if auc is None else f'{auc:.4f}'}, "
          f"threshold {record['threshold']:.4f} (fpr <= {config.threshold_fpr}), "
          f"{len(state.skipped)} files skipped -> {storage.join(config.output, CHECKPOINT_FILE)}", flush=True)
    return record


def claim_run_dir(config: TrainConfig, data: LabelledData) -> None:
    """Record what this run trains on; refuse to resume a run that trained on something else."""
    spec = {k: v for k, v in dataclasses.asdict(config).items() if k not in MAY_CHANGE}
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
        storage.write_bytes(uri, json.dumps(spec, indent=1).encode())


def _read(checkpoint: Any, name: str) -> bytes:
    with checkpoint.filesystem.open_input_stream(f"{checkpoint.path}/{name}") as f:
        return f.read()
