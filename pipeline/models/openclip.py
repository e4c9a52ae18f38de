"""open_clip models as frozen image and text encoders: a folder, an fsspec URL, a hub repo or a tag."""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from typing import Any

from pipeline.errors import UserError
from pipeline.models.sources import folder_digest, local_folder


@dataclass(frozen=True)
class OpenClipSource:
    """How open_clip names the model (``model_name``, ``pretrained``) and our id for its weights."""

    model_name: str
    pretrained: str | None
    weights_id: str


@functools.lru_cache(maxsize=8)
def resolve(source: str) -> OpenClipSource:
    """``source`` is one of:

    - a folder with ``open_clip_config.json`` and its weights (local or any fsspec URL);
    - ``hf-hub:org/repo`` (needs the hub);
    - ``ARCH:TAG`` (``ViT-B-32:laion2b_s34b_b79k``; needs the network) or ``ARCH:FILE``, a
      checkpoint path or URL for one of open_clip's built-in architectures.
    """
    from pipeline.io.fs import is_remote

    if source.startswith("hf-hub:"):
        return OpenClipSource(source, None, f"open_clip:{source}")
    if is_remote(source) or os.path.isdir(source) or ":" not in source:
        folder = local_folder(source)
        if not os.path.exists(os.path.join(folder, "open_clip_config.json")):
            raise UserError(
                f"{source} is not an open_clip folder (no open_clip_config.json); give a folder "
                "as open_clip's push_to_hf_hub writes it, hf-hub:ORG/REPO, or ARCH:TAG"
            )
        return OpenClipSource(f"local-dir:{folder}", None, folder_digest(folder))
    arch, tag = source.split(":", 1)
    if tag and (is_remote(tag) or os.path.exists(tag)):
        from pipeline.models.weights import read_bytes

        blob = read_bytes(tag)
        local = os.path.join(local_folder_for_file(), hashlib.sha256(blob).hexdigest())
        if not os.path.exists(local):
            with open(local + ".tmp", "wb") as f:
                f.write(blob)
            os.replace(local + ".tmp", local)
        suffix = ".safetensors" if tag.endswith(".safetensors") else ""
        if suffix and not os.path.exists(local + suffix):
            os.link(local, local + suffix)  # open_clip picks the loader by the file's suffix
        return OpenClipSource(arch, local + suffix, hashlib.sha256(blob).hexdigest())
    return OpenClipSource(arch, tag or None, f"open_clip:{source}")


def local_folder_for_file() -> str:
    from pipeline.models.sources import cache_root

    path = os.path.join(cache_root(), "open_clip")
    os.makedirs(path, exist_ok=True)
    return path


def load(source: str, weights: bool = True) -> tuple[Any, Any, Any]:
    """``(model, eval image transform, tokenizer)``; ``weights=False`` builds the architecture
    only, for preprocessing workers that need the transform and the tokenizer alone. A process
    that already loaded the weights (the driver measuring the width) reuses them."""
    if (source, True) in _LOADED:
        return _LOADED[(source, True)]
    if (source, weights) not in _LOADED:
        _LOADED[(source, weights)] = _build(source, weights)
    return _LOADED[(source, weights)]


# (source, with weights) -> what ``load`` returns: built once per process.
_LOADED: dict[tuple[str, bool], tuple[Any, Any, Any]] = {}


def _build(source: str, weights: bool) -> tuple[Any, Any, Any]:
    """open_clip's own factory, with its logging kept quiet.

    Raises:
        UserError: an unknown architecture or tag, or a folder without weights.
    """
    import logging

    import open_clip

    src = resolve(source)
    root = logging.getLogger()
    level = root.level
    # open_clip logs through the root logger; without weights its "initialised randomly"
    # warning is what a preprocessing worker asked for.
    root.setLevel(logging.WARNING if weights else logging.ERROR)
    try:
        model, _, transform = open_clip.create_model_and_transforms(
            src.model_name,
            pretrained=src.pretrained if weights else None,
            load_weights=weights,
            weights_only=True,  # plain tensors only: a pickle is refused, never run
            device="cpu",
        )
        tokenizer = open_clip.get_tokenizer(src.model_name)
    except (RuntimeError, ValueError, FileNotFoundError, OSError) as e:
        raise UserError(
            f"cannot load open_clip model {source}: {str(e).splitlines()[0][:200]}"
        ) from None
    finally:
        root.setLevel(level)
    return model.eval(), transform, tokenizer


def openclip_encoder(modality: str, source: str) -> tuple[Any, str]:
    """``(tower, weights_id)`` for ``image`` (``encode_image``) or ``text`` (``encode_text``)."""
    import torch.nn as nn

    if modality not in ("image", "text"):
        raise UserError(f"open_clip has no {modality} tower; choose another features.{modality}")
    model, _, _ = load(source)

    class Tower(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.clip = model

        def forward(self, x: Any, attention_mask: Any = None) -> Any:
            # open_clip's text tower reads the token ids alone: its padding id is 0, masked inside.
            return self.clip.encode_image(x) if modality == "image" else self.clip.encode_text(x)

    return Tower().eval(), resolve(source).weights_id
