"""What a submitted job carries: the code (no data, no outputs), its config, pins and env vars."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import UserError

# Only the code travels: data, outputs, caches and virtualenvs stay home.
SHIPPED = ("pipeline", "schemas", "jobs", "pyproject.toml", "requirements.lock")
EXCLUDES = ["__pycache__", "*.pyc", "*.tar", "*.parquet", "*.pt", "*_out", "_work", ".venv", ".git"]
CONFIG_NAME = "_submitted_config.yaml"
# Names that look like credentials: they must come from the cluster's identity (instance role,
# workload identity, a Kubernetes Secret), never through job metadata that the dashboard shows.
SECRET_RE = re.compile(
    r"(SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|PRIVATE|SESSION_KEY|API_KEY)", re.I
)


def project_root() -> Path:
    return Path(__file__).resolve().parents[2]


def validate_config(job: str, path: str) -> dict[str, Any]:
    """Validate the config exactly as the job will (``pipeline.registry``), before anything is
    submitted, so a misspelt field fails here, at once, rather than on the cluster. Paths are
    the cluster's to resolve, not this machine's. Returns the YAML mapping."""
    from pipeline.config import load_yaml
    from pipeline.registry import job as find_job

    spec = find_job(job)
    if not os.path.isfile(path):
        raise UserError(f"--config {path} does not exist")
    data = load_yaml(path)
    if spec.section not in data:
        raise UserError(f"{path} has no '{spec.section}:' mapping, which the {job} job reads")
    spec.load_config(path)
    return data


def config_hash(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:8]


def pinned_requirements(lock: Path) -> list[str]:
    """``name==version`` lines of the hashed lock: the cluster installs exactly these versions."""
    pins = []
    for line in lock.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-\[\]]+==[^\s\\;]+)", line)
        if m:
            pins.append(m.group(1))
    return pins


def check_env(env: dict[str, str]) -> dict[str, str]:
    bad = sorted(k for k in env if SECRET_RE.search(k))
    if bad:
        raise UserError(
            f"--env {', '.join(bad)} looks like a credential; the cluster's identity must provide "
            "it (instance role, workload identity or a Kubernetes Secret), never job metadata"
        )
    return env


def stage_working_dir(config_path: str) -> str:
    """A temporary copy of the code plus the config: the job's working_dir. The copy is small
    (the package, not the repository), so uploads stay fast and never carry data."""
    root = project_root()
    tmp = tempfile.mkdtemp(prefix="mmpipe-submit-")
    for name in SHIPPED:
        src = root / name
        if src.is_dir():
            shutil.copytree(src, Path(tmp) / name, ignore=shutil.ignore_patterns(*EXCLUDES))
        elif src.exists():
            shutil.copy2(src, Path(tmp) / name)
    with open(config_path, "rb") as f:
        data = yaml.safe_load(f)
    (Path(tmp) / CONFIG_NAME).write_text(yaml.safe_dump(data, sort_keys=False))
    return tmp


def runtime_env(
    working_dir: str, deps: str, image: str | None, env: dict[str, str]
) -> dict[str, Any]:
    """``deps``: ``lock`` installs the pins of requirements.lock in a job virtualenv; ``image``
    runs the job in a prebuilt container; ``none`` uses the cluster's own environment (an image
    built from the lock, as cluster.yaml and k8s/ do)."""
    from pipeline.session import ALLOCATOR_ENV

    out: dict[str, Any] = {
        "working_dir": working_dir,
        "excludes": EXCLUDES,
        # The measured allocator settings (docs/benchmarks.md) and no Ray-in-uv re-creation.
        "env_vars": {**ALLOCATOR_ENV, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0", **check_env(env)},
    }
    if deps == "lock":
        out["pip"] = {
            "packages": pinned_requirements(project_root() / "requirements.lock"),
            "pip_check": False,
        }
    elif deps == "image":
        if not image:
            raise UserError("--deps image needs --image REGISTRY/IMAGE:TAG")
        out["image_uri"] = image
    elif deps != "none":
        raise UserError(f"--deps {deps!r}: choose lock, image or none")
    return out
