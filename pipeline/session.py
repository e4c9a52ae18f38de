"""The Ray session of a job: start, join or reuse Ray, with the worker environment and the
Ray Data settings every job shares; Ray's own lines go to the run's log meanwhile."""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from collections.abc import Iterator
from typing import Any

from pipeline.errors import UserError
from pipeline.logs import ray_lines_to_log, reroute_ray_loggers

# glibc/Pillow settings measured on our 2-core VMs (docs/benchmarks.md): large decode
# buffers stop being mmap'd and trimmed on every image, which dominated decode time.
ALLOCATOR_ENV = {
    "MALLOC_MMAP_THRESHOLD_": "268435456",
    "MALLOC_TRIM_THRESHOLD_": "1073741824",
    "PILLOW_BLOCKS_MAX": "32",
}
SHUFFLE_INPUT_BYTES = 128 * 1024 * 1024
# Whether this process started the Ray it runs on: such a cluster never grows, so a request
# it cannot hold waits for ever rather than for an autoscaler.
_STARTED_HERE = [False]


def worker_env() -> dict[str, str]:
    env = {} if os.environ.get("MMPIPE_ALLOCATOR_ENV", "1") == "0" else dict(ALLOCATOR_ENV)
    # Workers must reach the same object store endpoint as the driver (tests, MinIO, moto).
    # MMPIPE_FAULT: the reliability tests' fault injection (pipeline/faults.py) reaches workers.
    for name in (
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "FSSPEC_S3_ENDPOINT_URL",
        "MMPIPE_FAULT",
    ):
        if name in os.environ:
            env[name] = os.environ[name]
    return env


def probe_address(address: str, timeout_s: float = 5.0) -> None:
    """Refuse an address where nothing listens, in seconds: ``ray.init`` retries such a
    bare ``host:port`` for ever, and a user sees only its repeated GCS warnings.

    Raises:
        UserError: the address is malformed or nothing answers there.
    """
    import socket
    from urllib.parse import urlsplit

    if address in ("auto", "local"):
        return
    if address.startswith(("http://", "https://")):
        raise UserError(
            f"--address {address} is a dashboard URL, which `mmpipe submit` takes; "
            "give the GCS address (HOST:6379) or ray://HOST:10001"
        )
    parts = urlsplit(address if "://" in address else f"ray-gcs://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host = port = None
    if not host or not port:
        raise UserError(f"--address {address} is not HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as e:
        reason = "timed out" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise UserError(
            f"no Ray at {address} ({reason} after at most {timeout_s:.0f} s); start one with "
            "`ray start --head`, or check --address"
        ) from None


@contextlib.contextmanager
def ray_session(
    address: str | None = None, num_cpus: int | None = None, quiet: bool = True, job: str = "mmpipe"
) -> Iterator[None]:
    """Use the running Ray, join ``address``, or start a local Ray and stop it afterwards.
    Ray's own lines go to the run's log file meanwhile (``pipeline/logs.py``)."""
    with ray_lines_to_log(job):
        with _ray_session(address, num_cpus, quiet):
            reroute_ray_loggers()
            yield


@contextlib.contextmanager
def _ray_session(address: str | None, num_cpus: int | None, quiet: bool) -> Iterator[None]:
    import ray

    started = False
    # Inside a job submitted through the Jobs API, RAY_ADDRESS names the cluster to join and
    # the job's runtime_env already applies (a second one would conflict with it).
    in_job = not address and bool(os.environ.get("RAY_ADDRESS"))
    address = address or os.environ.get("RAY_ADDRESS") or None
    if not ray.is_initialized():
        # The job's reporter is the display: Ray's INFO lines ("Started a local Ray
        # instance") are noise to a person, and what Ray logs goes to the run's log anyway.
        kwargs: dict[str, Any] = {
            "log_to_driver": not quiet,
            "configure_logging": True,
            "logging_level": "WARNING",
        }
        saved = dict(os.environ)
        if address:
            kwargs["address"] = address
            if not in_job:
                kwargs["runtime_env"] = {"env_vars": worker_env()}
        else:
            # The embedded Ray lives only for this command and listens on loopback only;
            # token auth would write a credential into the user's home for nothing.
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            # Local workers inherit the environment Ray starts with: cheaper than a
            # runtime_env, which costs ~2 s of worker start-up on a 2-core machine.
            os.environ.update(worker_env())
            kwargs.update(num_cpus=num_cpus, include_dashboard=False)
            store_mb = os.environ.get("MMPIPE_OBJECT_STORE_MB")
            if store_mb:  # a small store: what spilling does to a job (tests, sizing)
                kwargs["object_store_memory"] = int(store_mb) * 1024 * 1024
        if address:
            probe_address(address)
        try:
            ray.init(**kwargs)
            reroute_ray_loggers()
        except ConnectionError as e:
            raise UserError(f"cannot connect to Ray at {address}: {e}; check --address") from None
        finally:
            for k in ALLOCATOR_ENV:  # the driver's own children need not inherit them
                if k not in saved:
                    os.environ.pop(k, None)
        started = True
        _STARTED_HERE[0] = not address
    configure_data_context(quiet, small=small_cluster())
    try:
        yield
    finally:
        if started:
            _STARTED_HERE[0] = False
            ray.shutdown()


def starts_local_ray(address: str | None) -> bool:
    """Whether ``ray_session(address)`` will start a Ray of its own (no address, none joined).

    Decided without importing ray: a process that has not imported it cannot be connected.
    """
    import sys

    if address or os.environ.get("RAY_ADDRESS"):
        return False
    ray = sys.modules.get("ray")
    return ray is None or not ray.is_initialized()


def cluster_is_fixed() -> bool:
    """Whether the Ray we run on is the one this command started (no autoscaler adds nodes)."""
    return _STARTED_HERE[0]


def object_store_stats() -> dict[str, float]:
    """MiB spilled to and restored from disk so far, cluster-wide (shown in job summaries)."""
    try:
        import ray
        from ray._private.internal_api import memory_summary

        # Our own cluster's address: with several Ray instances on one host (tests, a laptop
        # with a second job), "auto" discovery refuses to choose.
        text = memory_summary(address=ray.get_runtime_context().gcs_address, stats_only=True)
    except Exception:  # the stats API is private: a change in it must not fail a job
        return {}
    out = {}
    for name in ("Spilled", "Restored"):
        m = re.search(rf"{name} (\d+) MiB", text)
        out[f"{name.lower()}_mib"] = float(m.group(1)) if m else 0.0
    return out


def small_cluster() -> bool:
    """Whether the Ray we run on has few CPUs (the embedded one on a laptop or CI box)."""
    import ray

    override = os.environ.get("MMPIPE_OP_RESERVATION")
    if override is not None:
        return override == "0"
    return float(ray.cluster_resources().get("CPU", 0)) <= 8


def configure_data_context(quiet: bool, small: bool = False) -> None:
    import logging

    from ray.data import DataContext

    # Our own progress line and summary are the display; Ray Data's INFO lines only with -v.
    logging.getLogger("ray.data").setLevel(logging.ERROR if quiet else logging.WARNING)

    ctx = DataContext.get_current()
    # Each job's own reporter (pipeline/progress.py) is the display, whatever the verbosity.
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    # Read tasks yield whole chunks (<= 128 MiB of inline bytes); never split them.
    ctx.target_max_block_size = max(ctx.target_max_block_size or 0, 512 * 1024 * 1024)
    # A hash-shuffle map task joins its input blocks up to this many bytes before it
    # partitions them, and holds several times that while it partitions and encodes them.
    # Ray's default (1 GiB) let that grow with a build up to ~10M claims; this cap bounds a
    # dedup pass's map side whatever the build's size (docs/benchmarks.md).
    ctx.shuffle_input_batch_bytes = SHUFFLE_INPUT_BYTES
    if small:
        # Ray Data reserves half of the cluster per operator; on a 2-CPU Ray that leaves a
        # one-operator pipeline running one task at a time (measured: 32 x 150 ms tasks took
        # 5.2 s instead of 2.5 s). Other backpressure (object store, actor pools) still applies.
        # MMPIPE_OP_RESERVATION=1 keeps Ray's default. ``task_concurrency`` bounds instead.
        ctx.op_resource_reservation_enabled = False
        # That cap is a ceiling, not a request: Ray warns when a job has fewer blocks than it
        # (most small jobs), which would tell a user to tune what needs no tuning.
        warnings.filterwarnings(
            "ignore", message="The maximum number of concurrent tasks", category=UserWarning
        )
