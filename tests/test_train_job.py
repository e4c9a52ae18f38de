"""mmpipe train/eval/report/export on a local Ray: 2 DDP workers, a killed worker, lineage, export."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch

from pipeline.build.job import run_build
from pipeline.config import BuildConfig
from pipeline.errors import UserError
from pipeline.features.config import load_features_config
from pipeline.features.job import run_features
from pipeline.sample_corpus import write_corpus
from pipeline.train.config import load_train_config
from pipeline.train.job import run_train

# Ray Train and killed workers: long end-to-end runs (`make test` leaves them out; `make test-slow` runs them).
pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.slow]


@pytest.fixture(scope="module")
def feats(tmp_path_factory):
    root = tmp_path_factory.mktemp("tcorpus")
    write_corpus(str(root / "c"), n=64, seed=9, broken=False)
    run_build(
        BuildConfig(
            input=str(root / "c" / "manifest.jsonl"), output=str(root / "b"), shard_samples=32
        ),
        quiet=True,
    )
    cfg = load_features_config(
        {
            "shards": str(root / "b"),
            "output": str(root / "f"),
            "batch_size": 16,
            "audio": {"name": "audio_cnn", "weights": "random"},
            "audio_frames": 100,
            "actor_num_cpus": 0.5,
        }
    )
    run_features(cfg, quiet=True)
    return root / "f"


def tcfg(data, out, **kw):
    base = {
        "data": str(data),
        "output": str(out),
        "epochs": 3,
        "batch_size": 8,
        "d_model": 32,
        "embed_dim": 16,
        "workers": 2,
        "cpus_per_worker": 1,
        "warmup_steps": 2,
    }
    base.update(kw)
    return load_train_config(base)


@pytest.fixture(scope="module")
def run(feats, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "r"
    report = run_train(tcfg(feats, out, fusion="mid"), quiet=True)
    return out, report


def test_two_worker_run_writes_model_metrics_and_lineage(run, feats):
    out, report = run
    assert report["workers"] == 2 and report["progress"]["epoch"] == 3
    assert report["stopped"] == "epochs" and report["selected_by"] == "val_acc"
    assert 1 <= report["best_epoch"] == report["metrics"]["epoch"] <= 3
    state = torch.load(io.BytesIO((out / "model.pt").read_bytes()), weights_only=True)
    assert any(k.startswith("fusion.") for k in state)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines if x["kind"] == "epoch"] == [1, 2, 3]
    assert any(x["kind"] == "step" and "loss" in x for x in lines)
    info = json.loads((out / "model.json").read_text())
    features_report = json.loads((feats / "features.json").read_text())
    assert info["lineage"]["features_fingerprint"] == features_report["fingerprint"]
    assert info["lineage"]["preprocessing"]["encoders"] == features_report["encoders"]
    assert info["classes"] and info["dims"]["text"] == 384 + 1024  # minilm_bow, the default
    # A rerun of a finished run is a no-op; a different config in the same place is refused.
    assert (
        run_train(tcfg(feats, out, fusion="mid"), quiet=True)["fingerprint"]
        == report["fingerprint"]
    )
    with pytest.raises(UserError, match="different config"):
        run_train(tcfg(feats, out, fusion="early"), quiet=True)


def test_eval_report_and_export(run, feats):
    from pipeline.fusion.artifact import load_run
    from pipeline.train.evaluate import run_eval
    from pipeline.train.export import example_inputs, export_torchscript
    from pipeline.train.report import write_html_report as write_report
    from pipeline.train.serving import serving_module

    out, report = run
    ev = run_eval(str(out), str(feats), quiet=True)
    # What training reported is what the saved model scores, on the same validation rows.
    assert ev["accuracy"]["fused"] == pytest.approx(report["metrics"]["val_acc"], abs=1e-9)
    assert set(ev["retrieval"]) == {
        f"{a}->{b}"
        for a in ("image", "text", "audio")
        for b in ("image", "text", "audio")
        if a != b
    }
    r = ev["retrieval"]["image->text"]
    assert set(r["class"]) == {"R@1", "R@5", "R@10"} and 0 <= r["instance"]["R@1"] <= 1
    assert {"fused", "image_only", "text_only", "audio_only", "best_single"} <= set(ev["accuracy"])
    base = ev["baselines"]  # linear probes on the same features and split, beside the model
    assert set(base["probe"]) == {"image", "text", "audio"} and 0 <= base["late_fusion"] <= 1
    vs = base["vs_model"]  # the same rows, paired: what only one of the two got right
    assert vs["rows"] == ev["rows"] and 0 <= vs["p_value"] <= 1
    page = Path(write_report(str(out))).read_text()
    assert page.count("<img") >= 5 and "data:image/png;base64," in page
    assert "late fusion of linear probes" in page and "only the probes got right" in page
    path = export_torchscript(str(out))
    traced = torch.jit.load(path)
    model, info = load_run(str(out))
    x = example_inputs(info, n=5)
    with torch.no_grad():
        for a, b in zip(serving_module(model)(*x), traced(*x)):
            torch.testing.assert_close(a, b)


def test_classic_preset_trains_end_to_end_from_the_shards(feats, tmp_path):
    from pipeline.train.evaluate import run_eval
    from pipeline.train.export import export_torchscript

    build = feats.parent / "b"
    for preset in ("attn_conv", "finetune"):  # from scratch; pretrained encoders fine-tuned
        out = tmp_path / preset
        cfg = tcfg(
            build, out, preset=preset, workers=1, epochs=2, image_size=32, max_text_tokens=16
        )
        report = run_train(cfg, quiet=True)
        assert report["progress"]["epoch"] == 2
        info = json.loads((out / "model.json").read_text())
        assert info["preset"] == preset and info["lineage"]["preprocessing"]["image_size"] == 32
        ev = run_eval(str(out), str(build), quiet=True)
        assert set(ev["retrieval"]) == {"image->text", "text->image"} and ev["fusion"] == preset
        assert {"fused", "image_only", "text_only"} <= set(ev["accuracy"])
        assert Path(export_torchscript(str(out))).exists()


def test_a_killed_worker_restarts_from_the_checkpoint(feats, tmp_path):
    # Worker 1's process dies (os._exit) at step 7; Ray Train restarts the group, which must
    # load the latest checkpoint (every 2 steps) rather than start over, and finish the run.
    out = tmp_path / "r"
    cfg = tcfg(feats, out, fusion="gated", epochs=4, checkpoint_every_steps=2, max_failures=1)
    report = run_train(cfg, quiet=True, fail_at_step=7)
    assert (out / ".fault_injected").exists()  # the fault did happen
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    restores = [x for x in lines if x["kind"] == "restore"]
    assert len(restores) == 1 and 2 <= restores[0]["step"] < 7
    assert report["progress"]["epoch"] == 4
    assert [x["epoch"] for x in lines if x["kind"] == "epoch"] == [1, 2, 3, 4]


def test_checkpoints_without_resume_are_refused_and_config_errors_are_one_line(feats, tmp_path):
    out = tmp_path / "r"
    (out / "ray" / "fusion" / "checkpoint_2026").mkdir(parents=True)
    (out / "ray" / "fusion" / "checkpoint_2026" / "state.pt").write_bytes(b"x")
    with pytest.raises(UserError, match="--resume"):
        run_train(tcfg(feats, out), quiet=True)
    with pytest.raises(UserError, match=r"fusion .*allowed"):
        tcfg(feats, out, fusion="concat-ish")
    with pytest.raises(UserError, match="not a finished `mmpipe features` output"):
        run_train(tcfg(tmp_path, tmp_path / "o"), quiet=True)
