"""Curate's output: each shard linked whole or copied filtered, its index and rejects parts,
then one streaming merge into the index, rejects.parquet (earlier rejects first), shards."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from typing import Any, ClassVar

import pyarrow as pa

from pipeline.build.finalize import final_tables
from pipeline.build.place import reject_row
from pipeline.curate.config import CurateConfig
from pipeline.curate.filters import verdicts
from pipeline.curate.measure import measure_url
from pipeline.curate.semdedup import semdup_url
from pipeline.errors import Reason
from pipeline.faults import maybe_fail
from pipeline.fingerprint import digest_text, row_hash
from pipeline.io.fs import (
    atomic_open,
    exists,
    get_fs,
    is_remote,
    join,
    read_bytes,
    write_bytes_atomic,
)
from pipeline.io.parquet import iter_row_groups, read_table, to_table, write_table
from pipeline.io.shards import IndexSpan, shard_index_rows, shard_stem
from pipeline.io.tarcopy import copy_samples
from pipeline.stage import Batch, Resources, Stage
from schemas import INDEX_SCHEMA, REJECTS_SCHEMA


def placed_url(work_dir: str, shard: str, ext: str) -> str:
    return join(work_dir, "placed", f"{shard_stem(shard)}.{ext}")


def link_or_copy(src: str, dst: str) -> None:
    """A whole shard into the output: a hard link on one local disk (no bytes move), else a
    copy (server-side on object stores). Atomic either way; a rerun replaces it in place."""
    if not is_remote(src) and not is_remote(dst):
        s, d = get_fs(src)[1], get_fs(dst)[1]
        os.makedirs(os.path.dirname(d), exist_ok=True)
        tmp = f"{d}.link-{os.getpid()}"
        try:
            os.link(s, tmp)
            os.replace(tmp, d)
            return
        except OSError:  # another disk, or links not allowed: copy below
            if os.path.exists(tmp):
                os.unlink(tmp)
    fs, s = get_fs(src)
    if is_remote(src) and type(fs) is type(get_fs(dst)[0]):
        fs.copy(s, get_fs(dst)[1])
        return
    with fs.open(s, "rb") as f, atomic_open(dst) as out:
        while chunk := f.read(8 << 20):
            out.write(chunk)


def place_shard(
    cfg: CurateConfig,
    work_dir: str,
    out_dir: str,
    shard: str,
    span: IndexSpan,
    threshold: float | None,
) -> dict[str, Any]:
    """Decide every row of one shard, publish its kept samples, write its parts and summary."""
    maybe_fail("curate_place")
    start = time.perf_counter()
    rows = shard_index_rows(span, shard, INDEX_SCHEMA.names).to_pylist()
    measured = read_table(measure_url(work_dir, shard, "parquet")).drop_columns(["vector"])
    if measured.column("key").to_pylist() != [r["key"] for r in rows]:
        raise RuntimeError(f"{shard}: measurements and index disagree; rerun with --overwrite")
    decided = verdicts(measured, cfg, threshold)
    dups: dict[str, tuple[str, float]] = {}
    if exists(semdup_url(work_dir, shard)):
        d = read_table(semdup_url(work_dir, shard)).to_pydict()
        dups = {k: (kk, s) for k, kk, s in zip(d["key"], d["kept_key"], d["similarity"])}
    kept, bad = [], []
    cut = 1.0 - cfg.semdedup.eps
    for r, v in zip(rows, decided):
        if v is not None:
            bad.append(reject_row(r, *v))
        elif r["key"] in dups:
            other, sim = dups[r["key"]]
            bad.append(
                reject_row(
                    r,
                    Reason.SEMANTIC_DUPLICATE.value,
                    f"cosine {sim:.4f} >= {cut:.4f} to kept key {other}",
                    "row",
                )
            )
        else:
            kept.append(r)
    src, dst = join(cfg.build, shard), join(out_dir, shard)
    if kept and len(kept) == len(rows):
        link_or_copy(src, dst)
    elif kept:
        copy_samples(src, dst, kept)
    write_table(
        placed_url(work_dir, shard, "index.parquet"),
        to_table(kept, INDEX_SCHEMA),
        INDEX_SCHEMA,
        "index",
    )
    write_table(
        placed_url(work_dir, shard, "rejects.parquet"),
        to_table(bad, REJECTS_SCHEMA),
        REJECTS_SCHEMA,
        "rejects",
    )
    total = sum(row_hash(r["key"], r["content_hash"]) for r in kept)
    summary = {
        "shard": shard,
        "rows": len(rows),
        "written": len(kept),
        "bytes": sum(m["size"] for r in kept for m in r["members"]),
        "reasons": dict(Counter(b["reason"] for b in bad)),
        "digest": digest_text(total, len(kept)),
        "seconds": time.perf_counter() - start,
    }
    write_bytes_atomic(placed_url(work_dir, shard, "json"), json.dumps(summary).encode())
    return summary


def read_placed(work_dir: str, shard: str) -> dict[str, Any] | None:
    url = placed_url(work_dir, shard, "json")
    return json.loads(read_bytes(url)) if exists(url) else None


class PlaceShard(Stage):
    """Shard names in; each shard placed (``place_shard``); its summary out."""

    name = "curate_place"
    reads: ClassVar[tuple[str, ...]] = ("shard", "groups")
    adds: ClassVar[tuple[str, ...]] = ("shard", "summary")
    passthrough: ClassVar[bool] = False

    def __init__(self, cfg: CurateConfig, work_dir: str, out_dir: str, threshold: float | None):
        super().__init__()
        self.cfg, self.work_dir, self.out_dir, self.threshold = cfg, work_dir, out_dir, threshold

    @property
    def resources(self) -> Resources:
        return Resources(num_cpus=self.cfg.num_cpus)

    def __call__(self, batch: Batch) -> Batch:
        t = batch if isinstance(batch, pa.Table) else pa.Table.from_pydict(batch)
        out: dict[str, list[Any]] = {"shard": [], "summary": []}
        for row in t.to_pylist():
            s = place_shard(
                self.cfg,
                self.work_dir,
                self.out_dir,
                row["shard"],
                json.loads(row["groups"]),
                self.threshold,
            )
            out["shard"].append(row["shard"])
            out["summary"].append(json.dumps(s))
        return out


def merge(build_dir: str, work_dir: str, shards: list[str]) -> dict[str, Any]:
    """Stream the earlier rejects, then every shard's parts in shard order, into the three
    tables; return the counts. Holds one shard's part at a time."""
    reasons: Counter[str] = Counter()
    carried, seconds, written = 0, 0.0, 0
    with final_tables(work_dir) as out:
        earlier = join(build_dir, "rejects.parquet")
        if exists(earlier):
            for _, t in iter_row_groups(earlier, REJECTS_SCHEMA.names):
                out.rejects.append(t)
                carried += t.num_rows
        for shard in shards:
            s = read_placed(work_dir, shard)
            if s is None:
                raise RuntimeError(f"{shard} was never placed; rerun to resume")
            reasons.update(s["reasons"])
            seconds += s["seconds"]
            out.rejects.append(read_table(placed_url(work_dir, shard, "rejects.parquet")))
            if s["written"]:
                entry = {"shard": shard, "samples": s["written"], "digest": s["digest"]}
                out.shard(entry, read_table(placed_url(work_dir, shard, "index.parquet")))
                written += s["written"]
    return {
        "written": written,
        "rejected": sum(reasons.values()),
        "carried_rejects": carried,
        "shards": out.count,
        "rejects_by_reason": dict(sorted(reasons.items())),
        "place_task_s": seconds,
    }
