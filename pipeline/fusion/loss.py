"""The training objective of a FusionModel: contrastive alignment in the shared space plus classification."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.fusion.model import Feats, FusionModel


def info_nce(a: Tensor, b: Tensor, scale: Tensor, both: Tensor) -> Tensor:
    """Symmetric InfoNCE between paired rows of ``a`` and ``b`` where both are present."""
    a, b = a[both], b[both]
    if a.shape[0] < 2:
        return a.sum() * 0.0  # keeps the graph (DDP needs every parameter used) at zero loss
    logits = scale.exp().clamp(max=100.0) * a @ b.t()
    target = torch.arange(a.shape[0], device=a.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def fusion_loss(
    model: FusionModel,
    out: dict[str, Any],
    mask: Feats,
    labels: Tensor | None,
    w_contrastive: float,
    w_classify: float,
    w_single: float = 0.0,
    matching: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Contrastive loss over every modality pair plus classification: the multi-task loss.
    ``w_single`` weighs classification from each modality alone (``single_logits``).
    ``matching``: the rows whose modalities are known to show the same thing; only they are
    pulled together across modalities (None: every row)."""
    parts: dict[str, Tensor] = {}
    mods = model.mods
    for i, a in enumerate(mods):
        for b in mods[i + 1 :]:
            both = mask[a] & mask[b]
            parts[f"nce_{a}_{b}"] = info_nce(
                out["emb"][a],
                out["emb"][b],
                model.logit_scale,
                both if matching is None else both & matching,
            )
    # The fused embedding lives in the same space: pulled towards each modality it was built
    # from, so that a text query can retrieve fused items (search) as well as images.
    for m in mods:
        parts[f"nce_fused_{m}"] = info_nce(out["fused"], out["emb"][m], model.logit_scale, mask[m])
    con = torch.stack(list(parts.values())).mean()
    loss = w_contrastive * con
    if labels is not None and "logits" in out and w_classify > 0:
        known = labels >= 0
        ce = F.cross_entropy(out["logits"][known], labels[known]) if known.any() else con * 0.0
        parts["ce"] = ce
        loss = loss + w_classify * ce
        singles = out.get("single_logits") or {}
        if w_single > 0 and singles:
            each = [
                F.cross_entropy(lg[known & mask[m]], labels[known & mask[m]])
                for m, lg in singles.items()
                if (known & mask[m]).any()
            ]
            if each:
                parts["ce_single"] = torch.stack(each).mean()
                loss = loss + w_single * parts["ce_single"]
    # Detached tensors, not floats: reading a value waits for the GPU, so callers do it only
    # when they log.
    return loss, {k: v.detach() for k, v in parts.items()}
