"""`mmpipe submit` and `mmpipe jobs`: the Ray Jobs API (JobSubmissionClient), bounded waits."""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from typing import Any

from pipeline.errors import UserError
from pipeline.submit.package import (
    CONFIG_NAME,
    config_hash,
    project_root,
    runtime_env,
    stage_working_dir,
    validate_config,
)

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
DEFAULT_ADDRESS = "http://127.0.0.1:8265"


def client(address: str | None) -> Any:
    """A JobSubmissionClient for the dashboard at ``address`` (or RAY_ADDRESS). With token auth
    on the cluster (RAY_AUTH_MODE=token), Ray reads the token from RAY_AUTH_TOKEN or its token
    file: it never passes through our arguments or logs."""
    from ray.job_submission import JobSubmissionClient

    address = address or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS
    try:
        return JobSubmissionClient(address)
    except Exception as e:  # connection refused, wrong port, not a dashboard
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(
            f"cannot reach the Ray Jobs API at {address}: {first}; check --address"
        ) from None


def _git_commit() -> str | None:
    if not shutil.which("git"):
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(project_root()), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def submit(
    job: str,
    config: str,
    *,
    address: str | None = None,
    deps: str = "lock",
    image: str | None = None,
    env: dict[str, str] | None = None,
    submission_id: str | None = None,
) -> str:
    """Validate, package and submit; returns the submission id (``mmpipe-JOB-CONFIGHASH-TIME``)."""
    from pipeline import __version__
    from pipeline.registry import job as find_job

    validate_config(job, config)
    module = find_job(job).entrypoint
    sid = submission_id or (
        f"mmpipe-{job}-{config_hash(config)}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}"
    )
    c = client(address)
    wd = stage_working_dir(config)
    try:
        renv = runtime_env(wd, deps, image, env or {})
        metadata = {
            "mmpipe_job": job,
            "mmpipe_version": __version__,
            "config_sha256_8": config_hash(config),
            "config_name": os.path.basename(config),
            "submitted_by": getpass.getuser(),
            "git_commit": _git_commit() or "unknown",
        }
        deadline = time.monotonic() + 120
        while True:
            try:
                return str(
                    c.submit_job(
                        entrypoint=f"python -m {module} --config {CONFIG_NAME}",
                        runtime_env=renv,
                        submission_id=sid,
                        metadata=metadata,
                    )
                )
            except RuntimeError as e:
                # A head that has just started serves HTTP before its job agent is up.
                if "No available agent" not in str(e) or time.monotonic() > deadline:
                    raise UserError(
                        f"the cluster refused job {sid}: {str(e).splitlines()[0]}"
                    ) from None
                time.sleep(2)
    finally:
        shutil.rmtree(wd, ignore_errors=True)  # uploaded (content-addressed) by submit_job


def wait(
    sid: str, *, address: str | None = None, timeout_s: float = 3600, poll_s: float = 2.0
) -> str:
    """Poll until the job ends or ``timeout_s`` passes; returns the last status seen."""
    c = client(address)
    deadline = time.monotonic() + timeout_s
    status = str(c.get_job_status(sid))
    while status.split(".")[-1] not in TERMINAL and time.monotonic() < deadline:
        time.sleep(poll_s)
        status = str(c.get_job_status(sid))
    return status.split(".")[-1]


def follow(sid: str, *, address: str | None = None, timeout_s: float = 3600) -> str:
    """Stream the job's logs to stdout until it ends (bounded), then return its status."""
    import asyncio

    c = client(address)

    async def tail() -> None:
        async for lines in c.tail_job_logs(sid):
            sys.stdout.write(lines)
            sys.stdout.flush()

    try:
        asyncio.run(asyncio.wait_for(tail(), timeout=timeout_s))
    except asyncio.TimeoutError:
        print(
            f"mmpipe: stopped following {sid} after {timeout_s:.0f}s; it may still run",
            file=sys.stderr,
        )
    return wait(sid, address=address, timeout_s=60)


def exit_code(status: str) -> int:
    """0 when the job succeeded; 1 when it failed or was stopped; 3 when still running."""
    return {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 1}.get(status, 3)


def list_jobs(address: str | None = None) -> list[dict[str, Any]]:
    rows = []
    for j in client(address).list_jobs():
        rows.append(
            {
                "submission_id": j.submission_id,
                "status": str(j.status).split(".")[-1],
                "entrypoint": j.entrypoint,
                "start_time": j.start_time,
                "end_time": j.end_time,
                "job": (j.metadata or {}).get("mmpipe_job"),
            }
        )
    return sorted(rows, key=lambda r: r["start_time"] or 0)


def status(sid: str, address: str | None = None) -> dict[str, Any]:
    info = client(address).get_job_info(sid)
    return {
        "submission_id": sid,
        "status": str(info.status).split(".")[-1],
        "message": info.message,
        "metadata": info.metadata,
        "entrypoint": info.entrypoint,
    }


def logs(sid: str, address: str | None = None) -> str:
    return str(client(address).get_job_logs(sid))


def stop(sid: str, address: str | None = None) -> bool:
    return bool(client(address).stop_job(sid))
