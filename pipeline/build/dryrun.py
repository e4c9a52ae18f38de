"""``mmpipe build --dry-run``: plan, then validate a sample of rows in this process, writing nothing."""

from __future__ import annotations

import sys
import tempfile
import time
from collections import Counter
from itertools import islice
from typing import Any

from pipeline.build.chunk import BuildChunkStage, chunk_meta_url
from pipeline.config import BuildConfig
from pipeline.errors import UserError
from pipeline.ingest.sources import chunk_table, iter_unit_rows, plan_input
from pipeline.io.fs import scheme_of
from pipeline.io.parquet import read_table

DRY_RUN_ROWS = 300


def _form(part: dict[str, Any]) -> str:
    """How a row names one of its members: inline bytes or text, a local path, or a URL."""
    if part.get("data") is not None:
        return "inline"
    scheme = scheme_of(str(part.get("ref") or ""))
    return "path" if scheme in ("", "file", "local") else scheme


def _estimate_rows(plan: Any) -> tuple[int, bool]:
    """Rows in the input as the plan knows them; False when some spans' lengths are unknown."""
    total, exact = 0, True
    for unit in plan.units:
        for u in unit.packed or [unit]:
            n = u.span.samples if u.span.samples is not None else u.span.count
            if u.kind == "sidecar":
                n = len(u.groups)
            if n is None:
                exact = False
            else:
                total += n
    return total, exact


def dry_run(cfg: BuildConfig, rows: int = DRY_RUN_ROWS, quiet: bool = False) -> dict[str, Any]:
    """What a build would do, from the plan and ``rows`` rows validated here, in seconds.

    Rows are taken from chunks spread over the input (first, last and evenly between), so a
    problem that starts halfway through a manifest is seen. Nothing is written to OUT.
    """
    t0 = time.perf_counter()
    plan = plan_input(cfg)
    if not plan.units:
        raise UserError(f"input {cfg.input} holds no samples; nothing to build")
    picks = sorted(
        {
            round(i * (len(plan.units) - 1) / max(1, min(8, len(plan.units)) - 1))
            for i in range(min(8, len(plan.units)))
        }
    )
    per_unit = max(1, rows // len(picks))
    sample = [r for i in picks for r in islice(iter_unit_rows(plan.units[i], cfg), per_unit)]
    forms: Counter[str] = Counter(f"{p['name']}:{_form(p)}" for r in sample for p in r.members)
    with tempfile.TemporaryDirectory(prefix="mmpipe-dry-run-") as tmp:
        stage = BuildChunkStage(cfg, tmp)
        stage.setup()
        summary = stage.build_chunk("dry-run", chunk_table(sample, "dry-run"))
        meta = read_table(chunk_meta_url(tmp, "dry-run"))
    reasons: Counter[str] = Counter(r for r in meta.column("reason").to_pylist() if r)
    examples = {}
    for r in meta.select(["reason", "message"]).to_pylist():
        if r["reason"] and r["reason"] not in examples:
            examples[r["reason"]] = r["message"]
    est_rows, exact = _estimate_rows(plan)
    ok = max(summary["staged"], 0)
    per_row = summary["bytes"] / ok if ok else 0.0
    keep = ok / len(sample) if sample else 0.0
    report = {
        "input_kind": plan.kind,
        "chunks": len(plan.units),
        "input_rows": est_rows,
        "input_rows_exact": exact,
        "sampled_rows": len(sample),
        "would_write": ok,
        "would_reject": len(sample) - ok,
        "reasons": dict(reasons.most_common()),
        "reason_examples": examples,
        "forms": dict(sorted(forms.items())),
        "estimated_bytes": int(per_row * keep * est_rows),
        "estimated_shards": max(1, round(keep * est_rows / cfg.shard_samples)) if ok else 0,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if not quiet:
        print("\n".join(dry_run_lines(report)), file=sys.stderr)
    return report


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1000
    return f"{n:.1f} TB"


def dry_run_lines(r: dict[str, Any]) -> list[str]:
    approx = "" if r["input_rows_exact"] else "at least "
    lines = [
        f"dry run: {r['input_kind']} input, {r['chunks']} chunks, {approx}{r['input_rows']} rows",
        "  members by form: " + (", ".join(f"{k} {v}" for k, v in r["forms"].items()) or "none"),
        f"  sampled {r['sampled_rows']} rows: {r['would_write']} would be written, "
        f"{r['would_reject']} rejected",
    ]
    for reason, n in r["reasons"].items():
        lines.append(f"    {reason:<15} {n:>5}  e.g. {r['reason_examples'][reason][:120]}")
    lines.append(
        f"  estimated output: {_size(r['estimated_bytes'])} in about {r['estimated_shards']} "
        f"shards; checked in {r['seconds']}s, nothing written"
    )
    return lines
