"""`mmpipe export`: the embedding model as TorchScript, with tensors in and tensors out."""

from __future__ import annotations

import io
import os
from typing import Any

from pipeline.artifact import TORCHSCRIPT_FILE, ModelInfo, RunArtifact
from pipeline.io.fs import join, write_bytes_atomic
from pipeline.models.weights import torchscript_quietly


def serving_module(model: Any) -> Any:
    """Wrap a FusionModel with positional tensors: (features, masks) per modality in the
    order image, text, audio as the model has them -> (fused, emb per modality...)."""
    import torch

    class Serving(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner, self.mods = inner, list(inner.mods)

        def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
            n = len(self.mods)
            feats = {m: xs[i] for i, m in enumerate(self.mods)}
            masks = {m: xs[n + i] for i, m in enumerate(self.mods)}
            out = self.inner(feats, masks)
            return (out["fused"], *(out["emb"][m] for m in self.mods))

    return Serving(model).eval()


def example_inputs(info: ModelInfo | dict[str, Any], n: int = 4) -> tuple[Any, ...]:
    """A batch of ``n`` random inputs in the serving order (``model.json`` or its mapping)."""
    import torch

    if isinstance(info, dict):
        info = ModelInfo.from_json(info)

    g = torch.Generator().manual_seed(0)
    mods = info.modalities  # the model's order
    if info.preset:  # end-to-end: raw pixels and token ids
        s, length = info.image_size, info.max_text_tokens
        feats = [
            torch.randint(0, 256, (n, 3, s, s), generator=g).to(torch.uint8),  # raw pixels
            torch.randint(1000, 2000, (n, length), generator=g),
        ]
    else:
        feats = [torch.randn(n, info.dims[m], generator=g) for m in mods]
    masks = [torch.rand(n, generator=g) > 0.3 for _ in mods]
    for mk in masks:
        mk[0] = True
    return (*feats, *masks)


def export_torchscript(run_dir: str, output: str | None = None) -> str:
    """Trace the model and check that the traced outputs equal the eager ones before writing."""
    import torch

    art = RunArtifact.open(run_dir)
    model, info = art.load(), art.info
    wrapped = serving_module(model)
    ex = example_inputs(info)
    with torch.no_grad(), torchscript_quietly():
        traced = torch.jit.trace(wrapped, ex, check_trace=False)
        probe = example_inputs(info, n=7)  # a different batch size than traced with
        for a, b in zip(wrapped(*probe), traced(*probe)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    buf = io.BytesIO()
    with torchscript_quietly():
        torch.jit.save(traced, buf)
    out = output or join(run_dir, TORCHSCRIPT_FILE)
    write_bytes_atomic(out, buf.getvalue())
    return out if "://" in out else os.path.abspath(out)
