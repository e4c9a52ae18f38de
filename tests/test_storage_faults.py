"""Transient and permanent object-store failures (a proxy in front of moto): bounded retries
with backoff, then one clear error; and a full disk leaves no half-written file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from s3fs import S3FileSystem

from pipeline.cli import main
from pipeline.io.fs import list_files, read_bytes, write_bytes_atomic
from pipeline.sample_corpus import write_corpus
from tests.faultproxy import FaultProxy

pytestmark = pytest.mark.slow  # a cluster, a proxy or a small object store: long


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def proxy(s3_endpoint, monkeypatch):
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="flaky")
    p = FaultProxy(s3_endpoint, every=2)
    monkeypatch.setenv("AWS_ENDPOINT_URL", p.url)
    monkeypatch.setenv("MMPIPE_S3_MAX_ATTEMPTS", "4")
    S3FileSystem.clear_instance_cache()  # s3fs caches clients with their endpoint
    yield p
    p.close()
    S3FileSystem.clear_instance_cache()


def test_throttled_requests_are_retried_and_the_data_is_exact(proxy):
    proxy.mode = "flaky"  # every second request answers 503 SlowDown
    blobs = {f"s3://flaky/run/part-{i}.bin": bytes([i]) * (1000 + i) for i in range(6)}
    for url, data in blobs.items():
        write_bytes_atomic(url, data)
    assert [read_bytes(u) for u in blobs] == list(blobs.values())
    assert list_files("s3://flaky/run") == sorted(u.rsplit("/", 1)[1] for u in blobs)
    assert proxy.failed >= 6  # the faults happened, and were absorbed by retries


def test_a_store_that_stays_down_fails_fast_with_one_clear_line(proxy, tmp_path, capsys):
    write_bytes_atomic("s3://flaky/in/manifest.jsonl", b'{"text": "hello"}\n')
    proxy.mode = "down"
    t0 = time.monotonic()
    with pytest.raises(OSError):
        read_bytes("s3://flaky/in/manifest.jsonl")
    assert time.monotonic() - t0 < 60  # bounded: a few attempts with backoff, not forever
    seen = proxy.seen
    code = main(["build", "s3://flaky/in/manifest.jsonl", "--output", str(tmp_path / "o"), "-q"])
    err = capsys.readouterr().err
    assert code in (1, 2) and proxy.seen > seen, (
        err
    )  # 2: the planner names the input it cannot reach
    lines = [x for x in err.splitlines() if x.startswith("mmpipe:")]
    assert len(lines) == 1 and lines[0].startswith("mmpipe: error:") and "Traceback" not in err
    assert "cannot reach input s3://flaky/in/manifest.jsonl" in lines[0] or "storage:" in lines[0]


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1) for a private tmpfs")
def test_a_full_disk_fails_clearly_and_leaves_no_file_under_its_final_name(tmp_path):
    """A real ENOSPC: the build writes to a 256 KiB tmpfs mounted in a private mount namespace
    (unshare -rm: no root, nothing mounted outside the test's own process tree)."""
    write_corpus(str(tmp_path / "c"), n=40, seed=2, broken=False)
    out, report = tmp_path / "out", tmp_path / "report"
    out.mkdir()
    script = (
        f"mount -t tmpfs -o size=256k tmpfs {out} || exit 97; "
        f"{sys.executable} -m pipeline build {tmp_path / 'c' / 'manifest.jsonl'} --output {out} "
        f"--shard-samples 10 --ray-num-cpus 2 -q 2> {report}.err; echo $? > {report}.rc; "
        f"find {out} -type f > {report}.files"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("unprivileged user+mount namespaces are disabled here")
    subprocess.run(
        ["unshare", "-rm", "sh", "-c", script], env=env, cwd=ROOT, timeout=300, check=True
    )
    err = Path(f"{report}.err").read_text()
    assert Path(f"{report}.rc").read_text().strip() == "1", err[-2000:]
    lines = [x for x in err.splitlines() if x.startswith("mmpipe:")]
    assert lines and "storage:" in lines[-1] and "No space left on device" in lines[-1], err[-3000:]
    files = Path(f"{report}.files").read_text().split()
    # Neither the commit markers nor any shard under its final name; no temp file left.
    assert not any(f.endswith(("build.json", "rejects.parquet")) for f in files)
    assert not any(f.startswith(f"{out}/index/") for f in files)
    assert not any("/shards/" in f for f in files)
    assert not any(".tmp-" in f for f in files), files
