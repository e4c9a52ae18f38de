"""``mmpipe zero-shot``: a run directory around a paired model (CLIP, SigLIP, CLAP, open_clip)
whose towers already share a space, so that embed and search work with no training."""

from __future__ import annotations

import os
import sys
from typing import Any

from pipeline.errors import UserError

FUSION = "zero_shot"
LIBRARIES = ("hf", "open_clip")


def towers_of(library: str, source: str) -> list[str]:
    """The modalities the paired model has towers for, found on the model itself."""
    if library == "open_clip":
        return ["image", "text"]
    from pipeline.models.hf import FEATURE_METHODS, load_model
    from pipeline.models.sources import local_folder

    hf = load_model(local_folder(source))
    found = [m for m, method in FEATURE_METHODS.items() if hasattr(hf, method)]
    if len(found) < 2:
        raise UserError(
            f"{source} ({type(hf).__name__}) is not a paired model: it has no two towers in one "
            "space (CLIP, SigLIP, CLAP do); train a fusion model with mmpipe train instead"
        )
    return found


def write_zero_shot_run(
    source: str, output: str, library: str = "hf", *, quiet: bool = False
) -> dict[str, Any]:
    """Write ``OUTPUT/model.json`` and an empty ``model.pt``: a run that embed, refresh and
    search open like a trained one. Its features config names the paired model's towers.

    Raises:
        UserError: an unknown library, a model without two towers, or towers of other widths.
    """
    from pipeline.features.config import FeaturesConfig
    from pipeline.features.stages import encoder_info
    from pipeline.fingerprint import features_fingerprint
    from pipeline.fusion.artifact import Lineage, ModelInfo, save_run
    from pipeline.io.fs import absolute, check_output

    if library not in LIBRARIES:
        raise UserError(f"--library must be one of {list(LIBRARIES)}, not {library!r}")
    output = absolute(output)
    check_output(output)
    # A local folder travels absolute (workers run elsewhere); a URL, hub id or tag as given.
    local = absolute(source) if os.path.exists(source) else source
    mods = towers_of(library, local)
    enc = {"name": library, "weights": local}
    towers: dict[str, Any] = {m: (enc if m in mods else None) for m in ("image", "text", "audio")}
    unused = [m for m in ("image", "text", "audio") if m not in mods]
    cfg = FeaturesConfig.model_validate({"shards": "-", "output": "-", **towers, "ignore": unused})
    info = encoder_info(cfg)
    dims = {m: int(v["dim"]) for m, v in info.items()}
    if len(set(dims.values())) != 1:
        raise UserError(f"the towers of {source} differ in width ({dims}): they share no space")
    dim = next(iter(dims.values()))
    model = ModelInfo(
        fusion=FUSION,
        preset=None,
        fusion_type=FUSION,
        image_size=0,
        max_text_tokens=cfg.max_text_tokens,
        dims=dims,
        d_model=dim,
        embed_dim=dim,
        classes=[],
        label_field=None,
        dropout=0.0,
        lineage=Lineage(
            features=local,
            features_fingerprint=features_fingerprint(cfg, info),
            features_manifest_sha256="",
            preprocessing={"config": cfg.model_dump(), "encoders": info},
            train_config={"zero_shot": {"library": library, "model": local}},
        ),
    )
    saved = save_run(output, model, {})
    if not quiet:
        print(
            f"zero-shot: {'+'.join(dims)} towers of {source}, {dim} dims -> {output} "
            "(use it as --model for embed, refresh and search)",
            file=sys.stderr,
        )
    return saved.to_json()
