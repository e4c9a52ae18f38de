"""The embedding model: a run artefact that embed can use, and its call with L2-normalised outputs."""

from __future__ import annotations

from typing import Any

from pipeline.errors import UserError
from pipeline.fusion.artifact import RunArtifact


def resolve_model(spec: str, model_id: str | None = None) -> RunArtifact:
    """The run artefact at ``spec``, if embed can use it: a model trained on features whose
    ``model.json`` records the features config.

    Raises:
        UserError: no model there, an end-to-end preset, or no recorded features config.
    """
    art = RunArtifact.open(spec, model_id)
    if art.info.preset:
        raise UserError(
            f"model {spec!r} is the end-to-end preset {art.info.preset!r}; embed supports models "
            "trained on features (train without --preset)"
        )
    if not art.info.lineage.preprocessing.get("config"):
        raise UserError(
            f"{art.run_dir}/model.json records no features config; retrain with this mmpipe"
        )
    return art


class EmbeddingModel:
    """``(features, masks) -> (fused, {modality: emb})``, all L2-normalised float32 tensors."""

    def __init__(self, ref: RunArtifact, device: str, threads: int | None = None) -> None:
        self.ref, self.device = ref, device
        self.model = ref.load(device, threads=threads)
        wanted = ["fused", *(f"{m}_emb" for m in ref.modalities)]
        if ref.kind == "onnx" and self.model.outputs[: len(wanted)] != wanted:
            raise UserError(
                f"{ref.weights_url} is not the model graph of an export (outputs "
                f"{self.model.outputs}); pass RUN/export/model.onnx"
            )

    def __call__(self, feats: dict[str, Any], masks: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        import torch.nn.functional as F

        mods = self.ref.modalities
        if self.ref.kind == "onnx":  # outputs by name: fused, {m}_emb (and logits)
            out = self.model.named(*(feats[m] for m in mods), *(masks[m] for m in mods))
            fused, embs = out["fused"], {m: out[f"{m}_emb"] for m in mods}
        elif self.ref.kind == "torchscript":
            out = self.model(*(feats[m] for m in mods), *(masks[m] for m in mods))
            fused, embs = out[0], dict(zip(mods, out[1:]))
        else:
            res = self.model(feats, masks)
            fused, embs = res["fused"], res["emb"]
        # Normalised again in float32: autocast may have computed them in bf16.
        return F.normalize(fused.float(), dim=-1), {
            m: F.normalize(e.float(), dim=-1) for m, e in embs.items()
        }
