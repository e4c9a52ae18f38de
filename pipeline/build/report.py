"""The progress line while a build runs, build.json at its end, and the printed summary."""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from typing import Any, TextIO

import pyarrow as pa

from pipeline import __version__
from pipeline.config import BuildConfig
from pipeline.io.fs import write_bytes_atomic
from schemas import BUILD_REPORT_SCHEMA, BUILD_SCHEMA_VERSION


class ProgressLine:
    """Rows and chunks done and rejects so far: a live line on a TTY, a line every few s otherwise."""

    def __init__(
        self, stream: TextIO | None = None, every_s: float = 5.0, quiet: bool = False
    ) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every_s = 0.5 if self.tty else every_s
        self.quiet = quiet
        self.t0 = time.perf_counter()
        self.last = 0.0
        self.rows = self.staged = self.rejected = self.chunks = self.resumed = self.tars = 0
        self.reasons: Counter[str] = Counter()
        self.member_types: set[str] = set()

    def update(self, summary: pa.Table) -> None:
        for s in summary.to_pylist():
            self.chunks += 1
            self.resumed += int(s["resumed"])
            self.rows += s["rows"]
            self.staged += s["staged"]
            self.rejected += s["rejected"]
            self.tars += s["tars"]
            self.reasons.update(json.loads(s["reasons"]))
            self.member_types.update(json.loads(s["member_types"]))
        now = time.perf_counter()
        if not self.quiet and now - self.last >= self.every_s:
            self.last = now
            self._print(end="\r" if self.tty else "\n")

    def _print(self, end: str) -> None:
        dt = max(time.perf_counter() - self.t0, 1e-9)
        top = ", ".join(f"{k} {v}" for k, v in self.reasons.most_common(3))
        line = (
            f"[build] chunks {self.chunks} | rows {self.rows} | shards {self.tars} | staged {self.staged} | "
            f"rejected {self.rejected}{f' ({top})' if top else ''} | {self.rows / dt:.0f} rows/s"
        )
        self.stream.write(line + end)
        self.stream.flush()

    def done(self) -> None:
        """The final state, always, so that a log shows where processing ended."""
        if not self.quiet:
            self._print(end="\n")


def make_report(
    cfg: BuildConfig,
    input_kind: str,
    counts: dict[str, Any],
    timings: dict[str, float],
    chunks: dict[str, int] | None = None,
    member_types: set[str] | None = None,
) -> dict[str, Any]:
    """build.json's content, checked against its Arrow schema so it cannot drift from schemas/."""
    total = timings.get("total", 0.0)
    report = {
        "schema_version": BUILD_SCHEMA_VERSION,
        "mmpipe_version": __version__,
        "input_kind": input_kind,
        "config": cfg.model_dump(),
        "config_fingerprint": cfg.fingerprint(),
        "counts": {
            k: counts[k] for k in ("input_rows", "written", "rejected", "shards", "bytes_written")
        },
        "chunks": chunks or {"total": 0, "resumed": 0},
        "rejects_by_reason": counts["rejects_by_reason"],
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "throughput_rows_per_s": round(counts["input_rows"] / total, 1) if total else None,
        "member_types": sorted(member_types or ()),
        "files": {"index": "index.parquet", "rejects": "rejects.parquet", "shards": "shards/*.tar"},
    }
    as_arrow = {
        **report,
        "rejects_by_reason": list(report["rejects_by_reason"].items()),
        "timings_s": list(report["timings_s"].items()),
    }
    pa.Table.from_pylist([as_arrow], schema=BUILD_REPORT_SCHEMA)  # raises if the shape drifts
    return report


def write_build_json(url: str, report: dict[str, Any]) -> None:
    from pipeline.redact import redact_obj

    text = json.dumps(redact_obj(report), indent=2, sort_keys=True) + "\n"
    write_bytes_atomic(url, text.encode())


def summary_lines(report: dict[str, Any], noop: bool = False) -> list[str]:
    c = report["counts"]
    lines = []
    if noop:
        lines.append("build: already complete for this config; nothing to do")
    lines.append(
        f"build: {c['input_rows']} rows -> {c['written']} written in {c['shards']} shards "
        f"({c['bytes_written'] / 1e6:.1f} MB), {c['rejected']} rejected"
    )
    for reason, n in sorted(report["rejects_by_reason"].items(), key=lambda kv: -kv[1]):
        lines.append(f"  rejected {reason}: {n}")
    t = report["timings_s"]
    if not noop and report.get("throughput_rows_per_s"):
        lines.append(
            f"  time {t.get('total', 0):.1f}s (start-up {t.get('startup', 0):.1f}s, process "
            f"{t.get('process', 0):.1f}s, finalize {t.get('finalize', 0):.1f}s), "
            f"{report['throughput_rows_per_s']:.0f} rows/s"
        )
    return lines
