"""The one progress reporter: the same fields for every job, and never silent for long."""

from __future__ import annotations

import io
import time

from pipeline.progress import Progress


def test_counts_rate_eta_and_rejects_by_reason_in_one_line():
    out = io.StringIO()
    p = Progress("features", stream=out, gap_s=60, first_s=0)
    p.phase("encoding")
    p.add(done=10, rejected=2, reasons={"decode_error": 2})
    assert p.first is not None
    p.first = (p.first[0] - 2.0, 0)  # two seconds after the first count: 50 more rows
    p.add(done=40, rejected=1, reasons={"too_small": 1})
    p.total = 100
    line = p.line()
    assert line.startswith("[features] encoding | rows 50/100")
    assert "rejected 3 (decode_error 2, too_small 1)" in line
    assert "25 rows/s" in line and "ETA 2s" in line
    assert out.getvalue().splitlines()[0].startswith("[features] encoding")


def test_a_silent_phase_is_repeated_by_the_heartbeat():
    out = io.StringIO()
    with Progress("train", stream=out, gap_s=0.6, first_s=0) as p:
        p.phase("starting Ray")
        time.sleep(2.7)
    lines = out.getvalue().splitlines()
    assert len(lines) >= 3 and all(line.startswith("[train] starting Ray") for line in lines)


def test_quiet_prints_nothing():
    out = io.StringIO()
    with Progress("build", stream=out, quiet=True, gap_s=0.1) as p:
        p.phase("planning")
        p.add(done=5)
        p.say("resuming")
        time.sleep(0.3)
        p.finish()
    assert out.getvalue() == ""


def test_a_command_that_fails_at_once_prints_only_its_error():
    out = io.StringIO()
    with Progress("build", stream=out, first_s=0.5) as p:
        p.phase("planning the input")  # then a typo is found, well within the first second
    time.sleep(0.8)
    assert out.getvalue() == ""
    with Progress("build", stream=out, first_s=0.3) as p:
        p.phase("planning the input")
        time.sleep(0.8)  # work that takes longer is shown
    assert out.getvalue().startswith("[build] planning the input")
