"""What a training run remembers between epochs, restarts and re-runs (``state.json`` in
each Ray Train checkpoint), in plain JSON so that reading it never runs code."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

STATE_FILE = "state.json"
OPTIMIZER_FILE = "optimizer.pt"


@dataclass
class TrainState:
    epoch: int = 0  # the last finished epoch
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per epoch
    skipped: dict[str, str] = field(default_factory=dict)  # uri -> why it was not used
    resumes: list[dict[str, Any]] = field(default_factory=list)  # one per restart from a checkpoint

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> TrainState:
        d = json.loads(text)
        return cls(epoch=int(d["epoch"]), history=list(d["history"]), skipped=dict(d["skipped"]),
                   resumes=list(d.get("resumes", [])))
