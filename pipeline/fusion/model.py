"""FusionModel: per-modality projections, five fusion types, a shared embedding space, a classifier."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FUSIONS = ("early", "mid", "late", "gated", "bilinear")
Feats = dict[str, Tensor]


class Projector(nn.Module):
    """Frozen features [B, D_m] -> [B, d]: the trainable per-modality encoder on features.

    Each feature is first standardised by the training split's mean and spread (``shift``,
    ``scale``: buffers, so they travel with the weights to eval, embed and export). A linear
    probe on standardised features beat the model on features whose dimensions differ in
    spread by orders of magnitude (docs/train.md); identity until ``set_stats``."""

    shift: Tensor
    scale: Tensor

    def __init__(self, dim_in: int, d: int, dropout: float) -> None:
        super().__init__()
        self.register_buffer("shift", torch.zeros(dim_in))
        self.register_buffer("scale", torch.ones(dim_in))
        self.net = nn.Sequential(
            nn.LayerNorm(dim_in),
            nn.Linear(dim_in, d),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(d, d),
        )

    def set_stats(self, mean: Any, inv_std: Any) -> None:
        self.shift.copy_(torch.as_tensor(mean, dtype=self.shift.dtype))
        self.scale.copy_(torch.as_tensor(inv_std, dtype=self.scale.dtype))

    def _load_from_state_dict(self, state: dict[str, Any], prefix: str, *args: Any) -> None:
        # Models saved before standardisation have no shift or scale: they load as identity.
        state.setdefault(prefix + "shift", torch.zeros_like(self.shift))
        state.setdefault(prefix + "scale", torch.ones_like(self.scale))
        super()._load_from_state_dict(state, prefix, *args)

    def forward(self, x: Tensor) -> Tensor:
        return self.net((x - self.shift) * self.scale)


def _present(mask: Feats, mods: list[str]) -> Tensor:
    return torch.stack([mask[m] for m in mods], dim=1).float()  # [B, M]


class EarlyFusion(nn.Module):
    """Concatenate the projections (missing ones zeroed) with the mask bits, then an MLP. The
    mask bits let the MLP tell a missing modality from one whose features happen to be 0."""

    def __init__(self, mods: list[str], d: int, dropout: float) -> None:
        super().__init__()
        self.mods = mods
        m = len(mods)
        self.mlp = nn.Sequential(
            nn.Linear(m * d + m, 2 * d), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * d, d)
        )

    def forward(self, h: Feats, mask: Feats) -> Tensor:
        present = _present(mask, self.mods)
        parts = [h[m] * present[:, i : i + 1] for i, m in enumerate(self.mods)]
        return self.mlp(torch.cat([*parts, present], dim=1))


class MidFusion(nn.Module):
    """A small transformer over modality tokens plus a CLS token: cross-modal attention, a
    modality-type embedding, and a key padding mask so that missing modalities are not attended."""

    def __init__(
        self, mods: list[str], d: int, dropout: float, layers: int = 2, heads: int = 4
    ) -> None:
        super().__init__()
        self.mods = mods
        self.type_emb = nn.Parameter(torch.randn(len(mods), d) * 0.02)
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        layer = nn.TransformerEncoderLayer(
            d, heads, 2 * d, dropout, batch_first=True, norm_first=True
        )
        # Nested tensors are a fast path for inference only and warn under training.
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)

    def forward(self, h: Feats, mask: Feats) -> Tensor:
        tokens = torch.stack([h[m] for m in self.mods], dim=1) + self.type_emb  # [B, M, d]
        b = tokens.shape[0]
        x = torch.cat([self.cls.expand(b, -1, -1), tokens], dim=1)
        pad = torch.cat(
            [torch.zeros(b, 1, dtype=torch.bool, device=x.device), _present(mask, self.mods) == 0],
            dim=1,
        )
        return self.norm(self.encoder(x, src_key_padding_mask=pad)[:, 0])


class LateFusion(nn.Module):
    """A head per modality, then a learned weighted average over the modalities present."""

    def __init__(self, mods: list[str], d: int, dropout: float) -> None:
        super().__init__()
        self.mods = mods
        self.heads = nn.ModuleDict(
            {m: nn.Sequential(nn.GELU(), nn.Dropout(dropout), nn.Linear(d, d)) for m in mods}
        )
        self.weight_logits = nn.Parameter(torch.zeros(len(mods)))

    def forward(self, h: Feats, mask: Feats) -> Tensor:
        present = _present(mask, self.mods)
        w = torch.softmax(self.weight_logits, 0) * present
        w = w / w.sum(1, keepdim=True).clamp_min(1e-6)  # renormalise over what is there
        outs = torch.stack([self.heads[m](h[m]) for m in self.mods], dim=1)
        return (w.unsqueeze(-1) * outs).sum(1)


class GatedFusion(nn.Module):
    """Sum of per-modality values, each scaled by a sigmoid gate computed from all modalities."""

    def __init__(self, mods: list[str], d: int, dropout: float) -> None:
        super().__init__()
        self.mods = mods
        m = len(mods)
        self.value = nn.ModuleDict({k: nn.Linear(d, d) for k in mods})
        self.gate = nn.Linear(m * d + m, m * d)
        self.drop = nn.Dropout(dropout)

    def forward(self, h: Feats, mask: Feats) -> Tensor:
        present = _present(mask, self.mods)
        b, d = present.shape[0], h[self.mods[0]].shape[1]
        ctx = torch.cat(
            [*(h[m] * present[:, i : i + 1] for i, m in enumerate(self.mods)), present], 1
        )
        gates = torch.sigmoid(self.gate(ctx)).view(b, len(self.mods), d) * present.unsqueeze(-1)
        values = torch.stack([torch.tanh(self.value[m](h[m])) for m in self.mods], dim=1)
        return self.drop((gates * values).sum(1) / present.sum(1, keepdim=True).clamp_min(1.0))


class BilinearFusion(nn.Module):
    """Low-rank multimodal (bilinear for two inputs) pooling, after Liu et al. 2018 (LMF):
    sum over rank r of the product over modalities of W_m^r [h_m; 1]. A missing modality
    contributes [0; 1], so the product keeps the others' terms instead of collapsing to 0."""

    def __init__(self, mods: list[str], d: int, dropout: float, rank: int = 8) -> None:
        super().__init__()
        self.mods = mods
        self.factors = nn.ParameterDict(
            {m: nn.Parameter(torch.randn(rank, d + 1, d) * (1.0 / math.sqrt(d + 1))) for m in mods}
        )
        self.rank_weights = nn.Parameter(torch.ones(1, rank) / rank)
        self.norm = nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)

    def forward(self, h: Feats, mask: Feats) -> Tensor:
        present = _present(mask, self.mods)
        prod: Tensor | None = None
        for i, m in enumerate(self.mods):
            x = h[m] * present[:, i : i + 1]
            x1 = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)  # [B, d+1]
            z = torch.einsum("bi,rio->rbo", x1, self.factors[m])  # [R, B, d]
            prod = z if prod is None else prod * z
        assert prod is not None
        fused = torch.einsum("xr,rbo->bo", self.rank_weights, prod)
        return self.drop(self.norm(fused))


def make_fusion(kind: str, mods: list[str], d: int, dropout: float) -> nn.Module:
    table: dict[str, Any] = {
        "early": EarlyFusion,
        "mid": MidFusion,
        "late": LateFusion,
        "gated": GatedFusion,
        "bilinear": BilinearFusion,
    }
    if kind not in table:
        raise ValueError(f"unknown fusion {kind!r}; known: {list(FUSIONS)}")
    return table[kind](mods, d, dropout)


class FusionModel(nn.Module):
    """Features per modality -> L2-normalised embeddings per modality and fused (one shared
    space, CLIP-style learned temperature), plus class logits when ``n_classes`` > 0."""

    def __init__(
        self,
        dims: dict[str, int],
        fusion: str = "mid",
        *,
        d: int = 256,
        embed_dim: int = 128,
        n_classes: int = 0,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.mods: list[str] = [m for m in ("image", "text", "audio") if m in dims]
        self.dims, self.fusion_kind, self.n_classes = dict(dims), fusion, n_classes
        self.proj = nn.ModuleDict({m: Projector(dims[m], d, dropout) for m in self.mods})
        self.embed = nn.ModuleDict({m: nn.Linear(d, embed_dim) for m in self.mods})
        self.fusion = make_fusion(fusion, self.mods, d, dropout)
        self.fused_embed = nn.Linear(d, embed_dim)
        self.classifier = nn.Linear(d, n_classes) if n_classes else None
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def set_feature_stats(self, stats: dict[str, tuple[Any, Any]]) -> None:
        """Standardise each modality's features by the training split's figures."""
        for m, proj in self.proj.items():
            if m in stats and isinstance(proj, Projector):
                proj.set_stats(*stats[m])

    def forward(self, feats: Feats, mask: Feats, single: bool = False) -> dict[str, Any]:
        """``single``: also the logits from each modality alone (``single_logits``), what
        eval scores as that modality's accuracy, for the per-modality loss."""
        h = {m: self.proj[m](feats[m]) for m in self.mods}
        fused = self.fusion(h, mask)
        out: dict[str, Any] = {
            "emb": {m: F.normalize(self.embed[m](h[m]), dim=-1) for m in self.mods},
            "fused": F.normalize(self.fused_embed(fused), dim=-1),
        }
        if self.classifier is not None:
            out["logits"] = self.classifier(fused)
            if single:
                out["single_logits"] = {
                    m: self.classifier(self.fusion(h, _only(mask, m))) for m in self.mods
                }
        return out


def _only(mask: Feats, keep: str) -> Feats:
    """The mask with every modality but ``keep`` marked missing."""
    return {m: v if m == keep else torch.zeros_like(v) for m, v in mask.items()}


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
) -> tuple[Tensor, dict[str, Tensor]]:
    """Contrastive loss over every modality pair plus classification: the multi-task loss.
    ``w_single`` weighs classification from each modality alone (``single_logits``)."""
    parts: dict[str, Tensor] = {}
    mods = model.mods
    for i, a in enumerate(mods):
        for b in mods[i + 1 :]:
            parts[f"nce_{a}_{b}"] = info_nce(
                out["emb"][a], out["emb"][b], model.logit_scale, mask[a] & mask[b]
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
