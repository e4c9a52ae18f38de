"""Every job's progress on the terminal: one reporter, the same fields, never silent for long."""

from __future__ import annotations

import io
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any, TextIO

# A line at least this often while work runs, so that a person never waits in silence.
QUIET_GAP_S = 5.0
LIVE_S = 0.5  # a TTY's line is rewritten in place at most this often
# Nothing before this: a command that fails at once (a typo, a missing file) prints its one
# error line alone.
FIRST_S = 1.0


def _terminal() -> TextIO | None:
    """A stream on a duplicate of the descriptor behind ``sys.stderr`` (None when it has none)."""
    try:
        fd = sys.stderr.fileno()
        enc = getattr(sys.stderr, "encoding", None) or "utf-8"
        return open(os.dup(fd), "w", buffering=1, encoding=enc, errors="backslashreplace")
    except (AttributeError, ValueError, OSError, io.UnsupportedOperation):
        return None


class Progress:
    """``[job] phase | done of total | rejected (top reasons) | rate | ETA | elapsed``.

    Phases ("starting Ray", "loading 3 encoders") print at once; counts print live on a TTY
    and every few seconds otherwise, and a background thread repeats the line whenever
    nothing was printed for ``QUIET_GAP_S``. ``quiet`` prints nothing: summaries and errors
    are the job's own lines.
    """

    def __init__(
        self,
        job: str,
        *,
        unit: str = "rows",
        total: int | None = None,
        quiet: bool = False,
        stream: TextIO | None = None,
        gap_s: float = QUIET_GAP_S,
        first_s: float = FIRST_S,
    ) -> None:
        self.job, self.unit, self.total, self.quiet = job, unit, total, quiet
        self.stream = stream
        # The terminal as it is now, held on a descriptor of our own: a Ray session (its
        # lines go to a log) and exporters that silence descriptors 1 and 2 move those, and
        # must not move the person's progress line with them.
        self._own = None if stream is not None or quiet else _terminal()
        self.gap_s, self.first_s = gap_s, first_s
        self.t0 = self.started = time.monotonic()
        self.done = self.rejected = 0
        self.first: tuple[float, int] | None = None  # (time, done) at the first count
        self.reasons: Counter[str] = Counter()
        self.fields: dict[str, Any] = {}
        self.what = "starting"
        self._printed = 0.0
        self._live = False  # a TTY line waiting for its newline
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def out(self) -> TextIO:
        if self.stream is not None:
            return self.stream
        if self._own is not None and not self._own.closed:
            return self._own
        return sys.stderr  # captured (tests): looked up at each write

    def __enter__(self) -> Progress:
        if not self.quiet:
            self._thread = threading.Thread(target=self._beat, name="progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)
        with self._lock:
            self._end_live()
            if self._own is not None:
                self._own.close()

    def phase(self, what: str) -> None:
        """A new phase of the job: shown at once ("starting Ray", "finalizing")."""
        self.what = what
        self._show(force=True)

    def say(self, line: str) -> None:
        """One plain line from the job ("resuming ...")."""
        if self.quiet:
            return
        with self._lock:
            self._end_live()
            self.out.write(f"{self.job}: {line}\n")
            self.out.flush()
            self._printed = time.monotonic()

    def add(
        self,
        done: int = 0,
        rejected: int = 0,
        reasons: Mapping[str, int] | None = None,
        **fields: Any,
    ) -> None:
        """Counts that arrived: rows (or steps) done, rejects and their reasons, other fields."""
        self.update(self.done + done, rejected=self.rejected + rejected, **fields)
        if reasons:
            self.reasons.update(reasons)

    def update(
        self, done: int, *, total: int | None = None, rejected: int | None = None, **fields: Any
    ) -> None:
        """Absolute counts (a training step, read from its progress file)."""
        now = time.monotonic()
        if self.first is None:
            self.first = (now, done)  # a resumed run's rate leaves its earlier work out
        self.done = done
        self.total = total if total is not None else self.total
        self.rejected = rejected if rejected is not None else self.rejected
        self.fields.update(fields)
        self._show()

    def rate(self) -> float | None:
        if self.first is None:
            return None
        t, d = self.first
        dt = time.monotonic() - t
        return (self.done - d) / dt if dt > 0.5 and self.done > d else None

    def line(self) -> str:
        parts = [f"[{self.job}] {self.what}"]
        if self.first is not None:
            of = f"/{self.total}" if self.total else ""
            parts.append(f"{self.unit} {self.done}{of}")
            parts += [f"{k} {v}" for k, v in self.fields.items() if v is not None]
            if self.rejected or self.reasons:
                top = ", ".join(f"{k} {v}" for k, v in self.reasons.most_common(3))
                parts.append(f"rejected {self.rejected}" + (f" ({top})" if top else ""))
            rate = self.rate()
            if rate:
                parts.append(
                    f"{rate:.1f} {self.unit}/s" if rate < 10 else f"{rate:.0f} {self.unit}/s"
                )
                if self.total and self.total > self.done:
                    parts.append(f"ETA {(self.total - self.done) / rate:.0f}s")
        parts.append(f"{time.monotonic() - self.t0:.0f}s")
        return " | ".join(parts)

    def _tty(self) -> bool:
        try:
            return self.out.isatty()
        except (AttributeError, ValueError):
            return False

    def _show(self, force: bool = False) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        if not self._printed and now - self.t0 < self.first_s:
            return  # the heartbeat shows the state then, unless the command is over by then
        tty = self._tty()
        if not force and now - self._printed < (LIVE_S if tty else self.gap_s):
            return
        with self._lock:
            if tty:
                self.out.write("\r\x1b[K" + self.line())
                self._live = True
            else:
                self.out.write(self.line() + "\n")
            self.out.flush()
            self._printed = now

    def _end_live(self) -> None:
        if self._live:
            self.out.write("\n")
            self.out.flush()
            self._live = False

    def _beat(self) -> None:
        while not self._stop.wait(0.25):
            now = time.monotonic()
            # A terminal's line is repainted in place each second (its clock moves); a log
            # gets a new line only after a silence.
            due = self.first_s if not self._printed else (1.0 if self._tty() else self.gap_s)
            if now - (self._printed or self.t0) >= due:
                self._show(force=True)

    def finish(self) -> None:
        """The last state, always on its own line, so that a log shows where work ended."""
        if self.quiet:
            return
        with self._lock:
            self._end_live()
        self._printed = self._printed or time.monotonic()  # the last state is always shown
        tty = self._tty()
        if tty:
            self._show(force=True)
            with self._lock:
                self._end_live()
        else:
            self._show(force=True)
