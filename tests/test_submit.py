"""mmpipe submit / jobs against a real Ray head started here (`ray start --head`, 127.0.0.1 only)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.cli import main
from tests.conftest import _free_port, stop_process

pytestmark = pytest.mark.slow  # a cluster, a proxy or a small object store: long


BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def head():
    """A Ray head with its dashboard on 127.0.0.1, started and stopped by PID (its own session)."""
    port, dash = _free_port(), _free_port()
    temp = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's socket paths have a limit
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
    env.update(
        RAY_AUTH_MODE="disabled",
        RAY_ENABLE_UV_RUN_RUNTIME_ENV="0",
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    log = open(os.path.join(temp, "head.log"), "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            "--num-cpus=4",
            "--include-dashboard=true",
            f"--temp-dir={temp}",
            "--disable-usage-stats",
            # Ports of their own: the session's local Ray already holds the default agent ports.
            f"--dashboard-agent-listen-port={_free_port()}",
            f"--dashboard-agent-grpc-port={_free_port()}",
            f"--metrics-export-port={_free_port()}",
            f"--runtime-env-agent-port={_free_port()}",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{dash}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/api/version", timeout=2):
                break
        except OSError:
            time.sleep(0.5)
    else:
        stop_process(proc, timeout=30)
        pytest.fail(f"ray head did not start: {Path(temp, 'head.log').read_text()[-2000:]}")
    _ran_a_job(url, deadline=time.monotonic() + 180)
    yield url
    stop_process(proc, timeout=60)
    log.close()
    shutil.rmtree(temp, ignore_errors=True)


def _ran_a_job(url: str, deadline: float) -> None:
    """The dashboard answers before the head's job agent can run a job: wait (bounded) until a
    trivial job succeeds, so the tests below measure our submit, not the head's start-up."""
    from ray.job_submission import JobSubmissionClient

    c = JobSubmissionClient(url)
    sid = None
    while sid is None and time.monotonic() < deadline:
        try:
            sid = c.submit_job(entrypoint="python -c pass")
        except RuntimeError:  # "No available agent to submit job" while the agent starts
            time.sleep(1)
    status = None
    while sid is not None and time.monotonic() < deadline:
        status = str(c.get_job_status(sid)).split(".")[-1]
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        time.sleep(0.5)
    if status != "SUCCEEDED":
        info = c.get_job_info(sid).message if sid else "never accepted"
        pytest.fail(f"the ray head did not run a trivial job: {status}: {info}")


def _yaml(path: Path, section: str, fields: dict) -> Path:
    path.write_text(yaml.safe_dump({section: fields}))
    return path


def test_build_and_refresh_jobs_run_on_the_cluster(head, world, tmp_path, capsys):
    fields = {
        "input": str(world / "c" / "manifest.jsonl"),
        "output": str(tmp_path / "build"),
        "shard_samples": 20,
    }
    cfg = _yaml(tmp_path / "build.yaml", "build", fields)
    code = main(
        [
            "submit",
            "build",
            "--config",
            str(cfg),
            "--address",
            head,
            "--deps",
            "none",
            "--follow",
            "--timeout",
            "300",
        ]
    )
    err = capsys.readouterr()
    assert code == 0, f"{err.err[-2000:]}\n{err.out[-3000:]}"
    sid = err.err.split("submitted ", 1)[1].split()[0]
    assert (
        sid.startswith("mmpipe-build-") and "build:" in err.out
    )  # the job's own log lines, streamed
    report = json.loads((tmp_path / "build" / "build.json").read_text())
    assert report["counts"]["written"] == 60
    assert main(["jobs", "status", sid, "--address", head]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["status"] == "SUCCEEDED" and info["metadata"]["mmpipe_job"] == "build"

    cfg = _yaml(
        tmp_path / "refresh.yaml",
        "embed",
        {
            "shards": str(tmp_path / "build"),
            "model": str(world / "run"),
            "output": str(tmp_path / "emb"),
            "batch_size": 16,
            "actor_num_cpus": 0.5,
        },
    )
    code = main(
        [
            "submit",
            "refresh",
            "--config",
            str(cfg),
            "--address",
            head,
            "--deps",
            "none",
            "--wait",
            "--timeout",
            "400",
        ]
    )
    assert code == 0, capsys.readouterr()
    latest = (tmp_path / "emb" / "latest").read_text().strip()
    files = sorted((tmp_path / "emb" / "versions" / latest / "data").glob("*.parquet"))
    assert sum(pq.read_metadata(f).num_rows for f in files) == 60
    assert main(["jobs", "list", "--address", head]) == 0
    listing = capsys.readouterr().out
    assert sid in listing and "refresh" in listing


def test_a_failing_job_reports_failure_with_its_message(head, tmp_path, capsys):
    cfg = _yaml(
        tmp_path / "bad.yaml",
        "build",
        {"input": str(tmp_path / "no-such-manifest.jsonl"), "output": str(tmp_path / "out")},
    )
    code = main(
        [
            "submit",
            "build",
            "--config",
            str(cfg),
            "--address",
            head,
            "--deps",
            "none",
            "--wait",
            "--timeout",
            "120",
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    sid = err.split("submitted ", 1)[1].split()[0]
    # Why it failed, in one line, and where the whole log is.
    assert f"{sid}: FAILED" in err and f"mmpipe jobs logs {sid}" in err
    assert main(["jobs", "logs", sid, "--address", head]) == 0
    logs = capsys.readouterr().out
    assert (
        "build_dataset: error:" in logs
        and "no-such-manifest.jsonl" in logs
        and "Traceback" not in logs
    )


def test_bad_configs_and_credentials_stop_before_submitting(head, tmp_path, capsys):
    cfg = _yaml(
        tmp_path / "typo.yaml", "build", {"input": "x.jsonl", "output": "o", "shard_sampels": 5}
    )
    assert main(["submit", "build", "--config", str(cfg), "--address", head]) == 2
    assert "shard_sampels" in capsys.readouterr().err
    ok = _yaml(tmp_path / "ok.yaml", "build", {"input": "x.jsonl", "output": "o"})
    assert (
        main(
            [
                "submit",
                "build",
                "--config",
                str(ok),
                "--address",
                head,
                "--env",
                "AWS_SECRET_ACCESS_KEY=abc",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "credential" in err and "abc" not in err
    assert main(["submit", "build", "--config", str(ok), "--address", "http://127.0.0.1:9"]) == 2
    assert "cannot reach the Ray Jobs API" in capsys.readouterr().err
    assert main(["jobs", "list", "--address", head]) == 0
    assert "typo" not in capsys.readouterr().out


def test_the_runtime_env_carries_code_pins_and_env_but_no_data(tmp_path):
    from pipeline.submit.package import CONFIG_NAME, runtime_env, stage_working_dir

    cfg = _yaml(tmp_path / "c.yaml", "build", {"input": "s3://b/m.jsonl", "output": "s3://b/out"})
    wd = stage_working_dir(str(cfg))
    try:
        names = sorted(p.name for p in Path(wd).iterdir())
        assert names == sorted(
            [CONFIG_NAME, "jobs", "pipeline", "pyproject.toml", "requirements.lock", "schemas"]
        )
        assert not list(Path(wd).rglob("*.parquet")) and not list(Path(wd).rglob("__pycache__"))
        env = runtime_env(wd, "lock", None, {"MMPIPE_OP_RESERVATION": "1"})
        assert any(p.startswith("torch==") for p in env["pip"]["packages"])
        assert env["env_vars"]["MALLOC_MMAP_THRESHOLD_"] == "268435456"
        assert runtime_env(wd, "image", "reg/mmpipe:1", {})["image_uri"] == "reg/mmpipe:1"
    finally:
        shutil.rmtree(wd)
