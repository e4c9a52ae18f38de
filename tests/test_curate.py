"""mmpipe curate: every filter rejects with its value and threshold, SemDeDup names the kept
key, no row is lost or duplicated, reruns are byte-identical, and mistakes are one line."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.build.job import run_build
from pipeline.cli import main
from pipeline.config import BuildConfig
from pipeline.curate import metrics
from pipeline.curate.config import CurateConfig
from pipeline.curate.job import run_curate
from pipeline.curate.semdedup import dedup_cluster
from pipeline.io.shards import resolve_shards
from tests import curate_corpus
from tests.test_build import check_invariant, check_shards

pytestmark = pytest.mark.usefixtures("ray_local")

EVERY_FILTER = {
    "image": {"min_side": 32, "max_aspect": 3.0},
    "caption": {"min_words": 2, "languages": ["en"]},
    "similarity": {"enabled": True, "threshold": 0.5},
    "audio": {"min_seconds": 0.2, "max_silent_fraction": 0.9, "min_snr_db": 10.0},
    "predicate": "tests.curate_predicate:no_forbidden",
    "semdedup": {"eps": 0.05},
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("curate")
    info = curate_corpus.write(root / "c")
    run_build(
        BuildConfig(
            input=str(root / "c" / "manifest.jsonl"), output=str(root / "b"), shard_samples=8
        ),
        quiet=True,
    )
    curate_corpus.write_vectors(root / "b", root / "vec")
    return root, info


def curate(root: Path, out: Path, **fields) -> dict:
    cfg = CurateConfig(
        build=str(root / "b"),
        output=str(out),
        vectors=str(root / "vec"),
        **{**EVERY_FILTER, **fields},
    )
    return run_curate(cfg, quiet=True)


@pytest.fixture(scope="module")
def curated(world):
    root, _ = world
    out = root / "cur"
    return out, curate(root, out)


def test_every_filter_rejects_its_rows_with_the_value_and_the_threshold(world, curated):
    _, info = world
    out, report = curated
    index, rejects = check_invariant(out, info["rows"])  # the build's own reject carried
    got = {r["key"]: r for r in rejects.to_pylist()}
    for key, reason in curate_corpus.SPECIAL.items():
        assert got[key]["reason"] == reason, (key, got[key])
    assert got["gone"]["reason"] == "missing"  # carried forward from the build
    assert set(index["key"].to_pylist()) == {f"n{i:02d}" for i in range(curate_corpus.NORMAL)}
    msg = {k: got[k]["message"] for k in curate_corpus.SPECIAL}
    assert msg["small"] == "shorter side 16 px < min_side 32"
    assert msg["wide"] == "aspect ratio 5.00 (200x40) > max_aspect 3"
    assert msg["oneword"] == "1 words < min_words 2"
    assert msg["french"].startswith("language fr (p=") and "not in ['en']" in msg["french"]
    assert (
        msg["mismatch"].startswith("image-text cosine ")
        and "< 0.5000 (threshold)" in msg["mismatch"]
    )
    assert msg["short"] == "0.10 s < min_seconds 0.2"
    assert (
        msg["silent"].startswith("silent fraction 0.9")
        and "> max_silent_fraction 0.9" in msg["silent"]
    )
    assert msg["noise"].startswith("SNR ") and "dB < min_snr_db 10" in msg["noise"]
    assert msg["forbid"] == "tests.curate_predicate:no_forbidden: caption says forbidden"
    assert re.fullmatch(r"cosine (0\.99\d\d|1\.0000) >= 0\.9500 to kept key n00", msg["dup00"])
    assert msg["dup01"].endswith("to kept key n01")
    counts = report["counts"]
    assert counts["input_rows"] == counts["written"] + counts["rejected"] == info["rows"] - 1
    assert counts["carried_rejects"] == 1
    assert report["rejects_by_reason"] == {
        r: 2 if r == "semantic_duplicate" else 1 for r in curate_corpus.SPECIAL.values()
    }
    assert report["thresholds"]["semdedup"]["duplicates"] == 2
    check_shards(out, index)  # filtered copies: members contiguous, offsets right


def test_the_curated_build_is_a_build_for_the_next_jobs(world, curated):
    root, _ = world
    out, _ = curated
    assert [Path(u).name for u in resolve_shards(str(out))] == sorted(
        p.name for p in (out / "shards").glob("*.tar")
    )
    sizes = json.loads((out / "shards" / "sizes.json").read_text())
    assert sum(sizes.values()) == pq.read_table(out / "index", columns=["key"]).num_rows
    # A shard that lost no row is the build's own file (a hard link), not a copy.
    whole = [
        p
        for p in (out / "shards").glob("*.tar")
        if p.stat().st_ino == (root / "b" / "shards" / p.name).stat().st_ino
    ]
    shards = pq.read_table(out / "shards.parquet").to_pylist()
    kept_all = [s for s in shards if s["samples"] == 8]
    assert len(whole) == len(kept_all)
    # A Hugging Face dataset too: its card types the members the build's samples hold.
    card = (out / "README.md").read_text()
    build_types = json.loads((root / "b" / "build.json").read_text())["member_types"]
    assert build_types and all(f"- name: {t}\n" in card for t in build_types)
    assert "mmpipe curated build" in card


def test_a_rerun_is_byte_identical_and_a_finished_one_is_reused(world, curated, tmp_path):
    root, _ = world
    out, report = curated
    again = tmp_path / "again"
    curate(root, again)
    for name in ["index/part-00000.parquet", "rejects.parquet", "shards.parquet", "report.html"]:
        assert (again / name).read_bytes() == (out / name).read_bytes(), name
    for p in (out / "shards").iterdir():
        assert (again / "shards" / p.name).read_bytes() == p.read_bytes(), p.name
    assert curate(root, out)["counts"] == report["counts"]  # up to date: nothing rerun


def test_top_fraction_keeps_that_share_of_the_scored_rows(world, tmp_path):
    root, info = world
    fields = {
        "similarity": {"enabled": True, "top_fraction": 0.5},
        "predicate": None,
        "semdedup": {"enabled": False},
        "audio": {"enabled": False},
        "image": {"enabled": False},
        "caption": {"enabled": False},
    }
    report = curate(root, tmp_path / "top", **fields)
    scored = info["rows"] - 1
    assert report["rejects_by_reason"]["low_similarity"] == pytest.approx(scored / 2, abs=1)
    th = report["thresholds"]["similarity"]["resolved_threshold"]
    _, rejects = check_invariant(tmp_path / "top", info["rows"])
    assert all(f"< {th:.4f} (top 0.5 of rows)" in m for m in rejects["message"].to_pylist()[1:])


def test_semantic_dedup_is_greedy_and_names_a_kept_row_for_each_policy():
    rng = np.random.default_rng(0)
    a = rng.standard_normal(8)
    x = np.stack([a, a + 0.01, rng.standard_normal(8), a + 0.02]).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    order = np.array([0, 1, 2, 3])
    keys = ["a", "b", "c", "d"]
    first = dedup_cluster(keys, order, x, np.array([0.5, 0.9, 0.1, 0.7]), 0.05, "first")
    assert sorted((d, k) for d, k, _ in first) == [(1, 0), (3, 0)]
    nearest = dedup_cluster(keys, order, x, np.array([0.5, 0.9, 0.1, 0.7]), 0.05, "nearest")
    assert sorted((d, k) for d, k, _ in nearest) == [(0, 1), (3, 1)]
    farthest = dedup_cluster(keys, order, x, np.array([0.5, 0.9, 0.1, 0.7]), 0.05, "farthest")
    assert sorted((d, k) for d, k, _ in farthest) == [(1, 0), (3, 0)]
    # A chain a~b~c with a !~ c: b goes (near a), and c stays unless it is near a kept row.
    chain = np.array([[1, 0], [np.cos(0.3), np.sin(0.3)], [np.cos(0.6), np.sin(0.6)]], np.float32)
    got = dedup_cluster(
        ["a", "b", "c"], np.arange(3), chain, np.zeros(3), 1 - np.cos(0.35), "first"
    )
    assert [(d, k) for d, k, _ in got] == [(1, 0)]
    # Blocks: the same answer whatever the block boundary (BLOCK rows at a time).
    big = rng.standard_normal((1500, 4)).astype(np.float32)
    big /= np.linalg.norm(big, axis=1, keepdims=True)
    pairs = dedup_cluster([""] * 1500, np.arange(1500), big, np.zeros(1500), 0.002, "first")
    kept = sorted(set(range(1500)) - {d for d, _, _ in pairs})
    sims = big[kept] @ big[kept].T
    np.fill_diagonal(sims, 0)
    assert sims.max() < 0.998 and all(k in kept for _, k, _ in pairs)


def test_measurements():
    assert metrics.caption_counts("右上角有一个大的黄色菱形") == (12, 12)
    assert metrics.caption_counts("  a red   square ") == (3, 14)
    import io

    import soundfile as sf

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    clip = np.zeros(16000, np.float32)
    clip[:8000] = 0.5 * np.sin(np.arange(8000) / 5)
    sf.write(buf, clip + 1e-4 * rng.standard_normal(16000).astype(np.float32), 16000, format="FLAC")
    silent, snr = metrics.audio_levels(buf.getvalue())
    assert silent == pytest.approx(0.5, abs=0.03) and snr > 40
    counts = metrics.histogram("similarity", np.linspace(-0.999, 0.999, 1000))
    assert sum(counts) == 1000
    assert metrics.top_fraction_threshold(counts, 0.3) == pytest.approx(0.4, abs=0.002)


def _cli(args: list[str], capsys) -> tuple[int, str]:
    rc = main(args)
    return rc, capsys.readouterr().err.strip()


def test_user_mistakes_are_one_line(world, tmp_path, capsys):
    root, _ = world
    b, out = str(root / "b"), str(tmp_path / "o")
    cases = [
        ([str(root / "c"), "--output", out], "is not a finished build"),
        ([b, "--output", out, "--vectors", str(root / "c")], "is neither a finished features"),
        ([b, "--output", out, "--predicate", "nosuchmodule:f"], "predicate nosuchmodule:f"),
        ([b, "--output", out, "--predicate", "tests.curate_predicate:broken"], "keep flags for"),
        ([b, "--output", b], "must differ from BUILD"),
    ]
    for i, (args, needle) in enumerate(cases):
        args = [a.replace(out, f"{out}{i}") for a in args]
        rc, err = _cli(["curate", *args, "-q"], capsys)
        assert rc == 2 and needle in err and len(err.splitlines()) == 1, (args, err)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"curate": {"similarity": {"enabled": True}}}))
    rc, err = _cli(["curate", b, "--output", out, "--config", str(bad)], capsys)
    assert rc == 2 and "similarity.enabled needs vectors" in err
    col = tmp_path / "col.yaml"
    col.write_text(yaml.safe_dump({"curate": {"semdedup": {"column": "audio_emb"}}}))
    rc, err = _cli(
        ["curate", b, "--output", out, "--config", str(col), "--vectors", str(root / "vec")], capsys
    )
    assert rc == 2 and "semdedup.column 'audio_emb'" in err and "image_emb" in err
    # Vectors without a text tower cannot give an image-text similarity.
    one = tmp_path / "image-only"
    for part in (root / "vec" / "parts").rglob("*.parquet"):
        dst = one / part.relative_to(root / "vec")
        dst.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pq.read_table(part).drop_columns(["text_emb"]), dst)
    (one / "_SUCCESS").write_bytes(b"")
    sim = tmp_path / "sim.yaml"
    sim.write_text(yaml.safe_dump({"curate": {"similarity": {"enabled": True}}}))
    rc, err = _cli(
        ["curate", b, "--output", out, "--config", str(sim), "--vectors", str(one)], capsys
    )
    assert rc == 2 and "similarity needs image_emb and text_emb" in err


def test_the_shipped_curate_config_shows_the_defaults():
    with open("jobs/configs/curate.yaml") as f:
        shipped = yaml.safe_load(f)["curate"]
    paths = {"build": shipped["build"], "output": shipped["output"]}
    assert CurateConfig(**shipped) == CurateConfig(**paths)
    assert set(shipped) == set(CurateConfig.model_fields)


def test_the_report_renders_with_labelled_figures(curated):
    out, _ = curated
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium here (.ci/run installs it)")
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--user-data-dir=" + str(out.parent / "chrome-profile"),
    ]
    # The DOM after the page ran in the browser, and a screenshot of it.
    dom = subprocess.run(
        [browser, *flags, "--dump-dom", (out / "report.html").as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert "<svg" in dom and "Counts per filter" in dom
    for title, xlabel in [
        ("Image size", "shorter side (px)"),
        ("Caption length", "words"),
        ("Image-text similarity", "cosine"),
        ("Audio duration", "seconds"),
    ]:
        assert f"{title}</text>" in dom and 'class="xlabel"' in dom and xlabel in dom
    assert dom.count('class="threshold"') >= 5 and 'class="ylabel"' in dom
    shot = out.parent / "report.png"
    subprocess.run(
        [
            browser,
            *flags,
            f"--screenshot={shot}",
            "--window-size=1200,1600",
            (out / "report.html").as_uri(),
        ],
        capture_output=True,
        timeout=120,
    )
    assert shot.exists() and shot.stat().st_size > 10_000


def _config_file(root: Path, tmp_path: Path) -> Path:
    cfg = tmp_path / "curate.yaml"
    cfg.write_text(yaml.safe_dump({"curate": {**EVERY_FILTER, "vectors": str(root / "vec")}}))
    return cfg


def _same_output(a: Path, b: Path) -> None:
    for name in ["index/part-00000.parquet", "rejects.parquet", "shards.parquet"]:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert sorted(p.name for p in (a / "shards").iterdir()) == sorted(
        p.name for p in (b / "shards").iterdir()
    )
    for p in (a / "shards").iterdir():
        assert (b / "shards" / p.name).read_bytes() == p.read_bytes(), p.name


@pytest.mark.slow
@pytest.mark.parametrize("point", ["curate_measure", "curate_place"])
def test_a_worker_killed_mid_curate_loses_and_duplicates_nothing(
    ray_local, world, curated, tmp_path, point
):
    from tests.test_faults import _run

    root, info = world
    out = tmp_path / "out"
    args = ["curate", str(root / "b"), "--output", str(out)]
    res = _run(
        [*args, "--config", str(_config_file(root, tmp_path))], ray_local, f"{point}:2", tmp_path
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "fault").exists()  # a worker really died, and its task was retried
    index, _ = check_invariant(out, info["rows"])
    assert len(set(index["key"].to_pylist())) == index.num_rows
    _same_output(curated[0], out)


@pytest.mark.slow
def test_the_driver_killed_mid_curate_then_a_rerun_resumes(ray_local, world, curated, tmp_path):
    from tests.test_faults import _run

    root, info = world
    out = tmp_path / "out"
    cfg = _config_file(root, tmp_path)
    args = ["curate", str(root / "b"), "--output", str(out), "--config", str(cfg)]
    # The driver dies (os._exit) after the first measured shard's result: some shards are
    # measured, none placed, nothing merged.
    res = _run(args, ray_local, "curate_driver:1", tmp_path)
    assert res.returncode != 0 and (tmp_path / "fault").exists()
    assert not (out / "curate.json").exists() and (out / "_work" / "measure").exists()
    res = _run(args, ray_local, None, tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    check_invariant(out, info["rows"])
    _same_output(curated[0], out)
    assert not (out / "_work").exists() and not list(out.rglob(".*tmp-*"))


@pytest.mark.slow
def test_similarity_from_a_paired_models_embeddings_is_the_librarys_cosine(ray_local, tmp_path):
    """A tiny CLIP through mmpipe zero-shot and embed: curate's image-text cosine of each row
    is the one transformers itself gives, and top_fraction keeps that share of the rows."""
    import io

    import torch
    import transformers
    import webdataset as wds
    from PIL import Image

    from pipeline.embed.config import load_embed_config
    from pipeline.embed.job import run_embed
    from pipeline.sample_corpus import write_corpus
    from pipeline.zeroshot import write_zero_shot_run
    from tests import tiny_models

    write_corpus(str(tmp_path / "c"), n=12, seed=3, broken=False)
    run_build(
        BuildConfig(
            input=str(tmp_path / "c" / "manifest.jsonl"),
            output=str(tmp_path / "b"),
            shard_samples=6,
        ),
        quiet=True,
    )
    clip = tiny_models.make_clip(tmp_path / "clip")
    write_zero_shot_run(str(clip), str(tmp_path / "run"), quiet=True)
    ecfg = {
        "shards": str(tmp_path / "b"),
        "model": str(tmp_path / "run"),
        "output": str(tmp_path / "emb"),
        "batch_size": 4,
        "actor_num_cpus": 0.5,
    }
    run_embed(load_embed_config(ecfg), incremental=False, kind="embed", quiet=True)
    cfg = CurateConfig(
        build=str(tmp_path / "b"),
        output=str(tmp_path / "cur"),
        vectors=str(tmp_path / "emb"),
        similarity={"enabled": True, "top_fraction": 0.5},
        semdedup={"enabled": False},
    )
    report = run_curate(cfg, quiet=True)
    model = transformers.CLIPModel.from_pretrained(clip).eval()
    proc = transformers.AutoImageProcessor.from_pretrained(clip)
    tok = transformers.AutoTokenizer.from_pretrained(clip)
    shards = sorted(str(p) for p in (tmp_path / "b" / "shards").glob("*.tar"))
    cos = {}
    with torch.inference_mode():
        for s in wds.WebDataset(shards, shardshuffle=False):
            im = Image.open(io.BytesIO(s.get("jpg") or s["png"])).convert("RGB")
            i = model.get_image_features(**proc(images=[im], return_tensors="pt")).pooler_output
            t = model.get_text_features(**tok([s["txt"].decode()], return_tensors="pt"))
            cos[s["__key__"]] = float(torch.cosine_similarity(i, t.pooler_output)[0])
    th = report["thresholds"]["similarity"]["resolved_threshold"]
    rejects = pq.read_table(tmp_path / "cur" / "rejects.parquet").to_pylist()
    low = {r["key"]: r["message"] for r in rejects if r["reason"] == "low_similarity"}
    # The lower half of 12 rows, less any that share the threshold's 0.0005 bin (kept).
    assert 4 <= len(low) <= 6
    for key, value in cos.items():
        assert (key in low) == (value < th), (key, value, th)
        if key in low:
            got = float(re.search(r"cosine (-?[\d.]+)", low[key]).group(1))
            assert got == pytest.approx(value, abs=2e-4)


def test_semdedup_over_several_clusters_is_deterministic(world, curated, tmp_path):
    """k-means really runs (3 clusters for 23 rows): two runs agree byte for byte, and the
    duplicates are the ones one cluster finds (each pair lands in one cluster)."""
    root, _ = world
    only = {
        "image": {"enabled": False},
        "caption": {"enabled": False},
        "predicate": None,
        "audio": {"enabled": False},
        "similarity": {"enabled": False},
    }
    runs = [
        curate(root, tmp_path / f"k{i}", semdedup={"eps": 0.05, "clusters": 3}, **only)
        for i in range(2)
    ]
    assert runs[0]["thresholds"]["semdedup"]["clusters"] == 3
    a, b = (pq.read_table(tmp_path / f"k{i}" / "rejects.parquet") for i in range(2))
    assert a.equals(b)
    assert (tmp_path / "k0" / "rejects.parquet").read_bytes() == (
        tmp_path / "k1" / "rejects.parquet"
    ).read_bytes()
    dups = {r["key"]: r["message"] for r in a.to_pylist() if r["reason"] == "semantic_duplicate"}
    one = pq.read_table(curated[0] / "rejects.parquet").to_pylist()
    assert dups == {r["key"]: r["message"] for r in one if r["reason"] == "semantic_duplicate"}
