"""Finalize, chunk by chunk: place staged tars under final names, then merge index and rejects.

Dedup (``pipeline.build.dedup``) decides which rows are duplicates and leaves one small file
per chunk that has any (``_work/dedup``). Placing a chunk then needs only that chunk: its
metadata, its dedup rejects, and the number of its first final shard, which the job derives
from per-chunk tar counts (O(chunks)). Chunks are placed in parallel; the merge streams
their index and reject parts, in input order, into the final tables, one chunk at a time.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.build import neardup
from pipeline.build.chunk import chunk_meta_url
from pipeline.build.dedup import CLAIMS_SCHEMA, REJECTED, new_claims, position, sequential
from pipeline.fingerprint import digest_text, row_hash
from pipeline.io.fs import (
    exists,
    is_dir,
    join,
    list_files,
    move,
    remove_tree,
    write_bytes_atomic,
)
from pipeline.io.parquet import parquet_sink, read_table, to_table, write_table
from pipeline.io.tar import copy_samples
from schemas import INDEX_SCHEMA, REJECTS_SCHEMA, SHARDS_SCHEMA
from schemas.work import DEDUP_SCHEMA

SHARD_DIR = "shards"
# What finalize writes beside the shards folder, published before build.json.
TABLES = ("index.parquet", "rejects.parquet", "shards.parquet")


def shard_name(n: int) -> str:
    return f"{SHARD_DIR}/{n:06d}.tar"


def dedup_dir(work_dir: str, chunk_id: str) -> str:
    """A chunk's dedup rejects: one file per writer (a chunk's rows may meet in several)."""
    return join(work_dir, "dedup", chunk_id)


def placed_url(work_dir: str, chunk_id: str, table: str) -> str:
    """A placed chunk's index or rejects rows, merged into the build's tables last."""
    return join(work_dir, "placed", f"{chunk_id}.{table}.parquet")


def read_claims(work_dir: str, chunk_id: str, rank: int) -> pa.Table:
    """The chunk's rows that passed validation, as dedup claims placed in input order."""
    meta = read_table(chunk_meta_url(work_dir, chunk_id), ["key", "content_hash", "reason"])
    rows = np.arange(meta.num_rows)
    ok = pc.is_null(meta.column("reason")).to_numpy(zero_copy_only=False)
    valid = meta.filter(pa.array(ok))
    return new_claims(position(rank, rows[ok]), valid.column("key"), valid.column("content_hash"))


def read_near(work_dir: str, chunk_id: str, rank: int) -> pa.Table:
    """The chunk's images still written after exact dedup, as near-dup candidates."""
    meta = read_table(chunk_meta_url(work_dir, chunk_id), ["key", "image_phash", "reason"])
    ok = pc.and_(pc.is_null(meta.column("reason")), pc.is_valid(meta.column("image_phash")))
    rows = np.flatnonzero(ok.to_numpy(zero_copy_only=False))
    gone = chunk_rejects(work_dir, chunk_id)
    rows = rows[~np.isin(rows, np.fromiter(gone, np.int64, len(gone)))]
    return pa.table(
        {
            "pos": pa.array(position(rank, rows), pa.int64()),
            "key": meta.column("key").take(pa.array(rows)),
            "phash": meta.column("image_phash").take(pa.array(rows)),
        },
        schema=neardup.NEAR_SCHEMA,
    )


def write_rejects(work_dir: str, ids: list[str], rejects: pa.Table, name: str) -> None:
    """Write dedup rejects (claims rows, any chunks) into their chunks' folders as ``name``."""
    chunk = pc.shift_right(rejects.column("pos"), 32).to_numpy()
    for c in np.unique(chunk):
        mine = rejects.filter(pa.array(chunk == c))
        table = pa.table(
            {
                "row": pc.bit_wise_and(mine.column("pos"), (1 << 32) - 1),
                "reason": mine.column("reason"),
                "message": mine.column("message"),
            },
            schema=DEDUP_SCHEMA,
        )
        write_table(
            join(dedup_dir(work_dir, ids[c]), f"{name}.parquet"), table, DEDUP_SCHEMA, "dedup"
        )


def chunk_rejects(work_dir: str, chunk_id: str) -> dict[int, tuple[str, str]]:
    """A chunk's dedup rejects by row; O(its rejects), never more than the chunk."""
    folder = dedup_dir(work_dir, chunk_id)
    found: dict[int, tuple[str, str]] = {}
    for rel in list_files(folder) if is_dir(folder) else []:
        for d in read_table(join(folder, rel)).to_pylist():
            found[d["row"]] = (d["reason"], d["message"])
    return found


def kept_tars(work_dir: str, chunk_id: str) -> int:
    """How many of a chunk's staged tars keep a sample after dedup (its final shards)."""
    tars = read_table(chunk_meta_url(work_dir, chunk_id), ["staged_tar"]).column(0).to_pylist()
    gone = chunk_rejects(work_dir, chunk_id)
    return len({t for i, t in enumerate(tars) if t and i not in gone})


_MODALITY = {"near_duplicate": "image"}  # which part of the row a dedup reason is about


def reject_row(row: dict[str, Any], reason: str, message: str, modality: str) -> dict[str, Any]:
    """A rejects.parquet row for an index-like ``row`` (build finalize and curate)."""
    fields = ("source_file", "source_row", "source_key", "key")
    return {**{f: row.get(f) for f in fields}, "reason": reason, "modality": modality,
            "message": message}  # fmt: skip


def _place(work_dir: str, out_dir: str, staged: str, final: str, kept: list[dict], whole: bool):
    """Publish one staged tar under its final name: a rename when every sample survived
    dedup, else a filtered copy. Both are idempotent, so an interrupted finalize reruns."""
    src, dst = join(work_dir, "chunks", staged), join(out_dir, final)
    if whole:
        if exists(src):
            move(src, dst)
        elif not exists(dst):
            raise RuntimeError(
                f"staged shard {staged} is gone and {final} was never written; rerun with --overwrite"
            )
        return
    copy_samples(src, dst, kept)


def place_chunk(work_dir: str, out_dir: str, chunk_id: str, base: int) -> dict[str, Any]:
    """Place one chunk's tars as shards ``base``, ``base + 1``...; write its index and
    rejects parts; return its counts and one digest per shard."""
    rows = read_table(chunk_meta_url(work_dir, chunk_id)).to_pylist()
    dedup = chunk_rejects(work_dir, chunk_id)
    per_tar: Counter[str] = Counter(r["staged_tar"] for r in rows if not r["reason"])
    kept_by_tar: dict[str, list[dict[str, Any]]] = {}
    bad: list[dict[str, Any]] = []
    for i, r in enumerate(rows):
        if r["reason"]:
            bad.append(reject_row(r, r["reason"], r["message"], r["modality"]))
        elif i in dedup:
            reason, message = dedup[i]
            bad.append(reject_row(r, reason, message, _MODALITY.get(reason, "row")))
        else:
            kept_by_tar.setdefault(r["staged_tar"], []).append(r)
    shards, index_rows, nbytes = [], [], 0
    for n, (staged, kept) in enumerate(kept_by_tar.items()):
        final = shard_name(base + n)
        _place(work_dir, out_dir, staged, final, kept, whole=len(kept) == per_tar[staged])
        for r in kept:
            r["shard"] = final
            nbytes += sum(m["size"] for m in r["members"])
        index_rows += kept
        total = sum(row_hash(r["key"], r["content_hash"]) for r in kept)
        shards.append(
            {"shard": final, "samples": len(kept), "digest": digest_text(total, len(kept))}
        )
    index = to_table(
        [{f.name: r.get(f.name) for f in INDEX_SCHEMA} for r in index_rows], INDEX_SCHEMA
    )
    write_table(placed_url(work_dir, chunk_id, "index"), index, INDEX_SCHEMA, "index")
    write_table(
        placed_url(work_dir, chunk_id, "rejects"),
        to_table(bad, REJECTS_SCHEMA),
        REJECTS_SCHEMA,
        "rejects",
    )
    return {
        "chunk_id": chunk_id,
        "rows": len(rows),
        "written": len(index_rows),
        "bytes": nbytes,
        "reasons": json.dumps(dict(Counter(b["reason"] for b in bad))),
        "shards": json.dumps(shards),
    }


# What common WebDataset loaders read beside the tars: open_clip's sizes.json, and the
# shard index of webdataset's `wids` (urls relative to the index file).
LOADER_FILES = ("sizes.json", "shardindex.json")


def write_loader_files(work_dir: str, sizes: dict[str, int]) -> None:
    index = {
        "__kind__": "wids-shard-index-v1",
        "wids_version": 1,
        "shardlist": [{"url": name, "nsamples": n} for name, n in sizes.items()],
    }
    for name, doc in zip(LOADER_FILES, (sizes, index)):
        write_bytes_atomic(join(work_dir, name), json.dumps(doc, indent=1).encode())


def publish(work_dir: str, out_dir: str) -> None:
    """Rename what finalize left in ``work_dir`` to its final names (build.json excepted)."""
    for name in LOADER_FILES:
        move(join(work_dir, name), join(out_dir, SHARD_DIR, name))
    for name in TABLES:
        move(join(work_dir, name), join(out_dir, name))


def merge(work_dir: str, placed: list[dict[str, Any]]) -> dict[str, Any]:
    """Stream every chunk's parts, in input order, into index, rejects and shards tables.

    Holds one chunk's part at a time. Each shard's index rows are one write, so the shard
    table can name the index row groups that hold them (refresh reads only those)."""
    digests, sizes = [], {}
    reasons: Counter[str] = Counter()
    with (
        parquet_sink(join(work_dir, "index.parquet"), INDEX_SCHEMA, "index") as index,
        parquet_sink(join(work_dir, "rejects.parquet"), REJECTS_SCHEMA, "rejects") as rejects,
    ):
        for p in sorted(placed, key=lambda p: p["chunk_id"]):
            chunk_index = read_table(placed_url(work_dir, p["chunk_id"], "index"))
            shard_col = chunk_index.column("shard")
            for s in json.loads(p["shards"]):
                rows = chunk_index.filter(pc.equal(shard_col, s["shard"]))
                digests.append({**s, "index_row_groups": index.write(rows)})
                sizes[s["shard"].rsplit("/", 1)[-1]] = s["samples"]
            rejects.write(read_table(placed_url(work_dir, p["chunk_id"], "rejects")))
            reasons.update(json.loads(p["reasons"]))
    write_loader_files(work_dir, sizes)
    write_table(
        join(work_dir, "shards.parquet"), to_table(digests, SHARDS_SCHEMA), SHARDS_SCHEMA, "shards"
    )
    return {
        "input_rows": sum(p["rows"] for p in placed),
        "written": sum(p["written"] for p in placed),
        "rejected": sum(reasons.values()),
        "shards": len(digests),
        "bytes_written": sum(p["bytes"] for p in placed),
        "rejects_by_reason": dict(sorted(reasons.items())),
    }


def reset(work_dir: str) -> None:
    """Drop what an interrupted finalize left: it is all derived again, identically."""
    for name in ("dedup", "placed"):
        remove_tree(join(work_dir, name))


def first_shards(kept: dict[str, int]) -> dict[str, int]:
    """Each chunk's first final shard number: a prefix sum over chunks in input order."""
    out, n = {}, 0
    for cid in sorted(kept):
        out[cid] = n
        n += kept[cid]
    return out


def dedup_one_task(work_dir: str, ids: list[str]) -> int:
    """Dedup all chunks' claims in this process (the job does this when they fit in one
    partition); write the rejects per chunk; return how many there were."""
    claims = (
        pa.concat_tables([read_claims(work_dir, cid, i) for i, cid in enumerate(ids)])
        if ids
        else CLAIMS_SCHEMA.empty_table()
    )
    decided = sequential(claims)
    rejected = decided.filter(pc.equal(decided.column("state"), REJECTED))
    write_rejects(work_dir, ids, rejected, "all")
    return rejected.num_rows


def near_one_task(work_dir: str, ids: list[str], distance: int) -> int:
    """Near-duplicate images of all chunks, in this process, after exact dedup; their
    rejects written per chunk. Returns how many there were."""
    near = [read_near(work_dir, cid, i) for i, cid in enumerate(ids)]
    found = neardup.one_task(pa.concat_tables(near), distance) if near else None
    if found is not None and found.num_rows:
        write_rejects(work_dir, ids, found, "near")
    return 0 if found is None else found.num_rows


def finalize(
    work_dir: str, out_dir: str, chunk_ids: list[str], near_distance: int | None = None
) -> dict[str, Any]:
    """The whole finalize in one process: the job's path for small builds, and for tests.

    The same steps as the distributed finalize; memory grows with the valid rows, so the
    job takes this path only below ``dedup_partition_rows``. ``near_distance``: near-dup
    images within that many pHash bits are rejected too; None leaves them."""
    reset(work_dir)
    ids = sorted(chunk_ids)
    dedup_one_task(work_dir, ids)
    if near_distance is not None:
        near_one_task(work_dir, ids, near_distance)
    bases = first_shards({cid: kept_tars(work_dir, cid) for cid in ids})
    return merge(work_dir, [place_chunk(work_dir, out_dir, cid, bases[cid]) for cid in ids])
