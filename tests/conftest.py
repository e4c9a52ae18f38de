"""Shared fixtures: a moto S3 server and one local Ray for the session, both on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen, timeout: float = 10) -> None:
    """Stop a process we started (its own session) by PID: TERM, then KILL if it lingers."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)


def serve(
    args: list[str], cwd: Path | None = None, bind: str = "127.0.0.1"
) -> tuple[subprocess.Popen, str]:
    """Start a server on ``bind``, a loopback address (``{port}`` in ``args`` becomes a free
    port) and wait until it accepts, at most 20 s. Returns the process (stop it with
    ``stop_process``) and its base URL."""
    port = _free_port()
    proc = subprocess.Popen(
        [a.replace("{port}", str(port)) for a in args],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection((bind, port), timeout=0.5).close()
            return proc, f"http://{bind}:{port}"
        except OSError:
            time.sleep(0.1)
    stop_process(proc)
    pytest.fail(f"{args[:3]} did not start within 20 s")


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3 server; started before Ray so that workers inherit its endpoint."""
    port = _free_port()
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.1)
    else:
        stop_process(proc)
        pytest.fail("moto server did not start within 30s")
    env = {
        "AWS_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield url
    stop_process(proc)
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def ray_local(s3_endpoint):
    """One local Ray for every test that needs it (starting Ray costs seconds on 2 cores)."""
    import ray

    from pipeline.session import worker_env

    # More logical than physical CPUs, so read tasks and chunk tasks never starve each other.
    ray.init(
        num_cpus=4,
        include_dashboard=False,
        logging_level="ERROR",
        log_to_driver=False,
        runtime_env={"env_vars": worker_env()},
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def world(ray_local, tmp_path_factory):
    """A 60-sample corpus built into 3 shards, its features, and two models trained on them
    in-process (embed, refresh and submit tests share them)."""
    from pipeline.build.job import run_build
    from pipeline.config import BuildConfig
    from pipeline.features.config import load_features_config
    from pipeline.features.job import run_features
    from pipeline.sample_corpus import write_corpus
    from pipeline.train.config import load_train_config
    from pipeline.train.job import train_in_process

    root = tmp_path_factory.mktemp("ecorpus")
    write_corpus(str(root / "c"), n=60, seed=5, broken=False)
    run_build(
        BuildConfig(
            input=str(root / "c" / "manifest.jsonl"), output=str(root / "b1"), shard_samples=20
        ),
        quiet=True,
    )
    fcfg = load_features_config(
        {
            "shards": str(root / "b1"),
            "output": str(root / "f"),
            "batch_size": 16,
            "audio": {"name": "audio_cnn", "weights": "random"},
            "audio_frames": 100,
            "actor_num_cpus": 0.5,
        }
    )
    run_features(fcfg, quiet=True)
    tcfg = {"data": str(root / "f"), "epochs": 30, "batch_size": 16, "d_model": 32, "embed_dim": 16}
    train_in_process(load_train_config({**tcfg, "output": str(root / "run")}))
    train_in_process(load_train_config({**tcfg, "output": str(root / "run2"), "seed": 1}))
    return root
