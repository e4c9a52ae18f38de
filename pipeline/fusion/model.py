"""FusionModel: per-modality projections, five fusion types, a shared embedding space, a classifier."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FUSIONS = ("early", "mid", "late", "gated", "bilinear")
CANONICAL_DIMS = 16  # canonical directions an Agreement keeps per pair (pipeline/train/cca.py)
AGREEMENT_GAIN = 5.0  # standardised cosines are multiplied by this before the classifier
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


class Agreement(nn.Module):
    """How far each pair of modalities agrees, in a canonical (CCA) space fitted in closed form
    before training on the rows whose labels mark matching pairs: one standardised cosine per
    pair. Buffers, like the projectors' statistics: they travel with the weights."""

    def __init__(self, pairs: list[tuple[str, str]], dims: dict[str, int], k: int) -> None:
        super().__init__()
        self.pairs = pairs
        for a, b in pairs:
            for m in (a, b):
                self.register_buffer(f"{a}_{b}_{m}_mean", torch.zeros(dims[m]))
                self.register_buffer(f"{a}_{b}_{m}_proj", torch.zeros(dims[m], k))
            self.register_buffer(f"{a}_{b}_stats", torch.tensor([0.0, 1.0]))  # shift, 1/std

    def set_fits(self, fits: dict[str, Any]) -> None:
        """``fits``: pair name "a~b" -> (mean_a, proj_a, mean_b, proj_b, shift, inv_std)."""
        for a, b in self.pairs:
            ma, pa, mb, pb, shift, inv = fits[f"{a}~{b}"]
            for m, mean, proj in ((a, ma, pa), (b, mb, pb)):
                getattr(self, f"{a}_{b}_{m}_mean").copy_(torch.as_tensor(mean))
                buf = getattr(self, f"{a}_{b}_{m}_proj")
                buf.zero_()  # fewer canonical directions than k: the rest stay 0
                p = torch.as_tensor(proj, dtype=buf.dtype)
                buf[:, : p.shape[1]] = p
            getattr(self, f"{a}_{b}_stats").copy_(torch.tensor([float(shift), float(inv)]))

    def forward(self, feats: Feats, mask: Feats) -> list[Tensor]:
        out = []
        for a, b in self.pairs:
            u = (feats[a] - getattr(self, f"{a}_{b}_{a}_mean")) @ getattr(self, f"{a}_{b}_{a}_proj")
            v = (feats[b] - getattr(self, f"{a}_{b}_{b}_mean")) @ getattr(self, f"{a}_{b}_{b}_proj")
            cos = F.cosine_similarity(u, v, dim=-1, eps=1e-8).unsqueeze(-1)
            stats = getattr(self, f"{a}_{b}_stats")
            shift, inv = stats[0], stats[1]  # indexed: iterating a tensor warns under tracing
            # A missing pair: no evidence either way (where, not a product: whatever a missing
            # modality's features hold, even NaN, stays out). The gain lets a classifier whose
            # weights start near 0 read the agreement from its first steps, before the fused
            # features (chance for such a label) are memorised: 5 measured 0.809 / 0.809 on
            # two seeds, 1 0.795 / 0.775, 20 0.798 / 0.831 (docs/benchmarks.md).
            both = (mask[a] & mask[b]).unsqueeze(-1)
            agree = (cos - shift) * inv * AGREEMENT_GAIN
            out.append(torch.where(both, agree, torch.zeros_like(agree)))
        return out


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
        relations: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.mods: list[str] = [m for m in ("image", "text", "audio") if m in dims]
        self.dims, self.fusion_kind, self.n_classes = dict(dims), fusion, n_classes
        self.proj = nn.ModuleDict({m: Projector(dims[m], d, dropout) for m in self.mods})
        self.embed = nn.ModuleDict({m: nn.Linear(d, embed_dim) for m in self.mods})
        self.fusion = make_fusion(fusion, self.mods, d, dropout)
        self.fused_embed = nn.Linear(d, embed_dim)
        # relations ("image~audio", ...): pairs whose agreement the label depends on (a spoken
        # digit that is or is not the written one), found before training
        # (pipeline/train/matching.py). The classifier then also sees, per pair, the product
        # of the two shared-space embeddings and the pair's cosine in a closed-form canonical
        # space: no fusion of what each modality says alone can read such a label.
        self.pairs = [_pair(p) for p in relations] if n_classes else []
        self.agreement = Agreement(self.pairs, dims, CANONICAL_DIMS) if self.pairs else None
        width = d + len(self.pairs) * (embed_dim + 1)
        self.classifier = nn.Linear(width, n_classes) if n_classes else None
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
        emb = {m: F.normalize(self.embed[m](h[m]), dim=-1) for m in self.mods}
        out: dict[str, Any] = {"emb": emb, "fused": F.normalize(self.fused_embed(fused), dim=-1)}
        if self.classifier is not None:
            out["logits"] = self._classify(fused, feats, emb, mask)
            if single:
                out["single_logits"] = {
                    m: self._classify(self.fusion(h, _only(mask, m)), feats, emb, _only(mask, m))
                    for m in self.mods
                }
        return out

    def set_relations(self, fits: dict[str, Any]) -> None:
        """The canonical space of each relation, fitted before training."""
        if self.agreement is not None:
            self.agreement.set_fits(fits)

    def _classify(self, fused: Tensor, feats: Feats, emb: Feats, mask: Feats) -> Tensor:
        assert self.classifier is not None
        if self.agreement is None:
            return self.classifier(fused)
        parts = [fused]
        for a, b in self.pairs:
            # Scaled so that each product is of order 1 where the pair agrees, as the fused
            # features are: unscaled (~1/embed_dim each) the classifier ignored them.
            prod = emb[a] * emb[b] * emb[a].shape[-1]
            both = (mask[a] & mask[b]).unsqueeze(-1)
            parts.append(torch.where(both, prod, torch.zeros_like(prod)))
        parts.extend(self.agreement(feats, mask))
        return self.classifier(torch.cat(parts, dim=-1))


def _pair(name: str) -> tuple[str, str]:
    a, b = name.split("~")
    return a, b


def _only(mask: Feats, keep: str) -> Feats:
    """The mask with every modality but ``keep`` marked missing."""
    return {m: v if m == keep else torch.zeros_like(v) for m, v in mask.items()}
