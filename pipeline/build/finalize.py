"""Finalize, chunk by chunk: place staged tars under final names, then merge index and rejects.

Dedup (``pipeline.build.dedup``) decides which rows are duplicates and leaves one small file
per chunk that has any (``_work/dedup``). Placing a chunk (``pipeline.build.place``) then
needs only that chunk: its metadata, its dedup rejects, and the number of its first final
shard, which the job derives from per-chunk tar counts (O(chunks)). Chunks are placed in parallel; the merge streams
their index and reject parts, in input order, into the final tables, one chunk at a time.
"""

from __future__ import annotations

import contextlib
import itertools
import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.build import neardup
from pipeline.build.chunk import chunk_meta_url
from pipeline.build.dedup import CLAIMS_SCHEMA, REJECTED, new_claims, position, sequential
from pipeline.build.place import SHARD_DIR, chunk_rejects, dedup_dir, place_chunk, placed_url
from pipeline.io.fs import atomic_open, join, list_files, move, remove_tree
from pipeline.io.parquet import (
    ParquetSink,
    PartedSink,
    iter_tables,
    parquet_sink,
    parted_sink,
    read_table,
    to_table,
    write_table,
)
from pipeline.io.shards import INDEX_DIR
from schemas import INDEX_SCHEMA, REJECTS_SCHEMA, SHARDS_SCHEMA
from schemas.work import DEDUP_SCHEMA

# What finalize writes beside the shards folder, published before build.json.
TABLES = (INDEX_DIR, "rejects.parquet", "shards.parquet")


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


def write_loader_files(work_dir: str) -> None:
    """The loader files, streamed from ``shards.parquet`` a batch at a time."""
    shards = join(work_dir, "shards.parquet")
    with (
        atomic_open(join(work_dir, LOADER_FILES[0])) as sizes,
        atomic_open(join(work_dir, LOADER_FILES[1])) as index,
    ):
        sizes.write(b"{")
        index.write(b'{"__kind__": "wids-shard-index-v1", "wids_version": 1, "shardlist": [')
        sep = b""
        for t in iter_tables([shards], ["shard", "samples"]):
            for shard, n in zip(t.column("shard").to_pylist(), t.column("samples").to_pylist()):
                name = json.dumps(shard.rsplit("/", 1)[-1])
                sizes.write(sep + f"\n {name}: {n}".encode())
                index.write(sep + f'\n {{"url": {name}, "nsamples": {n}}}'.encode())
                sep = b","
        sizes.write(b"\n}\n")
        index.write(b"\n]}\n")


def publish(work_dir: str, out_dir: str) -> None:
    """Rename what finalize left in ``work_dir`` to its final names (build.json excepted)."""
    for name in LOADER_FILES:
        move(join(work_dir, name), join(out_dir, SHARD_DIR, name))
    for name in list_files(join(work_dir, INDEX_DIR)):  # file by file: object stores too
        move(join(work_dir, INDEX_DIR, name), join(out_dir, INDEX_DIR, name))
    for name in TABLES[1:]:
        move(join(work_dir, name), join(out_dir, name))


# An index file closes at whichever bound it reaches first: each row group (one a shard)
# keeps ~16 KB of footer in the writer until the file closes (docs/reliability.md).
INDEX_FILE_ROW_GROUPS = 1024
INDEX_FILE_ROWS = 1 << 20


class FinalTables:
    """The writers of a finished build's tables: the index (a file per ~1M rows), rejects
    and shards.parquet. Each holds a bounded buffer and footer, whatever the corpus."""

    def __init__(self, index: PartedSink, rejects: ParquetSink, shards: ParquetSink) -> None:
        self.index, self.rejects, self.shards = index, rejects, shards
        self.count = 0
        self._rows: list[dict[str, Any]] = []  # shards.parquet rows: a table per 4,096

    def shard(self, entry: dict[str, Any], rows: pa.Table) -> None:
        """One final shard: its index rows, one write, and its ``shards.parquet`` row naming
        the index file and row groups that hold them (refresh and curate read only those)."""
        name, groups = self.index.write(rows)
        self._rows.append(
            {**entry, "index_file": f"{INDEX_DIR}/{name}", "index_row_groups": groups}
        )
        self.count += 1
        if len(self._rows) >= 4096:
            self.flush()

    def flush(self) -> None:
        if self._rows:
            self.shards.append(to_table(self._rows, SHARDS_SCHEMA))
        self._rows = []


@contextlib.contextmanager
def final_tables(work_dir: str) -> Iterator[FinalTables]:
    """Write the tables into ``work_dir``, then the loader files from ``shards.parquet``."""
    remove_tree(join(work_dir, INDEX_DIR))  # parts an interrupted merge left behind
    with (
        parted_sink(
            join(work_dir, INDEX_DIR),
            INDEX_SCHEMA,
            "index",
            max_row_groups=INDEX_FILE_ROW_GROUPS,
            max_rows=INDEX_FILE_ROWS,
        ) as index,
        parquet_sink(join(work_dir, "rejects.parquet"), REJECTS_SCHEMA, "rejects") as rejects,
        parquet_sink(join(work_dir, "shards.parquet"), SHARDS_SCHEMA, "shards") as shards,
    ):
        out = FinalTables(index, rejects, shards)
        yield out
        out.flush()
    write_loader_files(work_dir)


def merge(work_dir: str, placed: list[dict[str, Any]]) -> dict[str, Any]:
    """Stream every chunk's parts, in input order, into index, rejects and shards tables.

    Holds one chunk's part at a time. Each shard's index rows are one write, so the shard
    table can name the index row groups that hold them (refresh reads only those)."""
    reasons: Counter[str] = Counter()
    with final_tables(work_dir) as out:
        for p in sorted(placed, key=lambda p: p["chunk_id"]):
            chunk_index = read_table(placed_url(work_dir, p["chunk_id"], "index"))
            shard_col = chunk_index.column("shard")
            for s in json.loads(p["shards"]):
                out.shard(s, chunk_index.filter(pc.equal(shard_col, s["shard"])))
            out.rejects.append(read_table(placed_url(work_dir, p["chunk_id"], "rejects")))
            reasons.update(json.loads(p["reasons"]))
    return {
        "input_rows": sum(p["rows"] for p in placed),
        "written": sum(p["written"] for p in placed),
        "rejected": sum(reasons.values()),
        "shards": out.count,
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
