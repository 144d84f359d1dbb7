"""What a jobs.train run leaves at ``--output``: after training, the best checkpoint's
``model.safetensors`` is copied to the top level (loaded once first), ``training_curves.png``
drawn, and ``metrics.json`` written last, so a run that died never leaves a
complete-looking output. ``MODEL_CARD.md`` (jobs/train/card.py) says what the model is
and is not good for. The run folder itself: jobs/train/run_state.py.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from detector.checkpoint import CHECKPOINT_FILE, load_checkpoint_bytes
from jobs import storage
from jobs.metrics import json_safe
from jobs.plots import training_curves_png
from jobs.train.card import CARD_FILE, render_card
from jobs.train.config import TrainConfig
from jobs.train.data import LabelledData
from jobs.train.run_state import RUN_DIR, STATE_FILE, TrainState, read_file

METRICS_FILE = "metrics.json"
CURVES_FILE = "training_curves.png"

def publish(config: TrainConfig, data: LabelledData, best: Any, latest: Any, seconds: float,
            *, data_check: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the run's results at ``config.output`` from Ray Train's ``best`` and ``latest``
    checkpoints; returns the metrics.json record."""
    state = TrainState.from_json(read_file(latest, STATE_FILE).decode())
    model_bytes = read_file(best, CHECKPOINT_FILE)
    meta = load_checkpoint_bytes(model_bytes, source=f"{best.path}/{CHECKPOINT_FILE}").meta  # checked before publishing
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
        "config": json.loads(json.dumps(dataclasses.asdict(config))),  # as metrics.json holds it
        "ray_train_dir": storage.join(config.output, RUN_DIR),
        "wall_seconds": round(seconds, 1),
    }
    storage.write_bytes(storage.join(config.output, CHECKPOINT_FILE), model_bytes)
    storage.write_bytes(storage.join(config.output, CURVES_FILE),
                        training_curves_png(state.history, title=f"{config.data} ({config.preset})"))
    storage.write_bytes(storage.join(config.output, CARD_FILE), render_card(record, meta).encode())
    storage.write_bytes(storage.join(config.output, METRICS_FILE), json.dumps(json_safe(record), indent=1, allow_nan=False).encode())
    for s in record["data"]["skipped"][:20]:
        print(f"skipped {s['uri']}: {s['reason']}", flush=True)
    acc, auc = (record["best"].get(k) for k in ("val_accuracy", "val_auc"))
    print(f"best epoch {best_epoch}/{state.epoch} by {config.select_by}: val_accuracy "
          f"{acc if acc is None else f'{acc:.4f}'}, val_auc {auc if auc is None else f'{auc:.4f}'}, "
          f"threshold {record['threshold']:.4f} (fpr <= {config.threshold_fpr}), "
          f"{len(state.skipped)} files skipped -> {storage.join(config.output, CHECKPOINT_FILE)}", flush=True)
    return record
