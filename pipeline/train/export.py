"""`mmpipe export`: the run as TorchScript and ONNX in RUN/export/, each checked against eager."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from typing import Any

from pipeline.errors import UserError
from pipeline.fusion.artifact import (
    EXPORT_DIR,
    EXPORT_FILE,
    INFO_FILE,
    TORCHSCRIPT_FILE,
    ModelInfo,
    RunArtifact,
)
from pipeline.io.fs import check_output, exists, join, write_bytes_atomic
from pipeline.models.weights import torchscript_quietly
from pipeline.progress import Progress
from pipeline.train.serving import serving_module

FORMATS = ("both", "onnx", "torchscript")


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


def torchscript_bytes(art: RunArtifact, tolerance: float = 1e-5) -> tuple[bytes, float]:
    """Trace the model; the traced outputs must equal the eager ones on another batch size.

    Raises:
        UserError: they differ by more than ``tolerance``.
    """
    import torch

    model, info = art.load(), art.info
    wrapped = serving_module(model)
    ex = example_inputs(info)
    with torch.no_grad(), torchscript_quietly():
        traced = torch.jit.trace(wrapped, ex, check_trace=False)
        probe = example_inputs(info, n=7)  # a different batch size than traced with
        diff = max(float((a - b).abs().max()) for a, b in zip(wrapped(*probe), traced(*probe)))
    if diff > tolerance:
        raise UserError(
            f"the traced TorchScript model differs from the eager one by {diff:.3g} (tolerance "
            f"{tolerance:g}); nothing was written (use --format onnx)"
        )
    buf = io.BytesIO()
    with torchscript_quietly():
        torch.jit.save(traced, buf)
    return buf.getvalue(), diff


def export_torchscript(run_dir: str, output: str | None = None) -> str:
    """The TorchScript file alone (default ``RUN/export/model.torchscript.pt``)."""
    art = RunArtifact.open(run_dir)
    out = output or join(art.run_dir, EXPORT_DIR, TORCHSCRIPT_FILE)
    write_bytes_atomic(out, torchscript_bytes(art)[0])
    return _shown(out)


def export_run(
    run_dir: str,
    fmt: str = "both",
    output: str | None = None,
    *,
    tolerance: float | None = None,
    encoders: bool = True,
    quiet: bool = False,
) -> dict[str, Any]:
    """Every graph of ``fmt`` into ``output`` (default ``RUN/export``), checked before any file
    is written; ``export.json`` (graphs, exporters, differences) is written last.

    Raises:
        UserError: an unknown format, or a graph that fails its parity check.
    """
    from pipeline.train import onnx_export

    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r} is unknown; use one of {', '.join(FORMATS)}")
    if tolerance is not None and not tolerance >= 0:  # NaN too
        raise UserError(f"--tolerance {tolerance} must be 0 or more (default 1e-4)")
    if not exists(join(run_dir, INFO_FILE)) and not run_dir.endswith((".pt", ".onnx")):
        raise UserError(f"{run_dir} holds no run of mmpipe train (model.json); pass its folder")
    art = RunArtifact.open(run_dir)
    if art.kind != "state_dict":
        raise UserError(f"{run_dir} is an export already; pass the run directory")
    out = output or join(art.run_dir, EXPORT_DIR)
    check_output(out)  # a file in the way fails now, not after a minute of exporting
    tol = onnx_export.TOLERANCE if tolerance is None else tolerance
    files: dict[str, bytes] = {}
    graphs: dict[str, Any] = {}
    with Progress("export", unit="graphs", quiet=quiet) as progress:
        if fmt in ("both", "torchscript"):
            progress.phase("tracing TorchScript and checking it against the eager model")
            files[TORCHSCRIPT_FILE], diff = torchscript_bytes(art)
            graphs[TORCHSCRIPT_FILE] = {"format": "torchscript", "max_abs_diff": {"all": diff}}
        if fmt in ("both", "onnx"):
            progress.phase("exporting ONNX graphs and checking each with onnxruntime")
            blobs, meta = onnx_export.export_graphs(art, encoders=encoders, tolerance=tol)
            files.update(blobs)
            graphs.update({k: {"format": "onnx", **v} for k, v in meta.items()})
    for name, blob in files.items():
        write_bytes_atomic(join(out, name), blob)
        graphs[name]["sha256"] = hashlib.sha256(blob).hexdigest()
    record = {
        "run": art.run_dir,
        "run_version": art.version,
        "formats": fmt,
        "tolerance": tol,
        "opset": onnx_export.OPSET if fmt != "torchscript" else None,
        "checked_with": _versions(),
        "graphs": graphs,
    }
    write_bytes_atomic(join(out, EXPORT_FILE), json.dumps(record, indent=2).encode())
    return {"output": _shown(out), **record}


def _versions() -> dict[str, str]:
    import torch

    found: dict[str, str] = {"torch": str(torch.__version__)}
    with contextlib.suppress(ImportError):
        import onnx
        import onnxruntime

        found.update(onnx=onnx.__version__, onnxruntime=onnxruntime.__version__)
    return found


def _shown(path: str) -> str:
    return path if "://" in path else os.path.abspath(path)
