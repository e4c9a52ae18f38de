"""Fault injection for the reliability tests: a worker process dies at a chosen point, once,
or a bug is raised there every time.

The only test-only hook in the package: build chunks, preprocessing tasks, embed actors and
training steps all call ``maybe_fail`` at their point.
"""

from __future__ import annotations

import os

# "<point>:<n>:<marker>": the n-th call of maybe_fail(point), counted across every process of
# the run, kills its process with os._exit (no cleanup, no exception: as an OOM kill or a lost
# node does). The marker file makes the fault fire once, so Ray's retry of the same work runs.
ENV = "MMPIPE_FAULT"


def spec(point: str, n: int, marker: str) -> str:
    """The fault ``maybe_fail(point)`` fires at its n-th call, once (``marker`` records it)."""
    return f"{point}:{n}:{marker}"


def maybe_fail(point: str, armed: str | None = None) -> None:
    """Kill this process if the fault armed in ``armed`` (else ``$MMPIPE_FAULT``) is due here.

    ``<point>:raise:bug`` raises a RuntimeError there instead, and ``<point>:raise:oom`` the
    error a GPU out of memory raises, at every call: what our own mistakes look like.
    """
    spec = armed or os.environ.get(ENV)
    if not spec:
        return
    name, n, marker = spec.split(":", 2)
    if name == point and n == "raise":
        if marker.split(":", 1)[0] == "oom":  # what follows the kind, if anything, is unused
            import torch

            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (injected at {point})")
        raise RuntimeError(f"injected bug at {point}")
    if name != point or n == "raise" or os.path.exists(marker):
        return
    # O_APPEND writes of one byte are atomic: the file's size counts calls across processes.
    fd = os.open(f"{marker}.count", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, b"x")
    finally:
        os.close(fd)
    if os.path.getsize(f"{marker}.count") >= int(n):
        with open(marker, "w") as f:
            f.write(f"{point} {os.getpid()}\n")
        os._exit(137)
