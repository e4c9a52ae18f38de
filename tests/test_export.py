"""mmpipe export: ONNX graphs of every fusion type and preset, checked with onnxruntime."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from pipeline.cli import main
from pipeline.fusion.artifact import RunArtifact
from pipeline.fusion.model import FUSIONS
from pipeline.train import onnx_export
from pipeline.train.export import export_run
from pipeline.train.serving import serving_module
from tests.onnx_runs import make_run


def _batch(art: RunArtifact, n: int, seed: int) -> tuple[torch.Tensor, ...]:
    return onnx_export._model_inputs(art, n, seed)


def _onnx_equals_eager(art: RunArtifact, path, n: int) -> float:
    """Run the written file in onnxruntime against the eager model on a fresh batch."""
    from pipeline.models.onnx_runtime import OnnxModel

    graph = OnnxModel(path.read_bytes())
    xs = _batch(art, n, seed=10 + n)
    logits = bool(art.info.classes)
    with torch.no_grad():
        ref = serving_module(art.load(), logits=logits)(*xs)
    got = graph(*xs)
    assert graph.outputs[: 1 + len(art.modalities)] == [
        "fused",
        *(f"{m}_emb" for m in art.modalities),
    ]
    return max(float((a - b).abs().max()) for a, b in zip(got, ref))


@pytest.mark.parametrize("fusion", FUSIONS)
def test_every_fusion_type_exports_to_onnx_with_a_dynamic_batch(tmp_path, fusion):
    run = make_run(tmp_path / "run", fusion)
    done = export_run(str(run), "onnx", encoders=False)
    out = run / "export"
    names = {"model.onnx", *(f"head_{m}.onnx" for m in ("image", "text", "audio"))}
    assert {p.name for p in out.glob("*.onnx")} == names
    record = json.loads((out / "export.json").read_text())
    assert record == {k: v for k, v in done.items() if k != "output"}
    assert set(record["graphs"]) == names and "model.torchscript.pt" not in record["graphs"]
    for name in names:
        onnx.checker.check_model(str(out / name), full_check=True)
        assert max(record["graphs"][name]["max_abs_diff"].values()) <= onnx_export.TOLERANCE
    art = RunArtifact.open(str(run))
    # Batch sizes it was not traced with, rows with missing modalities (zeros, mask off).
    for n in (1, 9):
        assert _onnx_equals_eager(art, out / "model.onnx", n) < 1e-4
    # The classifier is an output too.
    graph = onnx.load(str(out / "model.onnx"))
    assert [o.name for o in graph.graph.output][-1] == "logits"
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a named batch axis


def test_a_model_that_relates_modalities_exports_both_formats(tmp_path):
    # The agreement of each related pair (a fixed canonical space, the embeddings' product)
    # is part of the graph: both formats must equal eager PyTorch on it.
    run = make_run(tmp_path / "run", "late", relations=("image~audio",))
    art = RunArtifact.open(str(run))
    assert art.info.relations == ("image~audio",)
    assert any("agreement" in k for k in art.load().state_dict())
    done = export_run(str(run), "both", encoders=False)
    out = run / "export"
    assert max(done["graphs"]["model.onnx"]["max_abs_diff"].values()) <= onnx_export.TOLERANCE
    for n in (1, 9):
        assert _onnx_equals_eager(art, out / "model.onnx", n) < 1e-4


@pytest.mark.parametrize("preset", ["cnn_lstm", "attn_conv"])
def test_the_end_to_end_presets_export_both_formats(tmp_path, preset):
    run = make_run(tmp_path / "run", "mid", preset)
    rc = main(["export", str(run)])
    assert rc == 0
    out = run / "export"
    assert {p.name for p in out.iterdir()} == {"model.onnx", "model.torchscript.pt", "export.json"}
    art = RunArtifact.open(str(out / "model.onnx"))
    assert art.kind == "onnx" and art.run_dir == str(run)
    assert _onnx_equals_eager(RunArtifact.open(str(run)), out / "model.onnx", 5) < 1e-4
    ts = RunArtifact.open(str(out / "model.torchscript.pt"))
    assert ts.kind == "torchscript" and ts.run_version == art.run_version


@pytest.mark.slow
def test_the_finetune_preset_exports_with_its_encoders_inside(tmp_path):
    run = make_run(tmp_path / "run", "mid", "finetune")
    record = export_run(str(run), "onnx")
    assert set(record["graphs"]) == {"model.onnx"}
    art = RunArtifact.open(str(run))
    assert _onnx_equals_eager(art, run / "export" / "model.onnx", 3) < 1e-4


def test_the_encoders_and_heads_export_and_equal_the_features_stage(tmp_path):
    from pipeline.features.config import FeaturesConfig
    from pipeline.features.stages import encoder_info
    from pipeline.models.onnx_runtime import OnnxModel
    from tests.onnx_runs import FEATURES

    run = make_run(tmp_path / "run", "gated", encoders=encoder_info(FeaturesConfig(**FEATURES)))
    record = export_run(str(run), "onnx")
    out = run / "export"
    for m in ("image", "text", "audio"):
        assert record["graphs"][f"{m}_encoder.onnx"]["exporter"] == "dynamo"
    stage = onnx_export.encoder_graphs(RunArtifact.open(str(run)))
    for g in stage:
        graph = OnnxModel((out / f"{g.name}.onnx").read_bytes())
        xs = tuple(torch.cat([x, x[:1]]) for x in g.probe)  # 4 rows: another batch size
        with torch.no_grad():
            ref = g.module(*xs)
        np.testing.assert_allclose(graph(*xs).numpy(), ref.numpy(), atol=1e-4)
    # A head is the modality's path through the model: features -> its embedding.
    art = RunArtifact.open(str(run))
    xs = _batch(art, 6, seed=4)
    with torch.no_grad():
        embs = serving_module(art.load())(*xs)
    head = OnnxModel((out / "head_text.onnx").read_bytes())
    np.testing.assert_allclose(head(xs[1]).numpy(), embs[2].numpy(), atol=1e-5)


@pytest.mark.parametrize("name", ["resemblyzer", "mel_stats"])  # the default, and the stats
def test_the_offline_audio_encoders_export_with_their_padding_rule(tmp_path, name):
    from pipeline.features.config import FeaturesConfig
    from pipeline.features.stages import encoder_info
    from pipeline.models.onnx_runtime import OnnxModel
    from tests.onnx_runs import FEATURES

    feats = {**FEATURES, "image": None, "text": None, "audio": {"name": name}}
    run = make_run(tmp_path / "run", features=feats, encoders=encoder_info(FeaturesConfig(**feats)))
    export_run(str(run), "onnx")
    graph = OnnxModel((run / "export" / "audio_encoder.onnx").read_bytes())
    (g,) = onnx_export.encoder_graphs(RunArtifact.open(str(run)))
    mel = torch.cat([g.probe[0], g.probe[0][:1]])
    mel[1, :, 40:] = float(np.log(1e-6))  # a short clip: the rest is padding
    with torch.no_grad():
        np.testing.assert_allclose(graph(mel).numpy(), g.module(mel).numpy(), atol=1e-4)


def test_a_graph_that_differs_from_eager_fails_in_one_line_and_writes_nothing(
    tmp_path, monkeypatch, capsys
):
    run = make_run(tmp_path / "run", "late")
    real = onnx_export.run_session

    def off_by_a_bit(blob, feeds, providers=None):
        return [a + 1e-2 for a in real(blob, feeds, providers)]

    monkeypatch.setattr(onnx_export, "run_session", off_by_a_bit)
    rc = main(["export", str(run), "--no-encoders"])
    # The progress lines of the work before it, then the error: one line, no traceback.
    err = [x for x in capsys.readouterr().err.strip().splitlines() if not x.startswith("[export]")]
    assert rc == 2 and len(err) == 1, err
    assert "model.onnx differs from the eager model" in err[0] and "0.01" in err[0]
    assert "tolerance 0.0001" in err[0] and "Traceback" not in err[0]
    assert not (run / "export").exists()
    # A looser tolerance is the user's call, and is recorded.
    assert main(["export", str(run), "--no-encoders", "--tolerance", "0.05"]) == 0
    record = json.loads((run / "export" / "export.json").read_text())
    assert record["tolerance"] == 0.05
    assert record["graphs"]["model.onnx"]["max_abs_diff"]["fused"] == pytest.approx(1e-2, 1e-3)
    # A head is not a model that embed can run: refused in one line.
    from pipeline.embed.model import EmbeddingModel
    from pipeline.errors import UserError

    with pytest.raises(UserError, match=r"not the model graph .*pass RUN/export/model.onnx"):
        EmbeddingModel(RunArtifact.open(str(run / "export" / "head_text.onnx")), "cpu")


def test_export_refuses_an_export_and_an_unknown_format(tmp_path, capsys):
    run = make_run(tmp_path / "run", "early")
    assert main(["export", str(run), "--format", "torchscript"]) == 0
    assert (run / "export" / "model.torchscript.pt").exists()
    assert not (run / "export" / "model.onnx").exists()
    capsys.readouterr()
    assert main(["export", str(run / "export" / "model.torchscript.pt")]) == 2
    assert "is an export already" in capsys.readouterr().err
    for bad in (["--tolerance", "-1"], ["--output", str(run / "model.json")]):
        assert main(["export", str(run), *bad]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert main(["export", str(tmp_path / "nothing")]) == 2
    assert "holds no run of mmpipe train" in capsys.readouterr().err


@pytest.mark.skipif(
    not torch.cuda.is_available()
    or "CUDAExecutionProvider" not in __import__("onnxruntime").get_available_providers(),
    reason="needs a GPU and onnxruntime-gpu",
)
@pytest.mark.parametrize("fp16", [False, True])
def test_onnx_on_cuda_and_tensorrt_equals_eager(tmp_path, fp16):
    from pipeline.device import onnx_providers
    from pipeline.models.onnx_runtime import OnnxModel

    run = make_run(tmp_path / "run", "mid")
    export_run(str(run), "onnx", encoders=False)
    art = RunArtifact.open(str(run))
    graph = OnnxModel((run / "export" / "model.onnx").read_bytes(), "cuda")
    assert graph.providers[0] in ("TensorrtExecutionProvider", "CUDAExecutionProvider")
    assert onnx_providers("cuda", "auto" if fp16 else "off")[-1] == "CPUExecutionProvider"
    xs = _batch(art, 16, seed=3)
    with torch.no_grad():
        ref = serving_module(art.load(), logits=True)(*xs)
    tol = 2e-2 if graph.providers[0] == "TensorrtExecutionProvider" else 1e-4
    for a, b in zip(graph(*xs), ref):
        assert float((a - b).abs().max()) < tol


def test_the_torchscript_exporter_stands_in_where_dynamo_fails_and_both_failing_is_one_line(
    tmp_path, monkeypatch
):
    from pipeline.errors import UserError

    run = make_run(tmp_path / "run", "bilinear")
    real = torch.onnx.export

    def no_dynamo(*args, **kw):
        if kw.get("dynamo"):
            raise RuntimeError("cannot capture this module\nmore detail")
        return real(*args, **kw)

    monkeypatch.setattr(torch.onnx, "export", no_dynamo)
    record = export_run(str(run), "onnx", encoders=False)
    assert {g["exporter"] for g in record["graphs"].values()} == {"torchscript"}
    art = RunArtifact.open(str(run))
    assert _onnx_equals_eager(art, run / "export" / "model.onnx", 6) < 1e-4

    def neither(*args, **kw):
        raise RuntimeError("unsupported operator aten::foo\nstack")

    monkeypatch.setattr(torch.onnx, "export", neither)
    with pytest.raises(UserError, match=r"cannot export model to ONNX: dynamo: .*aten::foo"):
        export_run(str(run), "onnx", encoders=False)


def test_the_help_states_the_tolerance_in_force():
    from pipeline.cli import help_reference

    section = help_reference().split("## mmpipe export", 1)[1].split("## ", 1)[0]
    assert f"(default {onnx_export.TOLERANCE:.0e})".replace("e-04", "e-4") in " ".join(
        section.split()
    )
