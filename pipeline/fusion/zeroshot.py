"""The fusion of a zero-shot run: a paired model's towers already share a space."""

from __future__ import annotations

from typing import Any


def zero_shot_module(dims: dict[str, int]) -> Any:
    """The fusion of a zero-shot run: no parameters. Each modality's embedding is its tower's
    output, L2-normalised; the fused embedding is the normalised mean of those present."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    mods = [m for m in ("image", "text", "audio") if m in dims]

    class ZeroShot(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mods = mods

        def forward(self, feats: dict[str, Any], mask: dict[str, Any]) -> dict[str, Any]:
            emb = {m: F.normalize(feats[m].float(), dim=-1) for m in self.mods}
            present = torch.stack([mask[m] for m in self.mods], dim=1).float()  # [B, M]
            total = torch.stack(
                [emb[m] * present[:, i : i + 1] for i, m in enumerate(self.mods)]
            ).sum(0)
            return {"emb": emb, "fused": F.normalize(total, dim=-1)}

    return ZeroShot()
