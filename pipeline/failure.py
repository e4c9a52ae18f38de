"""How a failed command ends: one line on the console, and the full traceback in a log file."""

from __future__ import annotations

import datetime
import os
import re
import sys
import traceback
from collections.abc import Callable

from pipeline.errors import UserError, is_storage_error, storage_line
from pipeline.logs import DEBUG_ENV, LOG_DIR_ENV, log_path, ray_log
from pipeline.redact import redact

__all__ = ["DEBUG_ENV", "LOG_DIR_ENV", "run_guarded", "write_traceback"]


def write_traceback(prog: str, e: BaseException) -> str | None:
    """The whole story of ``e`` (a Ray task's error carries the remote traceback in its text)
    in a new log file; its path, or None when even that cannot be written."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = log_path(prog)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(f"{prog} failed at {stamp}: argv {redact(' '.join(sys.argv))}\n\n")
            f.write(redact("".join(traceback.format_exception(e))))
            if ray_log():
                f.write(f"\nRay's own lines: {ray_log()}\n")
        return path
    except OSError:
        return None


def root_cause(e: BaseException) -> BaseException:
    """The error under Ray's wrappers (RayTaskError, UserCodeException): what really failed."""
    seen = {id(e)}
    while True:
        nxt = getattr(e, "cause", None) or e.__cause__
        if not isinstance(nxt, BaseException) or id(nxt) in seen:
            return e
        seen.add(id(nxt))
        e = nxt


# "SomeError: message", the last line of a Python traceback, as Ray's task errors carry it.
# SampleErrorRaised (on_error: raise) ends in none of the usual suffixes: named, or a sample's
# error from a Ray task read as the wrapper's "UDF failed to process a data block".
_RAISED = re.compile(
    r"^(?P<type>[A-Za-z_][\w.]*(?:Error|Exception|Exit|SampleErrorRaised)): (?P<msg>.*)$"
)
_WRAPPERS = ("UserCodeException", "RayTaskError", "RayActorError")


def bug_line(e: BaseException) -> str:
    """A failure no sample or user caused, in one line: what it was, and that it stopped the run.

    A Ray task's error arrives wrapped (RayTaskError, then Ray Data's UserCodeException), with
    the worker's traceback as text: the line that names the original error is what is shown.
    """
    root = root_cause(e)
    what = f"{type(root).__name__}: {(str(root).strip().splitlines() or [''])[0]}"
    for line in reversed("".join(traceback.format_exception(e)).splitlines()):
        m = _RAISED.match(line.strip())
        if m and not any(w in m["type"] for w in _WRAPPERS) and not m["type"].startswith("ray."):
            what = f"{m['type'].rsplit('.', 1)[-1]}: {m['msg']}"
            break
    raised = "SampleErrorRaised: "
    if what.startswith(raised):  # asked for: on_error is raise
        return f"the run stopped at a sample's error, as asked: {what[len(raised) :]}"[:500]
    return f"the run stopped on an error that is no sample's: {what}"[:500]


def run_guarded(prog: str, run: Callable[[], object], debug: bool = False) -> int:
    """Run a command: a user mistake is one line and exit 2; a storage failure is one line
    that names the operation and path and points to its traceback, exit 1; Ctrl-C is 130.
    Anything else is a bug (ours, a model's, or the machine's: out of memory): one line that
    says so and points to its traceback, exit 1; never a reject row."""
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
        if debug:
            traceback.print_exception(e, file=sys.stderr)
        path = write_traceback(prog, e)
        where = f" (traceback: {path})" if path else ""
        line = storage_line(e) if is_storage_error(e) else bug_line(e)
        print(f"{prog}: error: {redact(line)}{where}", file=sys.stderr)
        return 1
    return 0
