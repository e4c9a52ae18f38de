"""Interrupting a build and resuming it loses and duplicates nothing; s3:// round trip via moto."""

from __future__ import annotations

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

pytestmark = pytest.mark.usefixtures("ray_local")


@pytest.mark.slow
def test_interrupted_build_resumes_to_identical_output(tmp_path):
    corpus = tmp_path / "c"
    info = write_corpus(str(corpus), n=150, seed=3)
    args = dict(shard_samples=3, resize=48, image_format="webp")
    ref = tmp_path / "ref"
    run_build(
        BuildConfig(input=str(corpus / "manifest.jsonl"), output=str(ref), **args), quiet=True
    )

    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "pipeline",
        "build",
        str(corpus / "manifest.jsonl"),
        "--output",
        str(out),
        "--shard-samples",
        "3",
        "--resize",
        "48",
        "--image-format",
        "webp",
        "--ray-num-cpus",
        "2",
        "-q",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stderr=subprocess.PIPE)
    chunks = out / "_work" / "chunks"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if chunks.exists() and len(list(chunks.glob("*.parquet"))) >= 3:
                break
            time.sleep(0.05)
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            pytest.fail(
                f"the build ended (rc {proc.returncode}) before it could be interrupted: {err[-2000:]}"
            )
        os.kill(proc.pid, signal.SIGINT)  # Ctrl-C: the driver stops and shuts its Ray down
        proc.wait(timeout=60)
    finally:
        stop_process(proc)
    assert not (out / "build.json").exists()
    assert not list(out.glob("*.parquet")), (
        "index/rejects must not appear before the build finishes"
    )
    done_before = len(list(chunks.glob("*.parquet")))
    assert 3 <= done_before < -(-info["rows"] // 3)  # some chunks done, not all

    rep = run_build(
        BuildConfig(input=str(corpus / "manifest.jsonl"), output=str(out), **args), quiet=True
    )
    assert rep["chunks"]["resumed"] >= done_before
    check_invariant(out, info["rows"])
    names = sorted(p.name for p in (ref / "shards").iterdir())
    assert names == sorted(p.name for p in (out / "shards").iterdir())
    for n in names:
        assert (ref / "shards" / n).read_bytes() == (out / "shards" / n).read_bytes()
    assert not list(out.rglob(".*tmp-*"))  # no temp files left behind


def test_s3_round_trip(tmp_path, s3_endpoint):
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.mkdir("mmpipe-test")
    corpus = tmp_path / "c"
    info = write_corpus(str(corpus), n=12, seed=5)
    fs.put(str(corpus), "mmpipe-test/corpus", recursive=True)
    # A remote manifest may not reach local files: this row is refused, not read.
    with fs.open("mmpipe-test/corpus/manifest.jsonl", "ab") as f:
        f.write(b'{"key": "local", "image": "/etc/hostname"}\n')
    rep = run_build(
        BuildConfig(
            input="s3://mmpipe-test/corpus/manifest.jsonl",
            output="s3://mmpipe-test/out",
            shard_samples=5,
        ),
        quiet=True,
    )
    assert rep["counts"]["input_rows"] == info["rows"] + 1
    assert fs.exists("mmpipe-test/out/build.json")
    assert not fs.exists("mmpipe-test/out/_work")
    with fs.open("mmpipe-test/out/index/part-00000.parquet", "rb") as f:
        index = pq.read_table(f)
    with fs.open("mmpipe-test/out/rejects.parquet", "rb") as f:
        rejects = pq.read_table(f)
    assert index.num_rows + rejects.num_rows == info["rows"] + 1
    assert "disallowed_ref" in rejects["reason"].to_pylist()
    listed = fs.ls("mmpipe-test/out/shards")
    shards = [s for s in listed if s.endswith(".tar")]
    # Besides the tars: the loader files (sizes.json for open_clip, shardindex.json for wids).
    assert len(shards) == rep["counts"]["shards"]
    assert sorted(s.rsplit("/", 1)[-1] for s in listed if s not in shards) == [
        "shardindex.json",
        "sizes.json",
    ]
    local = tmp_path / "shard.tar"
    fs.get(shards[0], str(local))
    import tarfile

    with tarfile.open(local) as tf:
        assert tf.getmembers()
    assert Path(local).stat().st_size % 10240 == 0
