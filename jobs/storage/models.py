"""Fetching a detector from a ``--model`` URI: the one way every job loads a checkpoint.

``--model`` is a training output (local folder or ``s3://`` prefix) holding
``model.safetensors``, or that file itself. Only the checkpoint file is read, never the
whole output with its Ray Train run, and it is loaded from memory (no temporary file).

    python -c "from jobs.storage.models import load_model; print(load_model('OUT')[1].model_version)"
"""

from __future__ import annotations

from detector.checkpoint import CHECKPOINT_FILE, Checkpoint, load_checkpoint_bytes
from detector.errors import CheckpointError
from jobs import storage


class MissingCheckpoint(CheckpointError, FileNotFoundError):
    """No checkpoint where ``--model`` points: a bad model (exit 3), and a missing file."""


def checkpoint_uri(model: str) -> str:
    """The URI of the checkpoint file that ``--model`` names."""
    return model if model.endswith(".safetensors") else storage.join(model, CHECKPOINT_FILE)


def read_checkpoint_bytes(model: str) -> bytes:
    """The bytes of the checkpoint file ``model`` names; FileNotFoundError says what to give."""
    uri = checkpoint_uri(model)
    try:
        return storage.read_bytes(uri)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise MissingCheckpoint(f"no checkpoint at {uri}: --model must be a training output holding "
                                f"{CHECKPOINT_FILE}, or that file") from None


def load_model(model: str, *, device: str = "cpu") -> tuple[bytes, Checkpoint]:
    """The checkpoint's bytes (to hand to workers) and the checkpoint loaded from them.
    Raises detector.errors.CheckpointError naming ``model`` for a bad file."""
    data = read_checkpoint_bytes(model)
    return data, load_checkpoint_bytes(data, source=checkpoint_uri(model), device=device)


CARD_FILE = "MODEL_CARD.md"  # written by jobs.train (jobs/train/card.py) beside the checkpoint


def card_uri(model: str) -> str:
    """Where the model card of ``--model`` (a training output, or its model.safetensors) lives."""
    folder = model.rsplit("/", 1)[0] if model.endswith(".safetensors") else model
    return storage.join(folder, CARD_FILE)


def read_card(model: str) -> str | None:
    """The model card's text, or None when there is none (trained before cards) or it
    cannot be read: a card is information, never a reason for a job to fail."""
    try:
        return storage.read_bytes(card_uri(model), max_bytes=1 << 20).decode("utf-8", "replace")
    except (OSError, ValueError):
        return None
