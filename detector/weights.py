"""Reading weight files safely: the one place tensors are read from disk or bytes.

``.safetensors`` files cannot carry code. Pickle-based ``.pt``/``.pth`` files are read
only through ``torch.load(weights_only=True)``, which refuses anything but tensors and
plain containers; a file that needs more is refused with a message saying why.

    python -c "from detector.weights import read_state_dict; print(list(read_state_dict('w.pt'))[:3])"
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors

from detector.errors import CheckpointError

# Magic bytes of formats that can carry code: pickle protocol 2+ and torch's zip archive.
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a ``.safetensors`` file, or from a pickle-based ``.pt``/``.pth`` file
    through ``torch.load(weights_only=True)``; a file that carries code is refused."""
    f = Path(path)
    try:
        data = f.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read {f}: {e.strerror or e}") from None
    return state_dict_from_bytes(data, source=str(f))


def state_dict_from_bytes(data: bytes, *, source: str) -> dict[str, torch.Tensor]:
    """``read_state_dict`` for bytes already in memory; ``source`` names them in errors."""
    if is_pickle(data[:9], len(data)):
        try:  # a file object: torch.load must not dispatch on a suffix
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, ValueError) as e:
            raise CheckpointError(
                f"{source} was refused: it is a pickle file that carries code or objects other than "
                f"tensors, and genscan never unpickles those ({type(e).__name__}). "
                f"Save a plain state dict (or .safetensors) instead."
            ) from None
        if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise CheckpointError(f"{source} does not hold a state dict of tensors")
        return {k.removeprefix("module."): v for k, v in obj.items()}
    try:
        return load_safetensors(bytes(data))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{source} is neither a safetensors file nor a torch state dict: {e}") from None


def is_pickle(head: bytes, size: int) -> bool:
    """Whether a file starting with ``head`` (its first 9 bytes) and ``size`` bytes long is
    a pickle or torch zip archive. A safetensors file starts with its header's length: a
    length whose low byte is 0x80 looks like pickle's magic, so that layout is checked first."""
    if len(head) == 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= size - 8:
        return False
    return head.startswith(_PICKLE_MAGIC)
