"""Loading weights safely from a path or any fsspec URL: safetensors or weights_only checkpoints."""

from __future__ import annotations

import contextlib
import hashlib
import io
import pickle
import warnings
from collections.abc import Iterator
from typing import Any

from pipeline.errors import UserError


@contextlib.contextmanager
def torchscript_quietly() -> Iterator[None]:
    """TorchScript without torch's per-call deprecation notices: TorchScript is the format we
    write and read on purpose, and the notices say nothing a user can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning
        )
        # Tracing the presets' normalisation: its mean and std are constants, as intended.
        warnings.filterwarnings("ignore", message=r"torch\.tensor results are registered")
        # nn.LSTM's own input-size checks, which hold for every batch the trace will see.
        warnings.filterwarnings(
            "ignore", message=r"Converting a tensor", module=r"torch\.nn\.modules\.rnn"
        )
        yield


def read_bytes(source: str) -> bytes:
    import fsspec

    try:
        with fsspec.open(source, "rb") as f:
            return bytes(f.read())
    except FileNotFoundError:
        raise UserError(
            f"weights not found: {source}; give a path or URL to a checkpoint"
        ) from None


def load_tensors(blob: bytes, source: str) -> Any:
    """``torch.load`` with ``weights_only=True``: plain tensors and containers, never code.

    Every checkpoint we read (encoder weights, model files, training state) comes through here.

    Raises:
        UserError: the bytes hold pickled objects (or are not a torch checkpoint at all).
    """
    import torch

    try:
        return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, EOFError, ValueError) as e:
        detail = (str(e).splitlines() or [type(e).__name__])[0][:120]
        raise UserError(
            f"checkpoint refused: {source} holds pickled objects, not plain tensors ({detail}); "
            "only weights_only checkpoints are loaded: save model.state_dict() or use safetensors"
        ) from None


def load_state_dict(source: str) -> tuple[dict[str, Any], str]:
    """Return ``(state_dict, sha256)`` of an encoder checkpoint. Pickled objects are never executed.

    Raises:
        UserError: missing file, or a checkpoint that needs unpickling arbitrary objects.
    """
    blob = read_bytes(source)
    digest = hashlib.sha256(blob).hexdigest()
    if source.endswith(".safetensors"):
        from safetensors.torch import load

        return dict(load(blob)), digest
    obj = load_tensors(blob, source)
    # Common wrappers: {"state_dict": ...}, {"model": ...}; strip DDP's "module." prefix.
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise UserError(f"{source} does not hold a state dict (got {type(obj).__name__})")
    return {k.removeprefix("module."): v for k, v in obj.items()}, digest
