"""Loading weights safely from a path or any fsspec URL: safetensors or weights_only checkpoints."""

from __future__ import annotations

import hashlib
import io
import pickle
from typing import Any

from pipeline.errors import UserError


def read_bytes(source: str) -> bytes:
    import fsspec

    try:
        with fsspec.open(source, "rb") as f:
            return bytes(f.read())
    except FileNotFoundError:
        raise UserError(
            f"weights not found: {source}; give a path or URL to a checkpoint"
        ) from None


def load_state_dict(source: str) -> tuple[dict[str, Any], str]:
    """Return ``(state_dict, sha256)``. Pickled objects are never executed.

    Raises:
        UserError: missing file, or a checkpoint that needs unpickling arbitrary objects.
    """
    import torch

    blob = read_bytes(source)
    digest = hashlib.sha256(blob).hexdigest()
    if source.endswith(".safetensors"):
        from safetensors.torch import load

        return dict(load(blob)), digest
    try:
        obj = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError) as e:
        raise UserError(
            f"{source} is not a plain weights checkpoint (it holds pickled objects: "
            f"{str(e).splitlines()[0][:120]}); save model.state_dict() or use safetensors"
        ) from None
    # Common wrappers: {"state_dict": ...}, {"model": ...}; strip DDP's "module." prefix.
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise UserError(f"{source} does not hold a state dict (got {type(obj).__name__})")
    return {k.removeprefix("module."): v for k, v in obj.items()}, digest
