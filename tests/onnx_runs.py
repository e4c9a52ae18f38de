"""Runs made in-process, without Ray or training: a model of each fusion type or preset with
its initial weights, and the lineage of a features config (what export needs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.fusion.artifact import Lineage, ModelInfo, build_model, save_run

# The features config of the runs: every encoder the features stage has, small audio frames.
FEATURES = {
    "shards": "unused",
    "output": "unused",
    "image": {"name": "efficientnet_lite0", "pool": "grid"},
    "text": {"name": "minilm_bow"},
    "audio": {"name": "audio_cnn", "weights": "random"},
    "audio_frames": 100,
}


def make_run(
    out: Path,
    fusion: str = "mid",
    preset: str | None = None,
    *,
    classes: int = 3,
    features: dict[str, Any] | None = None,
    d_model: int = 32,
    embed_dim: int = 16,
    encoders: dict[str, Any] | None = None,
    relations: tuple[str, ...] = (),
) -> Path:
    """A run directory whose model.json names the features config and, when given, the
    encoders its features came from (``features.stages.encoder_info``)."""
    import torch

    from pipeline.features.config import FeaturesConfig

    cfg = FeaturesConfig(**(features or FEATURES))
    dims = {"image": 64, "text": 48} if preset else cfg.dims()
    info = ModelInfo(
        fusion=preset or fusion,
        preset=preset,
        fusion_type=fusion,
        image_size=32,
        max_text_tokens=16,
        dims=dims,
        d_model=d_model,
        embed_dim=embed_dim,
        classes=[f"c{i}" for i in range(classes)],
        label_field="label" if classes else None,
        dropout=0.0,
        relations=relations,
        lineage=Lineage(
            "features", "fp", "", {"config": cfg.model_dump(), "encoders": encoders or {}}, {}
        ),
    )
    torch.manual_seed(0)
    model = build_model(info.spec)
    if relations:  # canonical spaces as training would fit them: random, not zero
        g = torch.Generator().manual_seed(1)
        fits = {}
        for p in relations:
            a, b = p.split("~")
            fits[p] = (
                torch.randn(dims[a], generator=g),
                torch.randn(dims[a], 8, generator=g),
                torch.randn(dims[b], generator=g),
                torch.randn(dims[b], 8, generator=g),
                0.1,
                2.0,
            )
        model.set_relations(fits)
    save_run(str(out), info, model.state_dict())
    return out
