"""Trust boundaries: safe YAML, credentials redacted from what we write and print, safe modes."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.build.job import run_build
from pipeline.cli import main
from pipeline.config import BuildConfig
from pipeline.redact import redact
from tests import media

SECRET = "s3cr3tSIGNATURE"


def test_yaml_with_python_tags_is_refused_in_one_line(tmp_path, capsys):
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(
        "build:\n  input: !!python/object/apply:os.system ['touch pwned']\n  output: o\n"
    )
    assert main(["build", "x.jsonl", "--output", str(tmp_path / "o"), "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "not valid YAML" in err and len(err.strip().splitlines()) == 1
    assert not Path("pwned").exists()


def test_redact_covers_userinfo_and_signed_urls():
    url = f"https://alice:{SECRET}@host/x.jpg?X-Amz-Credential=AKIA/x&X-Amz-Signature={SECRET}&w=1"
    out = redact(f"fetch failed: {url}")
    assert SECRET not in out and "AKIA" not in out and "w=1" in out and "host/x.jpg" in out
    assert redact("s3://bucket/key.tar") == "s3://bucket/key.tar"


@pytest.mark.usefixtures("ray_local")
def test_credentials_never_reach_reports_rejects_or_error_lines(tmp_path, capsys):
    (tmp_path / "ok.jpg").write_bytes(media.jpeg(32, 32))
    rows = [
        {"image": "ok.jpg", "text": "fine"},
        {"image": f"http://bob:{SECRET}@127.0.0.1:9/a.jpg?token={SECRET}", "text": "unreachable"},
    ]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    # 127.0.0.1 opened on purpose: the refused connection's own error is what is checked here.
    cfg = BuildConfig(input=str(tmp_path / "m.jsonl"), output=str(out), allow_hosts=["127.0.0.1"])
    run_build(cfg, quiet=True)
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    assert len(rejects) == 1 and rejects[0]["reason"] == "fetch_error"
    assert SECRET not in rejects[0]["message"] and "127.0.0.1:9" in rejects[0]["message"]
    assert SECRET not in (out / "build.json").read_text()
    bad = f"https://u:{SECRET}@127.0.0.1:9/m.jsonl?sig={SECRET}"
    assert main(["build", bad, "--output", str(tmp_path / "o2"), "-q"]) != 0
    assert SECRET not in capsys.readouterr().err
    # Files are readable by others but writable by the owner only; no directory is world-writable.
    for p in out.rglob("*"):
        mode = stat.S_IMODE(p.stat().st_mode)
        assert not mode & 0o002, (p, oct(mode))
        if p.is_file():
            assert mode & 0o777 == 0o644, (p, oct(mode))
