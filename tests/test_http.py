"""Manifests of http:// URLs served from 127.0.0.1: fetched, validated, and 404s counted as missing."""

from __future__ import annotations

import json
import sys

import pytest

from pipeline.build.job import run_build
from pipeline.config import BuildConfig
from pipeline.io.fetcher import Fetcher, FetchPolicy, TooLargeError
from tests import media
from tests.conftest import serve, stop_process
from tests.test_build import check_invariant

# The server is on 127.0.0.1, which URLs from the data may not reach unless opened on purpose.
LOOPBACK = ("127.0.0.1",)


@pytest.fixture()
def http_dir(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    proc, base = serve(
        [sys.executable, "-m", "http.server", "-b", "127.0.0.1", "{port}", "-d", str(root)]
    )
    yield root, base
    stop_process(proc)


def test_fetch_caps_size_and_maps_errors(http_dir):
    root, base = http_dir
    (root / "a.bin").write_bytes(b"x" * 5000)
    big, small = (
        Fetcher(FetchPolicy(max_bytes=10_000, allow_hosts=LOOPBACK)),
        Fetcher(FetchPolicy(max_bytes=100, allow_hosts=LOOPBACK)),
    )
    try:
        assert big.fetch(f"{base}/a.bin") == b"x" * 5000
        # Content-Length says it is too large: nothing past the headers is read.
        too = small.fetch(f"{base}/a.bin")
        assert isinstance(too, TooLargeError) and too.size == 5000
        assert isinstance(big.fetch(f"{base}/nope.bin"), FileNotFoundError)
        assert isinstance(big.fetch("http://127.0.0.1:1/x"), ConnectionError)
        assert isinstance(big.fetch("http://[::1/x"), ConnectionError)  # not a URL
    finally:
        big.close()
        small.close()


@pytest.mark.usefixtures("ray_local")
def test_build_from_http_manifest(http_dir, tmp_path):
    root, base = http_dir
    for i in range(6):
        (root / f"{i}.jpg").write_bytes(media.jpeg(40 + i, 30))
    rows = [{"key": f"k{i}", "image": f"{base}/{i}.jpg", "text": f"caption {i}"} for i in range(6)]
    rows.append({"key": "gone", "image": f"{base}/missing.jpg"})
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "out"
    run_build(
        BuildConfig(
            input=str(tmp_path / "m.jsonl"),
            output=str(out),
            resize=32,
            image_format="webp",
            allow_hosts=list(LOOPBACK),
        ),
        quiet=True,
    )
    index, rejects = check_invariant(out, 7)
    assert rejects["reason"].to_pylist() == ["missing"]
    assert index["image_format"].to_pylist() == ["webp"] * 6
    # The manifest itself over HTTP, with references relative to it; read as one chunk
    # and still rolled into shards of shard_samples.
    rel = [{"key": f"r{i}", "image": f"{i}.jpg", "text": f"relative {i}"} for i in range(6)]
    (root / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rel) + "\n")
    out2 = tmp_path / "out2"
    rep = run_build(
        BuildConfig(
            input=f"{base}/m.jsonl", output=str(out2), shard_samples=4, allow_hosts=list(LOOPBACK)
        ),
        quiet=True,
    )
    index2, _ = check_invariant(out2, 6)
    assert rep["counts"]["shards"] == 2 and index2.num_rows == 6
