"""A per-sample time limit that interrupts slow decodes, so no single file can hang a worker."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from pipeline.errors import Reason, SampleError


class _Expired(BaseException):
    """BaseException so that decoders' ``except Exception`` cannot swallow it."""


def _on_alarm(signum: int, frame: object) -> None:
    raise _Expired()


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise ``SampleError(timeout)`` if the block runs longer than ``seconds``.

    Uses SIGALRM, which works where Ray runs task code (the worker's main thread); decoders
    like Pillow return to Python between chunks, so the alarm lands promptly. Off the main
    thread it degrades to no limit; the size guards still bound the work there.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except _Expired:
        raise SampleError(Reason.TIMEOUT, f"decoding took over {seconds:g}s", "row") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
