"""mmpipe embed/refresh/search/index on a local Ray: values, schema, readers, refresh diffs, kills."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.build.job import run_build
from pipeline.config import BuildConfig
from pipeline.embed.config import load_embed_config
from pipeline.embed.job import run_embed
from pipeline.embed.search import build_index, search
from pipeline.embed.store import data_files, read_latest, read_ledger, read_manifest
from pipeline.errors import UserError
from pipeline.fusion.artifact import load_run
from pipeline.io.parquet import fsl_to_numpy

pytestmark = pytest.mark.usefixtures("ray_local")
ROOT = Path(__file__).resolve().parents[1]


def _manifest(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def _write_manifest(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def ecfg(world: Path, out: Path, **kw):
    base = {
        "shards": str(world / "b1"),
        "model": str(world / "run"),
        "output": str(out),
        "batch_size": 8,
        "actor_num_cpus": 0.5,
        "metadata_fields": ["label", "color"],
    }
    base.update(kw)
    return load_embed_config(base)


@pytest.fixture(scope="module")
def store(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("store") / "emb"
    report = run_embed(ecfg(world, out), incremental=False, kind="embed", quiet=True)
    return out, report


def read_version(out: Path) -> pa.Table:
    return pa.concat_tables(pq.read_table(f) for f in data_files(str(out))).sort_by("key")


def test_embeddings_equal_a_direct_call_of_the_model(world, store):
    out, report = store
    assert report["version"] == "v000001" and report["rows"] == 60 and report["embedded"] == 60
    table = read_version(out)
    model, info = load_run(str(world / "run"))
    feats = pq.read_table(sorted((world / "f" / "parts").rglob("*.parquet"))).sort_by("key")
    assert table["key"].to_pylist() == feats["key"].to_pylist()
    x, m = {}, {}
    for mod, d in info["dims"].items():
        arr, valid = fsl_to_numpy(feats[f"{mod}_emb"], d)
        has = np.asarray(feats[f"has_{mod}"].to_numpy(zero_copy_only=False), bool) & valid
        x[mod], m[mod] = torch.from_numpy(arr), torch.from_numpy(has)
    with torch.no_grad():
        direct = model(x, m)
    got, _ = fsl_to_numpy(table["fused_emb"], 16)
    np.testing.assert_allclose(got, direct["fused"].numpy(), atol=2e-4)
    for mod in info["dims"]:
        got, valid = fsl_to_numpy(table[f"{mod}_emb"], 16)
        np.testing.assert_allclose(got[valid], direct["emb"][mod].numpy()[valid], atol=2e-4)
    # Plain Arrow types and what a reader needs in the file metadata.
    schema = pq.read_schema(data_files(str(out))[0])
    assert schema.field("fused_emb").type == pa.list_(pa.float32(), 16)
    meta = {k.decode(): v.decode() for k, v in schema.metadata.items()}
    assert meta["mmpipe.dim"] == "16" and meta["mmpipe.normalization"] == "l2"
    assert meta["mmpipe.model_version"] == report["model_version"]
    manifest = read_manifest(str(out), "v000001")
    assert (
        sum(f["rows"] for f in manifest["files"]) == 60
        and (out / "versions/v000001/_SUCCESS").exists()
    )
    assert read_latest(str(out)) == "v000001"


def test_files_read_with_duckdb_polars_and_pandas(store):
    import duckdb
    import pandas as pd
    import polars as pl

    out, _ = store
    glob = str(out / "versions" / "v000001" / "data" / "*.parquet")
    rows = duckdb.sql(
        f"SELECT key, label, len(fused_emb) AS d, list_dot_product(fused_emb, fused_emb) AS n "
        f"FROM read_parquet('{glob}') ORDER BY key"
    ).fetchall()
    assert len(rows) == 60 and all(d == 16 and abs(n - 1) < 1e-4 and lab for _, lab, d, n in rows)
    df = pl.read_parquet(glob)
    assert df.shape[0] == 60 and str(df.schema["fused_emb"]).startswith("Array(Float32")
    assert len(pd.read_parquet(data_files(str(out))[0])["image_emb"].iloc[0]) == 16


def test_search_returns_the_paired_item_first_exact_and_with_the_index(world, store):
    out, _ = store
    listed = _manifest(world / "c" / "manifest.jsonl")
    rows = {r["key"]: r for r in listed}
    line = {r["key"]: i for i, r in enumerate(listed)}
    for key in ("s000003", "s000031", "s000057"):
        r = rows[key]
        res = search(
            str(out),
            text=r["text"],
            image=str(world / "c" / r["image"]),
            audio=str(world / "c" / r["audio"]),
            k=3,
            exact=True,
        )
        top = res["hits"][0]
        assert top["key"] == key and top["score"] > 0.999
        assert top["meta"]["label"] == r["label"]
        # What a person needs beside the key: the caption, the label and the input row.
        assert top["caption"] == r["text"] and top["label"] == r["label"]
        assert top["source"] == f"{world / 'c' / 'manifest.jsonl'}:{line[key]}"
    build_index(str(out))
    r = rows["s000031"]
    res = search(
        str(out),
        text=r["text"],
        image=str(world / "c" / r["image"]),
        audio=str(world / "c" / r["audio"]),
        k=3,
    )
    assert res["method"] == "index" and res["hits"][0]["key"] == "s000031"
    # Text alone against the image column: cross-modal, the top hit shows the same class.
    res = search(str(out), text=r["text"], k=5, column="image", exact=True)
    assert [h["column"] for h in res["hits"]] == ["image"] * 5
    # The shared space: a caption's nearest image is mostly of its class (chance is 1/6).
    table = read_version(out)
    t, _ = fsl_to_numpy(table["text_emb"], 16)
    i, _ = fsl_to_numpy(table["image_emb"], 16)
    labels = np.asarray(table["label"].to_pylist())
    assert (labels[(t @ i.T).argmax(1)] == labels).mean() > 0.5


def test_search_takes_the_runs_torchscript_export_and_index_names_its_columns(
    world, store, tmp_path
):
    from pipeline.train.export import export_torchscript

    out, _ = store
    run = tmp_path / "run"
    shutil.copytree(world / "run", run)
    ts = export_torchscript(str(run))
    text = _manifest(world / "c" / "manifest.jsonl")[7]["text"]
    eager = search(str(out), text=text, k=5, exact=True)
    traced = search(str(out), text=text, k=5, exact=True, model=ts)
    assert [h["key"] for h in traced["hits"]] == [h["key"] for h in eager["hits"]]
    with pytest.raises(UserError, match=r"no 'pixels' embeddings.*fused"):
        build_index(str(out), ["pixels"])


def test_refresh_planning_reads_the_shard_digests_and_never_the_whole_index(
    world, store, monkeypatch
):
    from pipeline.embed import plan

    summed = plan.index_digests(str(world / "b1" / "index" / "part-00000.parquet"))

    def whole_index(*_a, **_k):
        raise AssertionError("planning read the index")

    monkeypatch.setattr(plan, "iter_row_groups", whole_index)
    index, shards = plan.scan_input(str(world / "b1"))
    assert index and {s: v.digest for s, v in shards.items()} == {
        s: v.digest for s, v in summed.items()
    }
    # Nothing changed: the no-op refresh plans from shards.parquet and the manifest alone.
    assert run_embed(ecfg(world, store[0]), quiet=True)["noop"]


def test_refresh_embeds_only_what_changed(world, store, tmp_path):
    out, _ = store
    rows = _manifest(world / "c" / "manifest.jsonl")
    changed = {"s000002", "s000011"}
    new_rows = [
        dict(r, text=r["text"] + " (edited)") if r["key"] in changed else r for r in rows[:55]
    ]
    added = [
        dict(rows[i % 55], key=f"n{i:04d}", text=f"new sample {i}: " + rows[i % 55]["text"])
        for i in range(25)
    ]
    _write_manifest(world / "c" / "manifest2.jsonl", new_rows + added)
    run_build(
        BuildConfig(
            input=str(world / "c" / "manifest2.jsonl"),
            output=str(tmp_path / "b2"),
            shard_samples=20,
        ),
        quiet=True,
    )
    before = read_version(out)
    rec = run_embed(ecfg(world, out, shards=str(tmp_path / "b2")), quiet=True)
    assert (rec["version"], rec["reason"]) == ("v000002", "incremental")
    assert (rec["added"], rec["changed"], rec["removed"]) == (25, 2, 5)
    assert rec["embedded"] == 27 and rec["shards_carried"] == 1 and rec["rows"] == 80
    after = read_version(out)
    index = pq.read_table(tmp_path / "b2" / "index")
    assert sorted(after["key"].to_pylist()) == sorted(index["key"].to_pylist())
    old = dict(zip(before["key"].to_pylist(), before["fused_emb"].to_pylist()))
    new = dict(zip(after["key"].to_pylist(), after["fused_emb"].to_pylist()))
    for k in old:
        if k in new and k not in changed:
            assert new[k] == old[k]  # kept bit for bit, never recomputed
    assert all(new[k] != old[k] for k in changed)
    # Nothing new: no version, no ledger line, no file touched.
    listing = sorted(p for p in out.rglob("*"))
    again = run_embed(ecfg(world, out, shards=str(tmp_path / "b2")), quiet=True)
    assert again["noop"] and sorted(p for p in out.rglob("*")) == listing
    assert [r["version"] for r in read_ledger(str(out))] == ["v000001", "v000002"]
    assert all(isinstance(r["rejects_by_reason"], dict) for r in read_ledger(str(out)))


def test_embedding_through_onnxruntime_equals_eager_and_refreshes_the_same_way(
    world, store, tmp_path
):
    from pipeline.cli import main
    from pipeline.embed.stages import EmbedStage
    from pipeline.fingerprint import short_hash
    from pipeline.fusion.artifact import RunArtifact
    from pipeline.models.onnx_runtime import OnnxModel

    run = tmp_path / "run"
    shutil.copytree(world / "run", run)
    assert main(["export", str(run), "--format", "onnx"]) == 0
    model = run / "export" / "model.onnx"
    # The encoders run in onnxruntime too, from the graphs exported beside the model.
    ref = RunArtifact.open(str(model))
    stage = EmbedStage(ref.features_config(shards="-", output="-", device="cpu"), ref)
    stage.ensure_setup()
    assert all(isinstance(e.model, OnnxModel) for e in stage.encode.encoders.values())
    assert isinstance(stage.model.model, OnnxModel)

    out = tmp_path / "emb"
    rec = run_embed(ecfg(world, out, model=str(model)), quiet=True)
    assert rec["rows"] == 60 and rec["model_version"] == short_hash(model.read_bytes())
    got = read_version(out)
    eager = pa.concat_tables(
        pq.read_table(f) for f in data_files(str(store[0]), "v000001")
    ).sort_by("key")
    assert got["key"].to_pylist() == eager["key"].to_pylist()
    for col in ("fused_emb", "image_emb", "text_emb", "audio_emb"):
        a, valid_a = fsl_to_numpy(eager[col], 16)
        b, valid_b = fsl_to_numpy(got[col], 16)
        assert (valid_a == valid_b).all()
        np.testing.assert_allclose(b[valid_b], a[valid_a], atol=1e-4)  # onnxruntime = eager
    # The same store layout and refresh logic: nothing changed, nothing is written.
    again = run_embed(ecfg(world, out, model=str(model)), quiet=True)
    assert again["noop"]
    hits = search(str(out), model=str(model), text="a red circle", k=3)["hits"]
    assert len(hits) == 3


@pytest.mark.slow
def test_a_new_model_reembeds_everything_and_old_versions_are_pruned(world, tmp_path):
    out = tmp_path / "emb"
    run_embed(ecfg(world, out, keep_versions=1), quiet=True)
    rec = run_embed(ecfg(world, out, model=str(world / "run2"), keep_versions=1), quiet=True)
    assert rec["reason"] == "new_model" and rec["embedded"] == 60 and rec["shards_carried"] == 0
    assert rec["unchanged"] == 60 and rec["added"] == rec["removed"] == 0
    assert sorted(p.name for p in (out / "versions").iterdir()) == ["v000002"]
    assert set(read_version(out)["model_version"].to_pylist()) == {rec["model_version"]}


@pytest.mark.slow
def test_a_killed_refresh_leaves_latest_valid_and_the_rerun_completes(world, ray_local, tmp_path):
    out = tmp_path / "emb"
    run_embed(ecfg(world, out), quiet=True)
    cfg_file = tmp_path / "refresh.yaml"
    cfg_file.write_text(
        json.dumps(
            {"embed": ecfg(world, out, model=str(world / "run2"), batch_size=2).model_dump()}
        )
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    address = ray_local.get_runtime_context().gcs_address
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jobs.nightly_refresh",
            "--config",
            str(cfg_file),
            "--address",
            address,
        ],
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if list((out / "_staging").glob("*/parts/*/*.parquet")):
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the refresh ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert read_latest(str(out)) == "v000001"
    assert len(read_version(out)) == 60  # latest still names a complete, readable version
    rec = run_embed(ecfg(world, out, model=str(world / "run2"), batch_size=2), quiet=True)
    assert rec["version"] == "v000002" and rec["resumed"] > 0 and rec["rows"] == 60
    keys = read_version(out)["key"].to_pylist()
    assert len(keys) == len(set(keys)) == 60


def test_recover_publishes_a_committed_version_and_drops_partial_ones(tmp_path):
    from pipeline.embed.store import recover, set_latest

    for v in ("v000001", "v000002", "v000003"):
        (tmp_path / "versions" / v).mkdir(parents=True)
    (tmp_path / "versions" / "v000001" / "_SUCCESS").write_text("")
    (tmp_path / "versions" / "v000002" / "_SUCCESS").write_text("")  # killed before `latest` moved
    set_latest(str(tmp_path), "v000001")
    assert recover(str(tmp_path)) == "v000002" and read_latest(str(tmp_path)) == "v000002"
    assert not (tmp_path / "versions" / "v000003").exists()


def test_bad_config_pickled_weights_and_presets_are_one_line_errors(world, tmp_path, capsys):
    from jobs.embed_bulk import main

    cfg = tmp_path / "e.yaml"
    fields = {
        "shards": str(world / "b1"),
        "model": str(world / "run"),
        "output": str(tmp_path / "o"),
    }
    cfg.write_text(json.dumps({"embed": {**fields, "storage": "fp8"}}))
    assert main(["--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "storage" in err and "float16" in err and "Traceback" not in err
    with pytest.raises(UserError, match="metadata_fields"):
        ecfg(world, tmp_path / "o", metadata_fields=["key"])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.json").write_text((world / "run" / "model.json").read_text())
    torch.save({"x": torch.nn.Linear(2, 2)}, bad / "model.pt")  # a pickled module, not tensors
    with pytest.raises(UserError, match="weights_only"):
        run_embed(ecfg(world, tmp_path / "o", model=str(bad)), quiet=True)
    info = json.loads((world / "run" / "model.json").read_text())
    shutil.copy(world / "run" / "model.pt", bad / "model.pt")
    lineage = json.loads(json.dumps(info["lineage"]))
    lineage["preprocessing"]["encoders"]["text"]["weights"] = "0" * 64  # trained on other weights
    (bad / "model.json").write_text(json.dumps(dict(info, lineage=lineage)))
    with pytest.raises(UserError, match=r"text encoder here .* differs"):
        run_embed(ecfg(world, tmp_path / "o2", model=str(bad)), quiet=True)
    (bad / "model.json").write_text(json.dumps(dict(info, preset="cnn_lstm")))
    with pytest.raises(UserError, match="preset"):
        run_embed(ecfg(world, tmp_path / "o", model=str(bad)), quiet=True)


@pytest.mark.slow
def test_the_torchscript_export_embeds_the_same_and_float16_reads_everywhere(
    world, store, tmp_path
):
    import duckdb
    import polars as pl

    from pipeline.train.export import export_torchscript

    ts = export_torchscript(str(world / "run"), str(tmp_path / "model.torchscript.pt"))
    run_dir = (
        tmp_path / "run_ts"
    )  # an export inside a run directory: model.json says how to preprocess
    run_dir.mkdir()
    shutil.copy(world / "run" / "model.json", run_dir / "model.json")
    shutil.copy(ts, run_dir / "model.torchscript.pt")
    out = tmp_path / "emb16"
    rec = run_embed(
        ecfg(world, out, model=str(run_dir / "model.torchscript.pt"), storage="float16"), quiet=True
    )
    assert rec["rows"] == 60
    # The refresh job itself keeps the store's layout (float16) when its config does not say.
    kept = ecfg(world, out, model=str(run_dir / "model.torchscript.pt"))
    assert run_embed(kept, kind="refresh", incremental=True, quiet=True)["noop"]
    half = read_version(out)
    assert half.schema.field("fused_emb").type == pa.list_(pa.float16(), 16)
    # v000001 of the shared store: the state-dict model's fp32 embeddings of the same 60 samples
    full = pa.concat_tables(pq.read_table(f) for f in data_files(str(store[0]), "v000001")).sort_by(
        "key"
    )
    a, _ = fsl_to_numpy(full["fused_emb"], 16)
    b = np.asarray(
        half["fused_emb"].combine_chunks().values.to_numpy(zero_copy_only=False), np.float32
    )
    np.testing.assert_allclose(
        b.reshape(-1, 16), a, atol=2e-3
    )  # TorchScript = eager, to fp16 precision
    glob = str(out / "versions" / rec["version"] / "data" / "*.parquet")
    norms = duckdb.sql(
        f"SELECT list_dot_product(fused_emb, fused_emb) FROM read_parquet('{glob}')"
    ).fetchall()
    assert len(norms) == 60 and all(abs(n - 1) < 1e-2 for (n,) in norms)
    assert str(pl.read_parquet(glob).schema["fused_emb"]).startswith("Array(Float16")


def test_a_store_written_before_data_folders_refreshes_into_one(world, tmp_path):
    """Versions written before ``data/`` held their files at the top: a refresh reads them by
    their manifest paths and writes the new version's files under ``data/``."""
    out = tmp_path / "old"  # its own store: the shared one is refreshed by other tests
    run_embed(ecfg(world, out), incremental=False, kind="embed", quiet=True)
    v = (out / "latest").read_text().strip()
    vdir = out / "versions" / v
    manifest = json.loads((vdir / "manifest.json").read_text())
    for f in manifest["files"]:  # back to the old layout
        if (vdir / f["path"]).exists():
            (vdir / f["path"]).rename(vdir / Path(f["path"]).name)
        f["path"] = Path(f["path"]).name
    (vdir / "manifest.json").write_text(json.dumps(manifest))
    before = read_version(out)
    rows = _manifest(world / "c" / "manifest.jsonl")
    edited = [dict(r, text=r["text"] + " (edited)") if r["key"] == "s000002" else r for r in rows]
    manifest_path = world / "c" / "manifest-layout.jsonl"  # beside the media it names
    _write_manifest(manifest_path, edited)
    b2 = tmp_path / "b2"
    run_build(BuildConfig(input=str(manifest_path), output=str(b2), shard_samples=20), quiet=True)
    rec = run_embed(ecfg(world, out, shards=str(b2)), quiet=True)
    assert rec["shards_carried"] == len(manifest["files"]) - 1 and rec["embedded"] == 1
    new = out / "versions" / rec["version"]
    assert sorted(p.name for p in (new / "data").iterdir()) == sorted(
        Path(f["path"]).name for f in manifest["files"]
    )
    after = read_version(out)
    unchanged = [k != "s000002" for k in after["key"].to_pylist()]
    assert after.filter(unchanged).equals(before.filter(unchanged))


def test_a_pool_that_leaves_its_reads_no_cpu_is_one_line_not_a_hang(world, tmp_path):
    """More actors than this machine's CPUs can hold beside a read task: the local Ray the
    command starts never grows, so the run says which settings fit instead of waiting."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(ROOT)
    actors = (os.cpu_count() or 1) + 1  # on any machine: no room left for the read
    t = time.monotonic()
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "embed",
            str(world / "b1"),
            "--model",
            str(world / "run"),
            "-o",
            str(tmp_path / "emb"),
            "--actors",
            str(actors),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert res.returncode == 2, res.stderr[-2000:]
    ours = [x for x in res.stderr.splitlines() if x.startswith("mmpipe:")]
    assert len(ours) == 1 and f"{actors} actors x actor_num_cpus 1" in ours[0], res.stderr
    assert "set actors: " in ours[0] and "Traceback" not in res.stderr
    assert time.monotonic() - t < 120
    assert not (tmp_path / "emb" / "latest").exists()
