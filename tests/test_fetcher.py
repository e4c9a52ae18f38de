"""The streaming fetcher against real servers on 127.0.0.1: faults, latency, order and memory."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import psutil
import pyarrow as pa
import pytest

from pipeline.build.job import run_build
from pipeline.build.stream import FetchedRows
from pipeline.config import BuildConfig
from pipeline.io.fetcher import Fetcher, FetchPolicy
from pipeline.validate.fetch import FetchStage
from tests import media
from tests.conftest import serve, stop_process
from tests.faultproxy import FaultProxy
from tests.test_build import check_invariant

ROOT = Path(__file__).resolve().parents[1]
# The hosts are on 127.0.0.1, which URLs from the data may not reach unless opened on purpose.
LOOPBACK = ("127.0.0.1",)


def _host(root: Path, *flags: str) -> tuple[subprocess.Popen, str]:
    args = [sys.executable, "-m", "tests.http_host", "--root", str(root), "--port", "{port}"]
    return serve([*args, *flags], cwd=ROOT)


@pytest.fixture()
def host(tmp_path):
    """Start tests/http_host.py over tmp_path/www with the given flags; stopped by PID."""
    (tmp_path / "www").mkdir()
    started = []

    def start(*flags: str) -> tuple[Path, str]:
        proc, base = _host(tmp_path / "www", *flags)
        started.append(proc)
        return tmp_path / "www", base

    yield start
    for proc in started:
        stop_process(proc)


def _stats(base: str) -> dict:
    with urllib.request.urlopen(f"{base}/_stats", timeout=10) as r:
        return dict(json.loads(r.read()))


def test_truncated_bodies_and_503s_are_retried_or_reported(host):
    root, base = host("--fail", "0.3", "--truncate", "0.2")
    payloads = {f"{i}.bin": bytes([i % 251]) * (20_000 + i) for i in range(200)}
    for name, data in payloads.items():
        (root / name).write_bytes(data)
    f = Fetcher(FetchPolicy(max_bytes=1 << 20, allow_hosts=LOOPBACK))
    try:
        futures = {name: f.submit(f"{base}/{name}") for name in payloads}
        got = {name: fu.result(timeout=120) for name, fu in futures.items()}
    finally:
        f.close()
    stats = _stats(base)
    assert stats["503"] > 20 and stats["truncated"] > 10  # the faults happened
    # Every answer is the whole file or an error: a truncated body is never taken as data.
    for name, res in got.items():
        assert res == payloads[name] or isinstance(res, ConnectionError)
    assert sum(isinstance(r, bytes) for r in got.values()) >= 150  # retries rescued most


def test_rows_come_back_as_they_land_and_in_bounds(host, tmp_path):
    root, base = host("--latency-ms", "50")
    for i in range(300):
        (root / f"{i}.bin").write_bytes(b"x" * 10_000)
    refs = [[{"ref": f"{base}/{i}.bin", "data": None}] for i in range(300)]
    table = pa.table({"members": refs, "source_row": list(range(300))})
    stage = FetchStage(max_file_bytes=1 << 20, allow_hosts=LOOPBACK)
    seen, held = [], []
    with FetchedRows(stage, table, max_bytes=200_000) as rows:
        for got, batch in rows:
            assert all(p[0]["data"] == b"x" * 10_000 for p in batch["members"])
            seen.extend(got)
            held.append(rows._held)
            for i in got:  # release at once: the caller writes as rows arrive
                rows.release(i)
    assert sorted(seen) == list(range(300))
    # Held bytes never pass the cap by more than what was already in flight.
    assert max(held) <= 200_000 + 4 * stage.fetcher.allowed() * 10_000


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc through psutil")
def test_a_thousand_requests_in_flight_cost_little_memory(host):
    root, base = host("--latency-ms", "3000")
    for i in range(1000):
        (root / f"{i}.bin").write_bytes(b"y" * 2_000)
    f = Fetcher(FetchPolicy(max_bytes=1 << 20, ceiling=1000, start=1000, allow_hosts=LOOPBACK))
    proc = psutil.Process()
    try:
        f.fetch(f"{base}/0.bin")  # the session and its imports exist before the baseline
        before = proc.memory_info().rss
        futures = [f.submit(f"{base}/{i}.bin") for i in range(1000)]
        time.sleep(2.0)  # all sent, none answered yet (3 s of latency)
        during = proc.memory_info().rss
        assert _stats(base)["peak_in_flight"] >= 990
        results = [fu.result(timeout=60) for fu in futures]
    finally:
        f.close()
    assert all(r == b"y" * 2_000 for r in results)
    assert during - before < 64 << 20, f"{(during - before) >> 20} MB for 1,000 requests"


@pytest.mark.usefixtures("ray_local")
def test_a_build_from_a_faulty_host_loses_nothing(host, tmp_path):
    root, base = host("--fail", "0.1", "--truncate", "0.05", "--latency-ms", "20")
    rows = []
    for i in range(120):
        (root / f"{i}.jpg").write_bytes(media.jpeg(30 + i % 40, 24))
        rows.append({"key": f"k{i}", "image": f"{base}/{i}.jpg", "text": f"caption {i}"})
    rows.append({"key": "gone", "image": f"{base}/missing.jpg"})
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "out"
    cfg = BuildConfig(
        input=str(tmp_path / "m.jsonl"),
        output=str(out),
        shard_samples=50,
        allow_hosts=["127.0.0.1"],
    )
    run_build(cfg, quiet=True)
    index, rejects = check_invariant(out, 121)
    stats = _stats(base)
    assert stats["503"] > 0 and stats["truncated"] > 0
    assert "missing" in rejects["reason"].to_pylist()
    assert set(rejects["reason"].to_pylist()) <= {"missing", "fetch_error"}
    # Fetches land in any order; rows are written in input order all the same.
    assert index["key"].to_pylist() == sorted(index["key"].to_pylist(), key=lambda k: int(k[1:]))


def test_an_unexpected_error_in_the_client_reaches_the_row(monkeypatch):
    """Anything that escapes a request becomes that row's fetch_error: no chunk waits forever."""

    async def broken(self, url):
        raise RuntimeError("a bug in the client")

    monkeypatch.setattr(Fetcher, "_attempt", broken)
    stage = FetchStage(max_file_bytes=100, allow_hosts=LOOPBACK)
    stage.fetcher = Fetcher(FetchPolicy(max_bytes=100, allow_hosts=LOOPBACK))
    stage._ready = True
    batch = {"members": [[{"ref": "http://127.0.0.1:1/x.jpg", "data": None}]]}
    landed = threading.Event()
    try:
        stage.submit(batch, lambda _row: landed.set())
        assert landed.wait(30), "the row never landed"
    finally:
        stage.fetcher.close()
    (part,) = batch["members"][0]
    assert part["error"] == "fetch_error" and "a bug in the client" in part["message"]


def test_the_proxy_in_the_environment_is_used_and_no_proxy_bypasses_it(host, monkeypatch):
    root, base = host()
    (root / "a.bin").write_bytes(b"a" * 5000)
    proxy = FaultProxy(base)  # "ok" mode: a forward proxy that counts what passes through it
    for name in ("NO_PROXY", "no_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    f = Fetcher(FetchPolicy(max_bytes=1 << 20, allow_hosts=LOOPBACK))
    try:
        assert f.fetch(f"{base}/a.bin") == b"a" * 5000
        assert proxy.seen == 1
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        assert f.fetch(f"{base}/a.bin") == b"a" * 5000
        assert proxy.seen == 1, "NO_PROXY names the host, yet the request went to the proxy"
        # Credentials in the proxy's URL go to the proxy, as curl and requests send them.
        monkeypatch.delenv("NO_PROXY")
        monkeypatch.setenv("HTTP_PROXY", proxy.url.replace("http://", "http://user:pa%40ss@"))
        assert f.fetch(f"{base}/a.bin") == b"a" * 5000
        assert proxy.seen == 2 and proxy.auth == [None, "Basic dXNlcjpwYUBzcw=="]
    finally:
        f.close()
        proxy.close()


def test_a_compressed_body_is_capped_on_what_it_inflates_to():
    """Content-Length of a gzip body counts compressed bytes: 2 KB that inflate to 4 MB
    must hit a 1 MB cap as the bytes arrive, never be read whole in one go."""
    import gzip
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from pipeline.io.fetcher import TooLargeError

    bodies = {"/bomb": bytes(4 << 20), "/small": b"caption " * 100}

    class Gzipped(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            packed = gzip.compress(bodies[self.path])
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(packed)))
            self.end_headers()
            self.wfile.write(packed)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Gzipped)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    f = Fetcher(FetchPolicy(max_bytes=1 << 20, allow_hosts=LOOPBACK))
    try:
        assert len(gzip.compress(bodies["/bomb"])) < 10_000
        assert isinstance(f.fetch(f"{base}/bomb"), TooLargeError)
        assert f.fetch(f"{base}/small") == bodies["/small"]
    finally:
        f.close()
        server.shutdown()
        server.server_close()
        thread.join(10)
