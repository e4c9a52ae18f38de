"""Run a command and print each line of its output with the second it arrived, then the first
line's time and the longest silence: what a person at a terminal waits through.

    python bench/timed_lines.py make demo
"""

from __future__ import annotations

import subprocess
import sys
import time


def main(argv: list[str]) -> int:
    t0 = last = time.monotonic()
    first: float | None = None
    gaps: list[float] = []
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        now = time.monotonic()
        first = now - t0 if first is None else first
        gaps.append(now - last)
        last = now
        print(f"[{now - t0:6.1f}] {line.rstrip()}", flush=True)
    rc = proc.wait()
    gaps.append(time.monotonic() - last)
    shown = "none" if first is None else f"{first:.1f} s"
    print(
        f"== exit {rc}; first line {shown}; longest silence {max(gaps):.1f} s; "
        f"{time.monotonic() - t0:.1f} s in all"
    )
    return rc


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
