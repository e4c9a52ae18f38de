"""Where a run's logs go: Ray's own output while Ray runs, and the tracebacks of failures."""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from typing import Any, TextIO

LOG_DIR_ENV = "MMPIPE_LOG_DIR"  # where logs go (default: the temp dir's mmpipe-logs/)
DEBUG_ENV = "MMPIPE_DEBUG"  # "1": tracebacks and Ray's own lines on the console too
_last: list[str] = []  # this process's Ray log, for the line of a failure
_open: list[TextIO] = []  # the log stream of the session in progress
_moved: list[tuple[logging.StreamHandler, Any]] = []  # (handler, its stream before)


def log_dir() -> str:
    return os.environ.get(LOG_DIR_ENV) or os.path.join(tempfile.gettempdir(), "mmpipe-logs")


def log_path(prog: str, kind: str = "") -> str:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return os.path.join(log_dir(), f"{prog}{kind}-{stamp}-{os.getpid()}.log")


def ray_log() -> str | None:
    """The file Ray's own lines went to in this process, if any."""
    return _last[-1] if _last else None


def _on_fd(stream: Any, fd: int) -> bool:
    try:
        return int(stream.fileno()) == fd
    except (AttributeError, ValueError, OSError):
        return False  # captured (pytest) or replaced: not the process's own descriptor


@contextlib.contextmanager
def ray_lines_to_log(prog: str = "mmpipe") -> Iterator[None]:
    """While Ray runs, what it prints goes to a log file, not to the person at the terminal.

    Ray's C++ core writes to file descriptor 2 itself (``core_worker.cc`` lines), its
    processes inherit descriptors 1 and 2, and its loggers hold the streams of import time:
    so the descriptors are pointed at the log, and ``sys.stdout``/``sys.stderr`` at the
    terminal they were, so that the job's own lines (progress, summary, errors) still reach it.
    Warnings (Ray Data's deprecations) go to the log as well. ``MMPIPE_DEBUG=1`` keeps it all
    on the terminal.
    """
    if os.environ.get(DEBUG_ENV) == "1":
        yield
        return
    path = log_path(prog, "-ray")
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError:  # no log can be written: Ray's lines stay where they were
        yield
        return
    _last.append(path)
    streams = {1: sys.stdout, 2: sys.stderr}
    for s in streams.values():
        s.flush()
    saved = {n: os.dup(n) for n in streams}
    terminal: dict[int, TextIO] = {}
    for n, s in streams.items():
        if _on_fd(s, n):
            enc = getattr(s, "encoding", None) or "utf-8"
            terminal[n] = open(  # noqa: SIM115 - closed in finally
                saved[n], "w", buffering=1, encoding=enc, errors="backslashreplace", closefd=False
            )
    log = open(fd, "a", buffering=1, encoding="utf-8", closefd=False)  # noqa: SIM115
    shown = warnings.showwarning
    try:
        for n in streams:
            os.dup2(fd, n)
        if 1 in terminal:
            sys.stdout = terminal[1]
        if 2 in terminal:
            sys.stderr = terminal[2]

        def to_log(m: Any, c: Any, f: str, ln: int, file: Any = None, line: Any = None) -> None:
            log.write(warnings.formatwarning(m, c, f, ln, line))

        warnings.showwarning = to_log  # type: ignore[assignment]
        _open.append(log)
        yield
    finally:
        if _open and _open[-1] is log:
            _open.pop()
        # Ray outlives a session that joined it (tests share one): its handlers must not keep
        # a log file that is about to close.
        while _moved and not _open:
            handler, stream = _moved.pop()
            handler.setStream(stream)
        warnings.showwarning = shown
        for s in (sys.stdout, sys.stderr, log):
            with contextlib.suppress(OSError, ValueError):
                s.flush()
        for n in streams:
            os.dup2(saved[n], n)
            os.close(saved[n])
        sys.stdout, sys.stderr = streams[1], streams[2]
        for s in (*terminal.values(), log):
            s.close()
        os.close(fd)


def reroute_ray_loggers() -> None:
    """Ray's loggers made after the descriptors moved (Ray Data's, at its import) hold the
    terminal's streams: point each such handler of a ``ray`` logger at the log instead."""
    if not _open:
        return
    terminal = {id(sys.stdout), id(sys.stderr)}
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if not name.startswith("ray") or not isinstance(logger, logging.Logger):
            continue
        for h in logger.handlers:
            if isinstance(h, logging.StreamHandler) and id(h.stream) in terminal:
                _moved.append((h, h.setStream(_open[-1])))
