"""A build's counts while it runs, build.json at its end, and the printed summary."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pyarrow as pa

from pipeline import __version__
from pipeline.config import BuildConfig
from pipeline.io.fs import write_bytes_atomic
from pipeline.progress import Progress
from schemas import BUILD_REPORT_SCHEMA, BUILD_SCHEMA_VERSION


class ProgressLine:
    """A build's counts from its chunk summaries, shown by the job's reporter."""

    def __init__(self, progress: Progress, chunks: int) -> None:
        self.progress, self.total_chunks = progress, chunks
        self.rows = self.staged = self.rejected = self.chunks = self.resumed = self.tars = 0
        self.member_types: set[str] = set()

    def update(self, summary: pa.Table) -> None:
        found: Counter[str] = Counter()
        for s in summary.to_pylist():
            self.chunks += 1
            self.resumed += int(s["resumed"])
            self.rows += s["rows"]
            self.staged += s["staged"]
            self.rejected += s["rejected"]
            self.tars += s["tars"]
            found.update(json.loads(s["reasons"]))
            self.member_types.update(json.loads(s["member_types"]))
        self.progress.reasons.update(found)
        self.progress.update(
            self.rows,
            rejected=self.rejected,
            chunks=f"{self.chunks}/{self.total_chunks}",
            shards=self.tars,
        )


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
        "files": {
            "index": "index/*.parquet",
            "rejects": "rejects.parquet",
            "shards": "shards/*.tar",
        },
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
