"""What every job entrypoint shares: one-line errors for user mistakes and the exit code."""

from __future__ import annotations

from collections.abc import Callable

from pipeline.failure import run_guarded


def guarded(prog: str, run: Callable[[], object]) -> int:
    """Run the job: a UserError is one line and exit 2, a storage failure one line that
    points to its traceback and exit 1 (pipeline/failure.py). MMPIPE_DEBUG=1 shows tracebacks."""
    return run_guarded(prog, run)
