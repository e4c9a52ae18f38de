"""What a person at a terminal sees: a line within seconds, never a long silence, no Ray lines."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Our own lines: the reporter's, the jobs' summaries and their indented detail.
OURS = re.compile(r"^(\[(build|features)\] |(build|features): |  )")


def _timed(argv: list[str], env: dict[str, str]) -> tuple[int, list[tuple[float, str]], float]:
    """Run a command; each line of its output with the second it arrived; the total."""
    t0 = time.monotonic()
    p = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert p.stdout is not None
    lines = [(time.monotonic() - t0, line.rstrip("\n")) for line in p.stdout]
    return p.wait(timeout=600), lines, time.monotonic() - t0


@pytest.mark.slow
def test_build_and_features_print_at_once_and_keep_ray_lines_in_the_log(tmp_path):
    from pipeline.sample_corpus import write_corpus

    write_corpus(str(tmp_path / "c"), n=40, seed=3)
    logs = tmp_path / "logs"
    env = {**os.environ, "MMPIPE_LOG_DIR": str(logs), "PYTHONUNBUFFERED": "1"}
    env.pop("MMPIPE_DEBUG", None)
    mmpipe = [sys.executable, "-m", "pipeline.cli"]
    for argv in (
        [*mmpipe, "build", str(tmp_path / "c" / "manifest.jsonl"), "-o", str(tmp_path / "b")],
        [*mmpipe, "features", str(tmp_path / "b"), "-o", str(tmp_path / "f")],
    ):
        rc, lines, total = _timed(argv, env)
        text = "\n".join(f"{t:6.1f} {line}" for t, line in lines)
        assert rc == 0, text
        stamps = [0.0, *(t for t, _ in lines), total]
        assert lines[0][0] < 5.0, text  # the first line within 5 s
        assert max(b - a for a, b in itertools.pairwise(stamps)) < 10.0, text  # never 10 s silent
        foreign = [line for _, line in lines if not OURS.match(line)]
        assert not foreign, f"lines that are not ours: {foreign}\n{text}"
        assert "\x1b" not in text, text  # no stray colour codes off a terminal
    ray_logs = list(logs.glob("*-ray-*.log"))
    assert {p.name.split("-ray-")[0] for p in ray_logs} == {"build", "features"}
