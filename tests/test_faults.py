"""Real faults in real Ray runs: a worker or the driver dies, and no sample is lost or duplicated."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.build.job import run_build
from pipeline.config import BuildConfig
from pipeline.sample_corpus import write_corpus
from tests.conftest import stop_process
from tests.test_build import check_invariant

# Ray Train and killed workers: long end-to-end runs (`make test` leaves them out; `make test-slow` runs them).
pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]


def _run(
    args: list[str], ray_local, fault: str | None, tmp_path: Path
) -> subprocess.CompletedProcess:
    """``mmpipe ARGS`` as its own driver on the session's Ray, with a fault armed for its workers."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if fault:
        env["MMPIPE_FAULT"] = f"{fault}:{tmp_path / 'fault'}"
    address = ray_local.get_runtime_context().gcs_address
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args, "--address", address, "-q"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _fired(tmp_path: Path) -> bool:
    return (tmp_path / "fault").exists()


def test_a_worker_killed_mid_build_loses_and_duplicates_nothing(ray_local, tmp_path):
    info = write_corpus(str(tmp_path / "c"), n=60, seed=7)
    out = tmp_path / "out"
    res = _run(
        [
            "build",
            str(tmp_path / "c" / "manifest.jsonl"),
            "--output",
            str(out),
            "--shard-samples",
            "10",
        ],
        ray_local,
        "build_chunk:2",
        tmp_path,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert _fired(tmp_path)  # a chunk task's process really died (os._exit), and was retried
    index, _ = check_invariant(out, info["rows"])
    keys = index["key"].to_pylist()
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize("point", ["dedup_resolve", "place_chunk"])
def test_a_worker_killed_mid_dedup_or_placement_loses_and_duplicates_nothing(
    ray_local, tmp_path, point
):
    """Dedup runs as passes over hash partitions (at most 60 rows a task, so 240 rows take
    the distributed path); a worker dies in a pass or while placing a chunk's shards (10
    chunks of inline text, 8 x 3 rows each: two placement tasks, the second one killed)."""
    from tests.test_dedup import _same_build, _text_manifest

    manifest = _text_manifest(tmp_path / "m.jsonl")
    (tmp_path / "b.yaml").write_text("build:\n  dedup_partition_rows: 60\n")
    out = tmp_path / "out"
    args = ["build", str(manifest), "--output", str(out), "--shard-samples", "3"]
    res = _run([*args, "--config", str(tmp_path / "b.yaml")], ray_local, f"{point}:2", tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert _fired(tmp_path)
    index, _ = check_invariant(out, 240)
    assert len(set(index["key"].to_pylist())) == index.num_rows
    clean = tmp_path / "clean"
    run_build(BuildConfig(input=str(manifest), output=str(clean), shard_samples=3), quiet=True)
    _same_build(clean, out)


def test_the_driver_killed_mid_build_then_a_rerun_completes(tmp_path):
    info = write_corpus(str(tmp_path / "c"), n=120, seed=8)
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "pipeline",
        "build",
        str(tmp_path / "c" / "manifest.jsonl"),
        "--output",
        str(out),
        "--shard-samples",
        "3",
        "--ray-num-cpus",
        "2",
        "-q",
    ]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(
        cmd, env=env, cwd=ROOT, start_new_session=True, stderr=subprocess.DEVNULL
    )
    chunks = out / "_work" / "chunks"
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if chunks.exists() and len(list(chunks.glob("*.parquet"))) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the build ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)  # no handler runs: the driver and its local Ray vanish
        proc.wait(timeout=30)
    finally:
        stop_process(proc)
    assert not (out / "build.json").exists() and not (out / "index").exists()
    rep = run_build(
        BuildConfig(input=str(tmp_path / "c" / "manifest.jsonl"), output=str(out), shard_samples=3),
        quiet=True,
    )
    assert rep["chunks"]["resumed"] >= 1
    index, _ = check_invariant(out, info["rows"])
    assert len(set(index["key"].to_pylist())) == index.num_rows
    assert not list(out.rglob(".*tmp-*"))


def test_a_worker_killed_mid_features_loses_and_duplicates_nothing(ray_local, world, tmp_path):
    out = tmp_path / "f"
    cfg = tmp_path / "f.yaml"
    cfg.write_text(
        json.dumps(
            {
                "features": {
                    "audio": {"name": "audio_cnn", "weights": "random"},
                    "audio_frames": 100,
                    "actor_num_cpus": 0.5,
                    "batch_size": 8,
                }
            }
        )
    )
    res = _run(
        ["features", str(world / "b1"), "--output", str(out), "--config", str(cfg)],
        ray_local,
        "preprocess:3",
        tmp_path,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert _fired(tmp_path)
    keys = pq.read_table(sorted((out / "parts").rglob("*.parquet")), columns=["key"])[
        "key"
    ].to_pylist()
    expected = pq.read_table(world / "b1" / "index")["key"].to_pylist()
    assert sorted(keys) == sorted(expected)  # every sample once


def test_an_embed_actor_killed_mid_run_loses_and_duplicates_nothing(ray_local, world, tmp_path):
    out = tmp_path / "emb"
    res = _run(
        [
            "embed",
            str(world / "b1"),
            "--model",
            str(world / "run"),
            "--output",
            str(out),
            "--batch-size",
            "8",
        ],
        ray_local,
        "embed_actor:3",
        tmp_path,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert _fired(tmp_path)
    latest = (out / "latest").read_text().strip()
    keys = pq.read_table(
        sorted((out / "versions" / latest / "data").glob("*.parquet")), columns=["key"]
    )["key"].to_pylist()
    expected = pq.read_table(world / "b1" / "index")["key"].to_pylist()
    assert sorted(keys) == sorted(expected)


@pytest.mark.parametrize(
    ("job", "fault"), [("features", "image_transform:raise:bug"), ("embed", "encode:raise:oom")]
)
def test_our_own_errors_fail_the_job_in_one_line_and_reject_no_row(
    ray_local, world, tmp_path, job, fault
):
    """A bug in our transform, or a GPU out of memory, in a worker: the job fails with one
    line and the traceback in a log, and writes no reject (they used to be decode_errors)."""
    out = tmp_path / "out"
    args = [job, str(world / "b1"), "--output", str(out)]
    if job == "embed":
        args += ["--model", str(world / "run")]
    env_logs = tmp_path / "logs"
    os.environ["MMPIPE_LOG_DIR"] = str(env_logs)
    try:
        res = _run(args, ray_local, fault, tmp_path)
    finally:
        del os.environ["MMPIPE_LOG_DIR"]
    assert res.returncode == 1, res.stderr[-2000:]
    # Ray's own lines may precede it (issue 36 moves them to the log); ours is one line.
    ours = [x for x in res.stderr.splitlines() if x.startswith("mmpipe:")]
    assert len(ours) == 1 and "an error that is no sample's" in ours[0], res.stderr[-2000:]
    cause = "OutOfMemoryError: CUDA out of memory" if job == "embed" else "RuntimeError: injected"
    assert cause in ours[0], ours[0]
    assert "traceback: " in ours[0] and any(env_logs.iterdir())
    written = [p for p in out.rglob("*.parquet")] if out.exists() else []
    assert not [p for p in written if "reject" in str(p) and pq.read_metadata(p).num_rows]
    assert not (out / "_SUCCESS").exists() and not (out / "latest").exists()
