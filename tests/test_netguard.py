"""URLs from the data reach public addresses only: loopback, private and metadata ones are refused."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import socket
import sys
import urllib.request
from pathlib import Path

import pytest

from pipeline.build.job import run_build
from pipeline.config import BuildConfig
from pipeline.errors import UserError
from pipeline.io.fetcher import Fetcher, FetchPolicy
from pipeline.io.netguard import BlockedAddressError, address_kind, parse_allow
from tests import media
from tests.conftest import serve, stop_process
from tests.faultproxy import FaultProxy
from tests.test_build import check_invariant

ROOT = Path(__file__).resolve().parents[1]
CREDS = b'{"AccessKeyId":"AKIAFAKE","SecretAccessKey":"fake-secret"}'


@pytest.mark.parametrize(
    ("ip", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("169.254.169.254", "cloud metadata"),
        ("fd00:ec2::254", "cloud metadata"),
        ("100.100.100.200", "cloud metadata"),
        ("169.254.10.1", "link-local"),
        ("fe80::1", "link-local"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("100.64.0.1", "non-public"),
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_address_kinds(ip, kind):
    assert address_kind(ipaddress.ip_address(ip)) == kind


def test_allow_hosts_takes_networks_and_names_and_names_a_bad_entry():
    nets, names = parse_allow(["10.0.0.0/8", "127.0.0.1", "MinIO.internal", "*.corp.example"])
    assert [str(n) for n in nets] == ["10.0.0.0/8", "127.0.0.1/32"]
    assert names == ("minio.internal", "*.corp.example")
    cfg = BuildConfig(input="m.jsonl", output="o", allow_hosts="10.0.0.0/8, minio.internal")
    assert cfg.allow_hosts == ["10.0.0.0/8", "minio.internal"]
    from pipeline.config import load_build_config

    with pytest.raises(UserError, match=r"allow_hosts.*'http://minio:9000'.*neither a network"):
        load_build_config(
            {"input": "m.jsonl", "output": "o", "allow_hosts": "http://minio:9000"}, None
        )


def _host(root: Path, bind: str = "127.0.0.1"):
    args = [sys.executable, "-m", "tests.http_host", "--root", str(root), "--port", "{port}"]
    return serve([*args, "--bind", bind], cwd=ROOT, bind=bind)


def _served(base: str) -> int:
    """Requests the host answered, its own stats page aside."""
    with urllib.request.urlopen(f"{base}/_stats", timeout=10) as r:
        stats = json.loads(r.read())
    return sum(v for k, v in stats.items() if k != "peak_in_flight")


@pytest.fixture()
def hosts(tmp_path):
    """A target on 127.0.0.1 holding the 'secrets', and a redirector on 127.0.0.2 that stands
    for a public host (the tests allow it by address, and only it)."""
    www = tmp_path / "www"
    www.mkdir()
    (www / "creds.txt").write_bytes(CREDS)
    for i, name in enumerate("abc"):  # distinct images, so that dedup keeps each
        (www / f"{name}.jpg").write_bytes(media.jpeg(40 + i, 30))
    target, tbase = _host(www)
    redirector, rbase = _host(www, bind="127.0.0.2")
    yield www, tbase, rbase
    stop_process(target)
    stop_process(redirector)


def _fake_dns(monkeypatch, answers: dict[str, list[list[str]]]) -> None:
    """A resolver that answers the given names with the given addresses, one answer per lookup
    in turn (the last repeats): a name that is public once and loopback the next time."""
    real = socket.getaddrinfo
    calls: dict[str, int] = {}

    def getaddrinfo(host, port, *args, **kwargs):
        if host not in answers:
            return real(host, port, *args, **kwargs)
        seq = answers[host]
        ips = seq[min(calls.get(host, 0), len(seq) - 1)]
        calls[host] = calls.get(host, 0) + 1
        fam = {4: socket.AF_INET, 6: socket.AF_INET6}
        return [
            (fam[ipaddress.ip_address(ip).version], socket.SOCK_STREAM, 6, "", (ip, port or 0))
            for ip in ips
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def test_every_way_into_a_private_address_is_refused_and_nothing_reaches_it(hosts, monkeypatch):
    _www, tbase, rbase = hosts
    port = tbase.rsplit(":", 1)[1]
    _fake_dns(monkeypatch, {"images.example.com": [["127.0.0.1"], ["10.0.0.7"]]})
    urls = [
        f"{tbase}/creds.txt",  # loopback literal
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/role",
        f"http://[::ffff:127.0.0.1]:{port}/a.jpg",  # loopback in IPv6 clothes
        f"{rbase}/_redirect?to={tbase}/creds.txt",  # a public host that redirects inward
        f"http://localhost:{port}/a.jpg",  # a name the system resolves to loopback
        f"http://images.example.com:{port}/a.jpg",  # a public name answering 127.0.0.1 ...
        f"http://images.example.com:{port}/b.jpg",  # ... and then a private address
    ]
    f = Fetcher(FetchPolicy(max_bytes=1 << 20, allow_hosts=("127.0.0.2",)))
    try:
        got = [f.fetch(u) for u in urls]
    finally:
        f.close()
    assert all(isinstance(g, BlockedAddressError) for g in got), got
    assert "cloud metadata" in str(got[1]) and "resolves to 127.0.0.1" in str(got[4])
    assert "resolves to 10.0.0.7" in str(got[6])
    assert _served(tbase) == 0, "a refused request reached the target"
    assert _served(rbase) == 1  # the redirect hop itself was asked; its target never was


def test_allowed_networks_and_names_are_fetched(hosts, monkeypatch):
    _www, tbase, rbase = hosts
    port = tbase.rsplit(":", 1)[1]
    _fake_dns(
        monkeypatch,
        {"minio.internal": [["127.0.0.1"]], "mixed.example.com": [["127.0.0.1", "10.0.0.7"]]},
    )
    f = Fetcher(FetchPolicy(max_bytes=1 << 20, allow_hosts=("127.0.0.0/8",)))
    g = Fetcher(FetchPolicy(max_bytes=1 << 20, allow_hosts=("minio.internal",)))
    try:
        assert f.fetch(f"{tbase}/creds.txt") == CREDS
        assert f.fetch(f"{rbase}/_redirect?to={tbase}/a.jpg") == (_www / "a.jpg").read_bytes()
        assert f.fetch(f"http://localhost:{port}/b.jpg") == (_www / "b.jpg").read_bytes()
        # One private answer refuses the name, even beside an allowed one.
        assert isinstance(f.fetch(f"http://mixed.example.com:{port}/c.jpg"), BlockedAddressError)
        # A name allowed by name is fetched; its address alone is not opened by that.
        assert g.fetch(f"http://minio.internal:{port}/c.jpg") == (_www / "c.jpg").read_bytes()
        assert isinstance(g.fetch(f"{tbase}/c.jpg"), BlockedAddressError)
    finally:
        f.close()
        g.close()
    assert _served(tbase) == 4


def test_through_a_proxy_the_target_is_checked_and_the_private_proxy_is_allowed(hosts, monkeypatch):
    _www, tbase, _rbase = hosts
    proxy = FaultProxy(tbase)  # forwards whatever it is asked to the target, and counts
    for name in ("NO_PROXY", "no_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    _fake_dns(monkeypatch, {"inward.example.com": [["127.0.0.1"]]})
    f = Fetcher(FetchPolicy(max_bytes=1 << 20))
    try:
        # A public name the proxy resolves (here we cannot): the proxy on 127.0.0.1 is used.
        assert f.fetch("http://files.example.invalid/creds.txt") == CREDS
        assert proxy.seen == 1
        # The target asked for is still checked: a loopback literal or a name that resolves
        # inward never reaches the proxy.
        assert isinstance(f.fetch(f"{tbase}/creds.txt"), BlockedAddressError)
        assert isinstance(f.fetch("http://inward.example.com/creds.txt"), BlockedAddressError)
        assert proxy.seen == 1
    finally:
        f.close()
        proxy.close()


@pytest.mark.usefixtures("ray_local")
def test_a_build_rejects_private_urls_and_writes_none_of_their_bodies(hosts, tmp_path):
    _www, tbase, rbase = hosts
    port = tbase.rsplit(":", 1)[1]
    rows = [
        {"key": "loopback", "image": f"{tbase}/a.jpg"},
        {"key": "metadata", "image": "http://169.254.169.254/latest/meta-data/x.jpg"},
        {"key": "redirect", "image": f"{rbase}/_redirect?to={tbase}/b.jpg"},
        {"key": "name", "image": f"http://localhost:{port}/c.jpg"},
        # The credentials case: a caption that is a URL of a .txt file (text_source: auto).
        {"key": "creds", "text": f"{tbase}/creds.txt"},
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")

    def build(out: Path, allow: list[str]) -> tuple:
        cfg = BuildConfig(input=str(manifest), output=str(out), allow_hosts=allow)
        with contextlib.suppress(UserError):  # a build that writes nothing may say so
            run_build(cfg, quiet=True)
        return check_invariant(out, len(rows))

    # The redirector stands for a public host: it alone is opened.
    index, rejects = build(tmp_path / "default", ["127.0.0.2"])
    by_key = dict(zip(rejects["key"].to_pylist(), rejects["reason"].to_pylist(), strict=True))
    assert index.num_rows == 0
    assert by_key == dict.fromkeys(
        ["loopback", "metadata", "redirect", "name", "creds"], "blocked_address"
    )
    assert _served(tbase) == 0, "a refused request reached the target"
    for path in (tmp_path / "default").rglob("*"):
        if path.is_file():
            assert b"AKIAFAKE" not in path.read_bytes(), f"{path} holds the served secret"

    # With the target's network allowed, the same rows are fetched (the metadata one stays out).
    index, rejects = build(tmp_path / "allowed", ["127.0.0.0/8"])
    assert sorted(index["key"].to_pylist()) == ["creds", "loopback", "name", "redirect"]
    assert rejects["reason"].to_pylist() == ["blocked_address"]
    assert _served(tbase) == 4
