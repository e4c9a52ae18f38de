"""The fusion model as exporters trace it: positional tensors in, a tuple of outputs out."""

from __future__ import annotations

from typing import Any


def serving_module(model: Any, logits: bool = False) -> Any:
    """Wrap a FusionModel with positional tensors: (features, masks) per modality in the
    order image, text, audio as the model has them -> (fused, emb per modality...), and the
    class logits last when ``logits``."""
    import torch

    class Serving(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner, self.mods, self.logits = inner, list(inner.mods), logits

        def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
            n = len(self.mods)
            feats = {m: xs[i] for i, m in enumerate(self.mods)}
            masks = {m: xs[n + i] for i, m in enumerate(self.mods)}
            out = self.inner(feats, masks)
            tail = (out["logits"],) if self.logits else ()
            return (out["fused"], *(out["emb"][m] for m in self.mods), *tail)

    return Serving(model).eval()
