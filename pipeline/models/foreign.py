"""The user's own towers (transformers, open_clip) as ``Encoder``s, their width measured once."""

from __future__ import annotations

import functools
import io
from typing import Any

import numpy as np

from pipeline.errors import UserError
from pipeline.models.frozen import Encoder


@functools.lru_cache(maxsize=8)
def foreign_encoder(modality: str, name: str, source: str | None) -> Encoder:
    """A transformers or open_clip tower; its dim is read off one forward pass of a dummy
    sample through the model's own preprocessing, so any architecture reports the right width.

    Raises:
        UserError: no source given, or a model that cannot be loaded or has no such tower.
    """
    import torch

    from pipeline.models.processors import AUDIO_COLUMNS

    if not source or source in ("default", "random"):
        raise UserError(
            f"features.{modality}.weights must name the {name} model: a folder saved with "
            "save_pretrained, an fsspec URL of one, or a hub id"
            + (" / ARCH:TAG" if name == "open_clip" else "")
        )
    if name == "hf":
        from pipeline.models.hf import hf_encoder

        model, weights_id = hf_encoder(modality, source)
    else:
        from pipeline.models.openclip import openclip_encoder

        model, weights_id = openclip_encoder(modality, source)
    cols = {
        "image": ("pixel_values",),
        "text": ("input_ids", "attention_mask"),
        "audio": AUDIO_COLUMNS,
    }[modality]
    with torch.inference_mode():
        dummy = _dummy_batch(modality, name, source)
        out = model(*(torch.from_numpy(np.asarray(dummy[c])) for c in cols))
    arch = type(getattr(model, "hf", getattr(model, "clip", model))).__name__
    return Encoder(modality, f"{name}:{arch}", int(out.shape[-1]), weights_id, model, None, cols)


def _dummy_batch(modality: str, name: str, source: str) -> dict[str, Any]:
    from pipeline.models import processors as p

    if modality == "image":
        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (64, 48), (120, 90, 60)).save(buf, format="PNG")
        return p.ModelImagePreprocess(name, source).run({"image": [buf.getvalue()]})
    if modality == "text":
        return p.ModelTokenize(name, source, 16).run({"text": ["a photo"]})
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.zeros(8000, np.float32), 16000, format="WAV")
    return p.ModelAudioPreprocess(source, 0.5).run({"audio": [buf.getvalue()]})
