"""Place one staged chunk: its tars under final shard names, less its dedup rejects, in Arrow.

A chunk's metadata (``_work/chunks/<id>.parquet``) and its dedup rejects (``_work/dedup``)
are all that placing it needs. The rows are handled as columns, never as one Python dict a
row: at 1% duplicates nearly every 1,000-row tar loses a row and is rewritten, and the
per-row dicts and member-by-member rewrite were most of a text build's finalize (profiled:
12.7 of 17.6 s at 250,000 rows). A tar that lost rows is copied as byte ranges (our
writer's member headers depend only on name and size), so the bytes are those a
member-by-member rewrite gives.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.build.chunk import chunk_meta_url
from pipeline.fingerprint import digest_text, row_hash
from pipeline.io.fs import exists, is_dir, join, list_files, move
from pipeline.io.parquet import read_table, to_table, write_table
from pipeline.io.tarcopy import copy_ranges, header_lengths, padded
from schemas import INDEX_SCHEMA, REJECTS_SCHEMA
from schemas.build import MEMBER_TYPE

SHARD_DIR = "shards"
_MODALITY = {"near_duplicate": "image"}  # which part of the row a dedup reason is about


def shard_name(n: int) -> str:
    return f"{SHARD_DIR}/{n:06d}.tar"


def dedup_dir(work_dir: str, chunk_id: str) -> str:
    """A chunk's dedup rejects: one file per writer (a chunk's rows may meet in several)."""
    return join(work_dir, "dedup", chunk_id)


def placed_url(work_dir: str, chunk_id: str, table: str) -> str:
    """A placed chunk's index or rejects rows, merged into the build's tables last."""
    return join(work_dir, "placed", f"{chunk_id}.{table}.parquet")


def chunk_rejects(work_dir: str, chunk_id: str) -> dict[int, tuple[str, str]]:
    """A chunk's dedup rejects by row; O(its rejects), never more than the chunk."""
    folder = dedup_dir(work_dir, chunk_id)
    found: dict[int, tuple[str, str]] = {}
    for rel in list_files(folder) if is_dir(folder) else []:
        for d in read_table(join(folder, rel)).to_pylist():
            found[d["row"]] = (d["reason"], d["message"])
    return found


def reject_row(row: dict[str, Any], reason: str, message: str, modality: str) -> dict[str, Any]:
    """A rejects.parquet row for an index-like ``row`` (build finalize and curate)."""
    fields = ("source_file", "source_row", "source_key", "key")
    return {**{f: row.get(f) for f in fields}, "reason": reason, "modality": modality,
            "message": message}  # fmt: skip


def _rejects(meta: pa.Table, rows: np.ndarray, dedup: dict[int, tuple[str, str]]) -> pa.Table:
    """The rejects rows of ``rows`` (input order): their own reason, else dedup's."""
    fields = ("source_file", "source_row", "source_key", "key", "reason", "modality", "message")
    part = meta.take(pa.array(rows, pa.int64())).select(list(fields)).to_pylist()
    out = []
    for i, r in zip(rows.tolist(), part):
        if r["reason"]:
            out.append(reject_row(r, r["reason"], r["message"], r["modality"]))
        else:
            reason, message = dedup[i]
            out.append(reject_row(r, reason, message, _MODALITY.get(reason, "row")))
    return to_table(out, REJECTS_SCHEMA)


def _spans(members: pa.ListArray) -> tuple[np.ndarray, np.ndarray, np.ndarray, pa.Array]:
    """Per row, the byte range its members fill in its staged tar; per member, its row and
    its fields (name, offset, size). Raises when a row's members are not back to back: our
    own writer staged them, so that is our bug, never the input's."""
    fields = members.flatten().flatten()  # offset-aware, unlike StructArray.field
    parent = pc.list_parent_indices(members).to_numpy()
    offsets, sizes = fields[1].to_numpy(), fields[2].to_numpy()
    head = offsets - header_lengths(fields[0], sizes)
    tail = offsets + padded(sizes)
    first = np.r_[True, parent[1:] != parent[:-1]][: len(parent)]
    is_last = np.r_[first[1:], True][: len(parent)]
    broken = ~first & (head != np.r_[0, tail[:-1]][: len(parent)])
    if broken.any():
        raise RuntimeError(f"staged members are not back to back at member {np.argmax(broken)}")
    start, end = np.zeros(len(members), np.int64), np.zeros(len(members), np.int64)
    start[parent[first]] = head[first]
    end[parent[is_last]] = tail[is_last]
    return start, end, parent, fields


def _moved(
    work_dir: str, out_dir: str, staged: str, final: str, ranges: list[tuple[int, int]] | None
) -> None:
    """Publish one staged tar under its final name: a rename when every sample survived
    dedup, else a copy of the kept byte ranges. Both are idempotent, so an interrupted
    finalize reruns."""
    src, dst = join(work_dir, "chunks", staged), join(out_dir, final)
    if ranges is None:
        if exists(src):
            move(src, dst)
        elif not exists(dst):
            raise RuntimeError(
                f"staged shard {staged} is gone and {final} was never written; rerun with --overwrite"
            )
        return
    copy_ranges(src, dst, ranges)


def place_chunk(work_dir: str, out_dir: str, chunk_id: str, base: int) -> dict[str, Any]:
    """Place one chunk's tars as shards ``base``, ``base + 1``...; write its index and
    rejects parts; return its counts and one digest per shard."""
    meta = read_table(chunk_meta_url(work_dir, chunk_id))
    dedup = chunk_rejects(work_dir, chunk_id)
    n = meta.num_rows
    invalid = pc.is_valid(meta.column("reason")).to_numpy(zero_copy_only=False)
    gone = np.zeros(n, bool)
    gone[list(dedup)] = True
    kept = np.flatnonzero(~invalid & ~gone)
    tars = pc.fill_null(meta.column("staged_tar"), "").combine_chunks()  # rejects: no tar
    codes = pc.dictionary_encode(tars).indices.to_numpy()
    # Shards in the order of their first kept row, rows in input order within each (the
    # writer fills tars one after another, so this is input order).
    rank = {c: i for i, c in enumerate(dict.fromkeys(codes[kept].tolist()))}
    kept = kept[
        np.argsort(np.array([rank[c] for c in codes[kept].tolist()], np.int64), kind="stable")
    ]
    valid_per_tar = np.bincount(codes[~invalid], minlength=int(codes.max(initial=0)) + 1)
    members = meta.column("members").combine_chunks()
    start, end, parent, fields = _spans(members)
    shift = np.zeros(n, np.int64)  # how far each kept row's bytes move in its shard
    keys = meta.column("key").to_pylist()
    hashes = meta.column("content_hash").to_pylist()
    names = tars.to_pylist()
    kc = codes[kept]
    bounds = (
        [*np.flatnonzero(np.r_[True, kc[1:] != kc[:-1]]).tolist(), len(kept)] if len(kept) else [0]
    )
    shards, shard_of = [], []
    for number, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        rows = kept[lo:hi]
        final = shard_name(base + number)
        ranges = None
        if len(rows) < valid_per_tar[kc[lo]]:  # it lost rows: the kept ones move up
            shift[rows] = np.r_[0, np.cumsum(end[rows] - start[rows])[:-1]] - start[rows]
            ranges = list(zip(start[rows].tolist(), end[rows].tolist()))
        _moved(work_dir, out_dir, names[rows[0]], final, ranges)
        shard_of += [final] * len(rows)
        total = sum(row_hash(keys[i], hashes[i]) for i in rows.tolist())
        shards.append(
            {"shard": final, "samples": len(rows), "digest": digest_text(total, len(rows))}
        )
    moved = pa.StructArray.from_arrays(
        [fields[0], pa.array(fields[1].to_numpy() + shift[parent]), fields[2]],
        fields=list(MEMBER_TYPE),
    )
    members = pa.ListArray.from_arrays(
        pc.subtract(members.offsets, members.offsets[0]), moved, mask=members.is_null()
    )
    index = meta.set_column(meta.schema.get_field_index("members"), "members", members)
    index = index.take(pa.array(kept, pa.int64()))
    index = index.append_column("shard", pa.array(shard_of, pa.string()))
    index = index.select(INDEX_SCHEMA.names).cast(INDEX_SCHEMA)
    row_bytes = np.bincount(parent, weights=fields[2].to_numpy(), minlength=n)
    bad = _rejects(meta, np.flatnonzero(invalid | gone), dedup)
    # Parts under _work are derived again by a rerun (finalize.reset): no sync to disk.
    write_table(
        placed_url(work_dir, chunk_id, "index"), index, INDEX_SCHEMA, "index", durable=False
    )
    write_table(
        placed_url(work_dir, chunk_id, "rejects"), bad, REJECTS_SCHEMA, "rejects", durable=False
    )
    return {
        "chunk_id": chunk_id,
        "rows": n,
        "written": len(kept),
        "bytes": int(row_bytes[kept].sum()),
        "reasons": json.dumps(dict(Counter(bad.column("reason").to_pylist()))),
        "shards": json.dumps(shards),
    }
