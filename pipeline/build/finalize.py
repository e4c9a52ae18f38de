"""Finalize, chunk by chunk: place staged tars under final names, then merge index and rejects.

Dedup (``pipeline.build.dedup``) decides which rows are duplicates and leaves one small file
per chunk that has any (``_work/dedup``). Placing a chunk (``pipeline.build.place``) then
needs only that chunk: its metadata, its dedup rejects, and the number of its first final
shard, which the job derives from per-chunk tar counts (O(chunks)). Chunks are placed in parallel; the merge streams
their index and reject parts, in input order, into the final tables, one chunk at a time.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.build import neardup
from pipeline.build.chunk import chunk_meta_url
from pipeline.build.dedup import CLAIMS_SCHEMA, REJECTED, new_claims, position, sequential
from pipeline.build.place import SHARD_DIR, chunk_rejects, dedup_dir, place_chunk, placed_url
from pipeline.io.fs import join, move, remove_tree, write_bytes_atomic
from pipeline.io.parquet import parquet_sink, read_table, to_table, write_table
from schemas import INDEX_SCHEMA, REJECTS_SCHEMA, SHARDS_SCHEMA
from schemas.work import DEDUP_SCHEMA

# What finalize writes beside the shards folder, published before build.json.
TABLES = ("index.parquet", "rejects.parquet", "shards.parquet")


def _claims(meta: pa.Table, rank: int) -> pa.Table:
    rows = np.arange(meta.num_rows)
    ok = pc.is_null(meta.column("reason")).to_numpy(zero_copy_only=False)
    valid = meta.filter(pa.array(ok))
    return new_claims(position(rank, rows[ok]), valid.column("key"), valid.column("content_hash"))


def read_claims(work_dir: str, chunk_id: str, rank: int) -> pa.Table:
    """The chunk's rows that passed validation, as dedup claims placed in input order."""
    return _claims(
        read_table(chunk_meta_url(work_dir, chunk_id), ["key", "content_hash", "reason"]), rank
    )


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
    order = np.argsort(chunk, kind="stable")  # each chunk's rows one slice, not a filter each
    rejects, chunk = rejects.take(pa.array(order)), chunk[order]
    starts = np.flatnonzero(np.r_[True, chunk[1:] != chunk[:-1]]).tolist() if len(chunk) else []
    for lo, hi in itertools.pairwise([*starts, len(chunk)]):
        c, mine = chunk[lo], rejects.slice(lo, hi - lo)
        table = pa.table(
            {
                "row": pc.bit_wise_and(mine.column("pos"), (1 << 32) - 1),
                "reason": mine.column("reason"),
                "message": mine.column("message"),
            },
            schema=DEDUP_SCHEMA,
        )
        # Derived again by a rerun (reset), as the placed parts: no sync to disk.
        url = join(dedup_dir(work_dir, ids[c]), f"{name}.parquet")
        write_table(url, table, DEDUP_SCHEMA, "dedup", durable=False)


def kept_tars(work_dir: str, chunk_id: str) -> int:
    """How many of a chunk's staged tars keep a sample after dedup (its final shards)."""
    tars = read_table(chunk_meta_url(work_dir, chunk_id), ["staged_tar"]).column(0)
    return _kept_tars(tars, chunk_rejects(work_dir, chunk_id))


def _kept_tars(tars: pa.ChunkedArray, gone: Any) -> int:
    """Distinct staged tars among rows neither rejected nor in ``gone`` (row numbers)."""
    keep = pc.is_valid(tars).to_numpy(zero_copy_only=False).copy()
    keep[np.fromiter(gone, np.int64)] = False
    return len(pc.unique(tars.filter(pa.array(keep))))


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


def dedup_one_task(work_dir: str, ids: list[str]) -> dict[str, int]:
    """Dedup all chunks' claims in this process (the job does this when they fit in one
    partition); write the rejects per chunk; return each chunk's kept tars, as
    ``kept_tars`` counts them, from the metadata already read (no second pass over it)."""
    cols = ["key", "content_hash", "reason", "staged_tar"]
    tars, parts = [], []
    for i, cid in enumerate(ids):
        meta = read_table(chunk_meta_url(work_dir, cid), cols)
        tars.append(meta.column("staged_tar"))
        parts.append(_claims(meta, i))
    claims = pa.concat_tables(parts) if parts else CLAIMS_SCHEMA.empty_table()
    decided = sequential(claims)
    rejected = decided.filter(pc.equal(decided.column("state"), REJECTED))
    write_rejects(work_dir, ids, rejected, "all")
    pos = rejected.column("pos").to_numpy()
    chunk, row = pos >> 32, pos & ((1 << 32) - 1)
    return {cid: _kept_tars(tars[i], row[chunk == i]) for i, cid in enumerate(ids)}


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
    kept = dedup_one_task(work_dir, ids)
    if near_distance is not None:  # its rejects change which tars keep a sample
        near_one_task(work_dir, ids, near_distance)
        kept = {cid: kept_tars(work_dir, cid) for cid in ids}
    bases = first_shards(kept)
    return merge(work_dir, [place_chunk(work_dir, out_dir, cid, bases[cid]) for cid in ids])
