"""Finalize: dedup in input order, give shards their final names, write index, rejects, digests."""

from __future__ import annotations

from collections import Counter
from typing import Any

from pipeline.build.chunk import chunk_meta_url
from pipeline.errors import Reason
from pipeline.fingerprint import digest_text, row_hash
from pipeline.io.fs import atomic_open, exists, get_fs, join, move, write_bytes_atomic
from pipeline.io.parquet import parquet_sink, read_table, to_table, write_table
from pipeline.io.tar import TarShardWriter, read_member
from schemas import INDEX_SCHEMA, REJECTS_SCHEMA, SHARDS_SCHEMA

SHARD_DIR = "shards"
# What finalize writes beside the shards folder, published before build.json.
TABLES = ("index.parquet", "rejects.parquet", "shards.parquet")


def shard_name(n: int) -> str:
    return f"{SHARD_DIR}/{n:06d}.tar"


def _reject(row: dict[str, Any], reason: str, message: str) -> dict[str, Any]:
    return {
        "source_file": row["source_file"],
        "source_row": row["source_row"],
        "source_key": row.get("source_key"),
        "key": row.get("key"),
        "reason": reason,
        "modality": "row",
        "message": message,
    }


def _place(
    work_dir: str, out_dir: str, staged: str, final: str, kept: list[dict[str, Any]], whole: bool
) -> None:
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
    fs, path = get_fs(src)
    with fs.open(path, "rb") as f, atomic_open(dst) as out:
        w = TarShardWriter(out)
        for row in kept:
            row["members"] = [
                {"name": m["name"], "offset": o, "size": s}
                for m in row["members"]
                for o, s in [w.add(m["name"], read_member(f, m["offset"], m["size"]))]
            ]
        w.close()


# What common WebDataset loaders read beside the tars: open_clip's sizes.json, and the
# shard index of webdataset's `wids` (urls relative to the index file).
LOADER_FILES = ("sizes.json", "shardindex.json")


def write_loader_files(work_dir: str, sizes: dict[str, int]) -> None:
    import json

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


def finalize(work_dir: str, out_dir: str, chunk_ids: list[str]) -> dict[str, Any]:
    """Walk chunks in input order; the first occurrence of a content hash or key wins.

    A rejected row claims nothing, so a later copy of its content can still be written.
    The index, the rejects and ``shards.parquet`` (one digest per shard, for refresh
    planning) are written into ``work_dir``; the job publishes them just before
    ``build.json``. Memory grows with the number of distinct samples (a hash and a key each), not with
    their bytes; the bytes are only streamed from staged tars when dedup removed some.
    """
    first_hash: dict[str, str] = {}
    sizes: dict[str, int] = {}
    digests: list[dict[str, Any]] = []  # one per shard: O(shards), not O(samples)
    seen_keys: set[str] = set()
    n_shards = written = nbytes = rows_total = 0
    reasons: Counter[str] = Counter()
    with (
        parquet_sink(join(work_dir, "index.parquet"), INDEX_SCHEMA, "index") as index,
        parquet_sink(join(work_dir, "rejects.parquet"), REJECTS_SCHEMA, "rejects") as rejects,
    ):
        for cid in sorted(chunk_ids):
            rows = read_table(chunk_meta_url(work_dir, cid)).to_pylist()
            rows_total += len(rows)
            per_tar: Counter[str] = Counter(r["staged_tar"] for r in rows if not r["reason"])
            kept_by_tar: dict[str, list[dict[str, Any]]] = {}
            bad: list[dict[str, Any]] = []
            for r in rows:
                if r["reason"]:
                    bad.append(_reject(r, r["reason"], r["message"]) | {"modality": r["modality"]})
                elif r["content_hash"] in first_hash:
                    same = f"same content as key {first_hash[r['content_hash']]!r}"
                    bad.append(_reject(r, Reason.DUPLICATE.value, same))
                elif r["key"] in seen_keys:
                    bad.append(
                        _reject(
                            r, Reason.DUPLICATE_KEY.value, f"key {r['key']!r} was already written"
                        )
                    )
                else:
                    first_hash[r["content_hash"]] = r["key"]
                    seen_keys.add(r["key"])
                    kept_by_tar.setdefault(r["staged_tar"], []).append(r)
            for staged, kept in kept_by_tar.items():
                final = shard_name(n_shards)
                n_shards += 1
                _place(work_dir, out_dir, staged, final, kept, whole=len(kept) == per_tar[staged])
                sizes[final.rsplit("/", 1)[-1]] = len(kept)
                for r in kept:
                    r["shard"] = final
                    nbytes += sum(m["size"] for m in r["members"])
                written += len(kept)
                groups = index.write(
                    to_table(
                        [{f.name: r.get(f.name) for f in INDEX_SCHEMA} for r in kept], INDEX_SCHEMA
                    )
                )
                total = sum(row_hash(r["key"], r["content_hash"]) for r in kept)
                digests.append(
                    {
                        "shard": final,
                        "samples": len(kept),
                        "digest": digest_text(total, len(kept)),
                        "index_row_groups": groups,
                    }
                )
            reasons.update(b["reason"] for b in bad)
            rejects.write(to_table(bad, REJECTS_SCHEMA))
    write_loader_files(work_dir, sizes)
    write_table(
        join(work_dir, "shards.parquet"), to_table(digests, SHARDS_SCHEMA), SHARDS_SCHEMA, "shards"
    )
    return {
        "input_rows": rows_total,
        "written": written,
        "rejected": sum(reasons.values()),
        "shards": n_shards,
        "bytes_written": nbytes,
        "rejects_by_reason": dict(sorted(reasons.items())),
    }
