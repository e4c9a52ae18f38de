"""ONNX graphs of a run (fusion model, feature encoders, projection heads), checked with onnxruntime."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pipeline.errors import UserError
from pipeline.fusion.artifact import RunArtifact

OPSET = 18  # the dynamo exporter's floor; onnxruntime 1.18+ runs it on every provider
# Max abs difference allowed between onnxruntime (CPU, fp32) and the eager model, per output.
# Graph rewrites reorder float sums: ~1e-7 on unit-norm embeddings, ~1e-5 on CNN features.
TOLERANCE = 1e-4


@dataclass
class Graph:
    """A module to export: example inputs to trace with, a held-out batch to check on."""

    name: str  # the file stem: model, image_encoder, head_text, ...
    module: Any
    inputs: list[str]
    outputs: list[str]
    example: tuple[Any, ...]
    probe: tuple[Any, ...]  # another batch size, rows with missing modalities


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters print progress, warnings, constant-folding notes and, from C++, whole
    graphs; errors still raise, and the caller words them."""
    loggers = [
        logging.getLogger(n)
        for n in ("torch.onnx", "onnxscript", "onnx_ir", "torch", "torch.__trace")
    ]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    sys.stdout.flush(), sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    sink = io.StringIO()
    try:
        with tempfile.TemporaryFile() as trash:
            os.dup2(trash.fileno(), 1), os.dup2(trash.fileno(), 2)
            with (
                warnings.catch_warnings(),
                contextlib.redirect_stdout(sink),
                contextlib.redirect_stderr(sink),
            ):
                warnings.simplefilter("ignore")
                yield
    finally:
        os.dup2(saved[0], 1), os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _dynamic_batch(g: Graph, batch: Any) -> tuple[Any, ...]:
    """Axis 0 of every input is the batch; a ``forward(*xs)`` takes them as one argument."""
    import inspect

    per_input = tuple({0: batch} for _ in g.inputs)
    params = inspect.signature(g.module.forward).parameters.values()
    varargs = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params)
    return (per_input,) if varargs else per_input


def to_onnx(g: Graph) -> tuple[bytes, str]:
    """The serialised graph with a dynamic batch axis, and which exporter made it: torch's
    dynamo exporter first; the TorchScript-based one where dynamo cannot capture the module."""
    import onnx
    import torch

    try:
        batch = torch.export.Dim("batch", min=1)
        with _quiet(), torch.no_grad():
            program = torch.onnx.export(
                g.module,
                g.example,
                None,
                dynamo=True,
                input_names=g.inputs,
                output_names=g.outputs,
                dynamic_shapes=_dynamic_batch(g, batch),
                opset_version=OPSET,
                optimize=True,
                verbose=False,
            )
        assert program is not None  # f=None: the program is returned, not written
        proto, exporter = program.model_proto, "dynamo"
    except Exception as first:  # the fallback below raises its own error if it fails too
        try:
            with _quiet(), torch.no_grad(), tempfile.TemporaryDirectory() as tmp:
                torch.onnx.export(
                    g.module,
                    g.example,
                    os.path.join(tmp, "graph.onnx"),
                    dynamo=False,
                    input_names=g.inputs,
                    output_names=g.outputs,
                    dynamic_axes={n: {0: "batch"} for n in (*g.inputs, *g.outputs)},
                    opset_version=OPSET,
                )
                proto = onnx.load(os.path.join(tmp, "graph.onnx"))
        except Exception as second:
            raise UserError(
                f"cannot export {g.name} to ONNX: dynamo: {str(first).splitlines()[0][:200]}; "
                f"torchscript: {str(second).splitlines()[0][:200]}; use --format torchscript"
            ) from None
        exporter = "torchscript"
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString(), exporter


def run_session(blob: bytes, feeds: dict[str, Any], providers: list[Any] | None = None) -> list:
    """onnxruntime on ``feeds`` (numpy arrays by input name): the outputs in graph order."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # warnings about unused initialisers are not the user's concern
    sess = ort.InferenceSession(blob, opts, providers=providers or ["CPUExecutionProvider"])
    return list(sess.run(None, feeds))


def parity(g: Graph, blob: bytes) -> dict[str, float]:
    """Max abs difference per output between onnxruntime (CPU) and the eager module, on the
    held-out batch (a batch size the graph was not traced with)."""
    import numpy as np
    import torch

    feeds = {n: x.numpy() for n, x in zip(g.inputs, g.probe)}
    with torch.no_grad():
        ref = g.module(*g.probe)
    ref = ref if isinstance(ref, tuple | list) else (ref,)
    got = run_session(blob, feeds)
    return {
        n: float(np.abs(np.asarray(a, np.float64) - b.double().numpy()).max())
        for n, a, b in zip(g.outputs, got, ref)
    }


def _masks(n: int, mods: list[str], seed: int) -> list[Any]:
    """Masks with rows where each modality is missing, and a row with all of them."""
    import torch

    g = torch.Generator().manual_seed(seed)
    masks = [torch.rand(n, generator=g) > 0.3 for _ in mods]
    for i, mk in enumerate(masks):
        mk[0] = True  # row 0: everything present
        if n > 1:
            mk[1 + i % (n - 1)] = False  # each modality missing somewhere
    return masks


def _model_inputs(art: RunArtifact, n: int, seed: int) -> tuple[Any, ...]:
    """Serving inputs as embed builds them: absent rows are zeros (features) or padding."""
    import torch

    info, mods = art.info, art.modalities
    g = torch.Generator().manual_seed(seed)
    masks = _masks(n, mods, seed)
    if info.preset:  # end to end: raw uint8 pixels and token ids
        s, length = info.image_size, info.max_text_tokens
        image = torch.randint(0, 256, (n, 3, s, s), generator=g).to(torch.uint8)
        ids = torch.randint(1000, 2000, (n, length), generator=g)
        ids[:, length // 2 :] = 0  # padding, as the tokenizer leaves it
        feats = [image, ids]
    else:
        feats = [torch.randn(n, info.dims[m], generator=g) for m in mods]
    for x, mk in zip(feats, masks):
        x[~mk] = 0
    return (*feats, *masks)


def model_graph(art: RunArtifact, model: Any) -> Graph:
    """The fusion model (or an end-to-end preset with its encoders inside): per-modality
    inputs and their masks -> the fused embedding, one per modality, and class logits."""
    from pipeline.train.serving import serving_module

    mods = art.modalities
    logits = bool(art.info.label_field and art.info.classes)
    outputs = ["fused", *(f"{m}_emb" for m in mods), *(["logits"] if logits else [])]
    return Graph(
        "model",
        serving_module(model, logits=logits),
        [*mods, *(f"{m}_mask" for m in mods)],
        outputs,
        _model_inputs(art, 4, 0),
        _model_inputs(art, 7, 1),
    )


def head_graphs(art: RunArtifact, model: Any) -> list[Graph]:
    """Per modality, features -> its L2-normalised embedding: what a query needs (search)."""
    import torch
    import torch.nn.functional as F

    class Head(torch.nn.Module):
        def __init__(self, inner: Any, m: str) -> None:
            super().__init__()
            self.proj, self.embed = inner.proj[m], inner.embed[m]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.normalize(self.embed(self.proj(x)), dim=-1)

    g = torch.Generator().manual_seed(2)
    out = []
    for m in art.modalities:
        d = art.info.dims[m]
        ex, probe = torch.randn(4, d, generator=g), torch.randn(7, d, generator=g)
        out.append(Graph(f"head_{m}", Head(model, m).eval(), [m], [f"{m}_emb"], (ex,), (probe,)))
    return out


def encoder_graphs(art: RunArtifact) -> list[Graph]:
    """The frozen encoders the run's features came from, with the inputs preprocessing gives
    them: normalised pixels, token ids and attention mask, log-mel frames."""
    import torch

    from pipeline.features.stages import EncodeStage
    from pipeline.models.encoders import is_foreign
    from pipeline.preprocess.image import IMAGE_PRESETS

    cfg = art.features_config(device="cpu")
    stage = EncodeStage(cfg)
    stage.ensure_setup()
    art.check_encoders(
        {
            m: {"encoder": e.encoder_id, "weights": e.weights_id, "dim": e.dim}
            for m, e in stage.encoders.items()
        }
    )
    g = torch.Generator().manual_seed(3)

    def inputs(m: str, n: int) -> tuple[Any, ...]:
        if m == "image":
            s = IMAGE_PRESETS[stage.encoders[m].preset or "imagenet"].size
            return (torch.randn(n, 3, s, s, generator=g),)
        if m == "text":  # half the positions are padding, as the tokenizer leaves them
            length = cfg.max_text_tokens
            ids = torch.randint(1000, 2000, (n, length), generator=g)
            return ids, (torch.arange(length) < length // 2).long().repeat(n, 1)
        return (torch.randn(n, cfg.log_mel().n_mels, cfg.audio_frames, generator=g),)

    names = {"image": ["pixel_values"], "text": ["input_ids", "attention_mask"]}
    # A user's own transformers or open_clip tower stays with its library (embed runs it
    # eagerly beside the ONNX model): its inputs are the library's, not ours.
    return [
        Graph(
            f"{m}_encoder",
            enc.model.eval(),
            names.get(m, ["log_mel"]),
            ["emb"],
            inputs(m, 2),
            inputs(m, 3),
        )
        for m, enc in stage.encoders.items()
        if not is_foreign(getattr(cfg, m).name)
    ]


def export_graphs(
    art: RunArtifact, *, encoders: bool = True, tolerance: float = TOLERANCE
) -> tuple[dict[str, bytes], dict[str, Any]]:
    """Every graph of the run, in memory and checked: ``{file: bytes}`` and, per graph, its
    inputs, outputs, exporter and max abs differences (``export.json``). Nothing is written
    here, so a failed check leaves no file behind.

    Raises:
        UserError: a graph differs from the eager model by more than ``tolerance``.
    """
    model = art.load()
    graphs = [model_graph(art, model)]
    if not art.info.preset:
        graphs += head_graphs(art, model)
        if encoders:
            graphs += encoder_graphs(art)
    files, meta = {}, {}
    for g in graphs:
        blob, exporter = to_onnx(g)
        diffs = parity(g, blob)
        worst = max(diffs, key=lambda k: diffs[k])
        if diffs[worst] > tolerance:
            raise UserError(
                f"ONNX {g.name}.onnx differs from the eager model: max abs difference "
                f"{diffs[worst]:.3g} in {worst!r} exceeds the tolerance {tolerance:g}; nothing "
                "was written (raise --tolerance, or use --format torchscript)"
            )
        files[f"{g.name}.onnx"] = blob
        meta[f"{g.name}.onnx"] = {
            "inputs": g.inputs,
            "outputs": g.outputs,
            "exporter": exporter,
            "max_abs_diff": diffs,
            "bytes": len(blob),
        }
    return files, meta
