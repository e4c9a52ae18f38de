"""How a failed command ends: one line on the console, and the full traceback in a log file."""

from __future__ import annotations

import datetime
import os
import sys
import tempfile
import traceback
from collections.abc import Callable

from pipeline.errors import UserError, is_storage_error, storage_line
from pipeline.redact import redact

LOG_DIR_ENV = "MMPIPE_LOG_DIR"  # where tracebacks go (default: the temp dir's mmpipe-logs/)
DEBUG_ENV = "MMPIPE_DEBUG"  # "1": tracebacks on the console too


def log_dir() -> str:
    return os.environ.get(LOG_DIR_ENV) or os.path.join(tempfile.gettempdir(), "mmpipe-logs")


def write_traceback(prog: str, e: BaseException) -> str | None:
    """The whole story of ``e`` (a Ray task's error carries the remote traceback in its text)
    in a new log file; its path, or None when even that cannot be written."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = os.path.join(log_dir(), f"{prog}-{stamp}-{os.getpid()}.log")
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(f"{prog} failed at {stamp}: argv {redact(' '.join(sys.argv))}\n\n")
            f.write(redact("".join(traceback.format_exception(e))))
        return path
    except OSError:
        return None


def run_guarded(prog: str, run: Callable[[], object], debug: bool = False) -> int:
    """Run a command: a user mistake is one line and exit 2; a storage failure is one line
    that names the operation and path and points to its traceback, exit 1; Ctrl-C is 130.
    Anything else is a bug, and its traceback is shown as Python shows it."""
    debug = debug or os.environ.get(DEBUG_ENV) == "1"
    try:
        run()
    except UserError as e:
        print(f"{prog}: error: {redact(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as e:
        if not is_storage_error(e):
            raise  # a bug: the traceback is what we need to see
        if debug:
            traceback.print_exception(e, file=sys.stderr)
        path = write_traceback(prog, e)
        where = f" (traceback: {path})" if path else ""
        print(f"{prog}: error: {redact(storage_line(e))}{where}", file=sys.stderr)
        return 1
    return 0
