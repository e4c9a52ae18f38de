"""The embedding model: a train run (state dict) or its TorchScript export, its version and encoders."""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
from dataclasses import dataclass
from typing import Any

from pipeline.errors import UserError
from pipeline.features.config import FeaturesConfig
from pipeline.io.fs import exists, join, read_bytes, scheme_of

MODALITIES = ("image", "text", "audio")


@dataclass(frozen=True)
class ModelRef:
    """What a worker needs to load the model, and what every output row records about it."""

    run_dir: str
    weights_url: str
    kind: str  # "state_dict" (model.pt) or "torchscript"
    info: dict[str, Any]  # the run's model.json
    version: str  # SHA-256 of the weight file's bytes (first 16 hex digits)
    model_id: str

    @property
    def modalities(self) -> list[str]:
        return [m for m in MODALITIES if m in self.info["dims"]]

    @property
    def dim(self) -> int:
        return int(self.info["embed_dim"])

    @property
    def preprocessing(self) -> str:
        """The fingerprint of the features run the model was trained on (config + encoders)."""
        return str(self.info["lineage"].get("features_fingerprint") or "")


def _parent(url: str) -> str:
    if scheme_of(url):
        proto, rest = url.split("://", 1)
        return f"{proto}://{posixpath.dirname(rest.rstrip('/'))}"
    import os

    return os.path.dirname(os.path.abspath(url))


def resolve_model(spec: str, model_id: str | None = None) -> ModelRef:
    """``spec``: a run directory, its ``model.pt``, or a TorchScript file inside a run directory
    (whose ``model.json`` says how inputs were preprocessed). Raises UserError otherwise."""
    if exists(join(spec, "model.json")):
        run_dir, weights, kind = spec, join(spec, "model.pt"), "state_dict"
    elif spec.endswith(".pt") and exists(spec):
        run_dir = _parent(spec)
        weights = spec
        kind = "state_dict" if posixpath.basename(spec) == "model.pt" else "torchscript"
    else:
        raise UserError(
            f"model {spec!r} is neither a run directory of mmpipe train nor a .pt file in one; "
            "pass --model RUN_DIR or RUN_DIR/model.torchscript.pt"
        )
    if not exists(join(run_dir, "model.json")) or not exists(weights):
        raise UserError(f"{run_dir} has no model.json/model weights; run mmpipe train first")
    info = json.loads(read_bytes(join(run_dir, "model.json")))
    if info.get("preset"):
        raise UserError(
            f"model {spec!r} is the end-to-end preset {info['preset']!r}; embed supports models "
            "trained on features (train without --preset)"
        )
    if not (info.get("lineage") or {}).get("preprocessing", {}).get("config"):
        raise UserError(
            f"{run_dir}/model.json records no features config; retrain with this mmpipe"
        )
    version = hashlib.sha256(read_bytes(weights)).hexdigest()[:16]
    name = posixpath.basename(run_dir.rstrip("/")) or "model"
    return ModelRef(run_dir, weights, kind, info, version, model_id or f"{name}:{info['fusion']}")


def image_preset(ref: ModelRef) -> str:
    """The image normalisation preset the image encoder was trained with."""
    encoders = ref.info["lineage"]["preprocessing"].get("encoders") or {}
    return str((encoders.get("image") or {}).get("preset") or "imagenet")


def features_config(ref: ModelRef, **runtime: Any) -> FeaturesConfig:
    """The features config the model was trained on, limited to its modalities; ``runtime``
    overrides how it runs (batch size, device, CPUs), never what it computes."""
    data = dict(ref.info["lineage"]["preprocessing"]["config"])
    for m in MODALITIES:
        if m not in ref.info["dims"]:
            data[m] = None  # the model never sees it: do not decode or encode it
    data.update({k: v for k, v in runtime.items() if v is not None})
    return FeaturesConfig(**data)


def check_encoders(ref: ModelRef, found: dict[str, dict[str, Any]]) -> None:
    """Refuse to embed with encoders other than those the model was trained on."""
    trained = ref.info["lineage"]["preprocessing"].get("encoders") or {}
    for m in ref.modalities:
        a, b = trained.get(m) or {}, found.get(m) or {}
        if (a.get("encoder"), a.get("weights"), a.get("dim")) != (
            b.get("encoder"),
            b.get("weights"),
            b.get("dim"),
        ):
            raise UserError(
                f"the {m} encoder here ({b.get('encoder')}, weights {b.get('weights')}) differs "
                f"from the one the model was trained on ({a.get('encoder')}, weights "
                f"{a.get('weights')}); install the same encoder weights"
            )


class EmbeddingModel:
    """``(features, masks) -> (fused, {modality: emb})``, all L2-normalised float32 tensors."""

    def __init__(self, ref: ModelRef, device: str) -> None:
        import torch

        self.ref, self.device = ref, device
        blob = io.BytesIO(read_bytes(ref.weights_url))
        if ref.kind == "torchscript":
            self.scripted: Any = torch.jit.load(blob, map_location=device).eval()
            self.model: Any = None
        else:
            from pipeline.train.evaluate import build_model

            self.model = build_model(ref.info)
            try:
                state = torch.load(blob, map_location="cpu", weights_only=True)
            except Exception as e:  # pickled objects: refused, never executed
                raise UserError(
                    f"{ref.weights_url} is not a plain tensor state dict ({type(e).__name__}); "
                    "only weights_only checkpoints are loaded"
                ) from None
            self.model.load_state_dict(state)
            self.model.to(device).eval()
            self.scripted = None

    def __call__(self, feats: dict[str, Any], masks: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        import torch.nn.functional as F

        mods = self.ref.modalities
        if self.scripted is not None:
            out = self.scripted(*(feats[m] for m in mods), *(masks[m] for m in mods))
            fused, embs = out[0], dict(zip(mods, out[1:]))
        else:
            res = self.model(feats, masks)
            fused, embs = res["fused"], res["emb"]
        # Normalised again in float32: autocast may have computed them in bf16.
        return F.normalize(fused.float(), dim=-1), {
            m: F.normalize(e.float(), dim=-1) for m, e in embs.items()
        }
