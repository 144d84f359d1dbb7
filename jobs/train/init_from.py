"""``jobs.train --init-from MODEL``: fine-tune an earlier genscan model instead of starting
from random or ImageNet weights (e.g. on the moderators' decisions, jobs.review export).

The model's architecture and preprocessing preset come from its checkpoint: flags left
out take the checkpoint's values (``--arch``, ``--preset``, ``--image-size``,
``--tile-size``, ``--max-tiles``); an ``--arch`` or ``--preset`` that contradicts it is
refused, as is a missing or damaged model (exit 3, one line).

    python -m jobs.train --data labels.csv --init-from s3://models/detector --output s3://models/detector-v2 \\
        --allow-prefix s3://uploads --epochs 2
"""

from __future__ import annotations

from typing import Any

import torch

from detector.checkpoint import Checkpoint
from detector.errors import CheckpointError
from detector.model import ARCHITECTURES, ModelSpec
from jobs.storage.models import load_model

# preset parameters a fine-tune keeps unless a flag sets them
_PRESET_FIELDS = ("image_size", "tile_size", "max_tiles")


def architecture(checkpoint: Checkpoint) -> str:
    """The ``--arch`` name of a loaded checkpoint's network."""
    spec = ModelSpec(**checkpoint.meta.get("model", {}))
    for name, known in ARCHITECTURES.items():
        if known == spec:
            return name
    raise CheckpointError(f"its network {spec} is none of the --arch choices ({', '.join(ARCHITECTURES)})")


def adopt(args: dict[str, Any]) -> dict[str, Any]:
    """The train flags ``args`` with what ``--init-from`` fixes filled in from its checkpoint
    (unchanged without ``--init-from``). CheckpointError: missing, damaged or contradicted."""
    if not args.get("init_from"):
        return args
    checkpoint = _load(args["init_from"])
    fixed = {"arch": architecture(checkpoint), "preset": checkpoint.preset.name}
    _check(args, fixed, args["init_from"])
    preset = checkpoint.preset.to_dict()
    filled = {k: preset[k] for k in _PRESET_FIELDS if k in preset and args.get(k) is None}
    return {**args, **fixed, **filled}


def initial_state(init_from: str, *, arch: str, preset: str) -> dict[str, torch.Tensor]:
    """The weights to start from; CheckpointError when the model does not fit ``arch``/``preset``
    (``run(config)`` called from Python checks here too)."""
    checkpoint = _load(init_from)
    _check({"arch": arch, "preset": preset}, {"arch": architecture(checkpoint), "preset": checkpoint.preset.name},
           init_from)
    return checkpoint.model.state_dict()


def _load(init_from: str) -> Checkpoint:
    try:
        return load_model(init_from)[1]
    except CheckpointError as e:
        raise CheckpointError(f"--init-from: {e}") from None


def _check(args: dict[str, Any], fixed: dict[str, str], init_from: str) -> None:
    for name, value in fixed.items():
        given = args.get(name)
        if given is not None and given != value:
            raise CheckpointError(f"--init-from {init_from} is a {fixed['arch']} model with the {fixed['preset']} "
                                  f"preset; --{name} {given} contradicts it (leave --{name} out to take the model's)")
