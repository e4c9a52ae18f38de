"""Finalize one shard of a new version: link an unchanged file, or join staged parts with the
rows kept from the base version into one Parquet file sized for readers."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.embed.plan import index_hashes, previous_keys, rejects_path
from pipeline.embed.records import DIFF_FIELDS, FILE_FIELDS
from pipeline.embed.store import data_path
from pipeline.io.fs import atomic_open, exists, get_fs, is_remote, join, list_files
from pipeline.io.parquet import read_table
from pipeline.stage import Resources, Stage
from schemas.build import with_schema_metadata
from schemas.embeddings import EMBED_REJECTS_SCHEMA


def link_or_copy(src: str, dst: str) -> None:
    """Put an unchanged file into the new version without rewriting it: a hard link locally
    (no bytes copied), a server-side copy on object stores."""
    if is_remote(src):
        fs, s = get_fs(src)
        fs.copy(s, get_fs(dst)[1])
        return
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or links not supported: copy, then rename
        tmp = f"{dst}.tmp-{uuid.uuid4().hex[:8]}"
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)


def _read_dir(root: str) -> list[pa.Table]:
    if not exists(root):
        return []
    return [read_table(join(root, rel)) for rel in list_files(root)]


def _keep(table: pa.Table, keys: set[str]) -> pa.Table:
    return table.filter(pc.is_in(table.column("key"), pa.array(sorted(keys), pa.string())))


def _with_hashes(table: pa.Table, hashes: dict[str, str]) -> pa.Table:
    if not hashes or table.num_rows == 0:
        return table
    col = pa.array([hashes.get(k) for k in table.column("key").to_pylist()], pa.string())
    return table.set_column(table.schema.get_field_index("content_hash"), "content_hash", col)


# One manifest entry per shard, with what changed against the base version.
ENTRY_FIELDS = (*FILE_FIELDS, *DIFF_FIELDS, "write_s")


class MergeShard(Stage):
    """One row per shard plan in, one manifest entry (with diff counts) out."""

    name = "merge_shard"
    reads: ClassVar[tuple[str, ...]] = ("plan",)
    adds: ClassVar[tuple[str, ...]] = ENTRY_FIELDS
    passthrough: ClassVar[bool] = False
    batch_format: ClassVar[str] = "pyarrow"

    def __init__(
        self,
        staging: str,
        base_dir: str | None,
        vdir: str,
        schema: pa.Schema,
        row_group_mb: int,
    ) -> None:
        super().__init__()
        self.staging, self.base_dir, self.vdir = staging, base_dir, vdir
        self.schema, self.row_group_mb = schema, row_group_mb

    @property
    def resources(self) -> Resources:
        return Resources(num_cpus=0.5)

    def __call__(self, batch: Any) -> Any:  # a pyarrow Table in, a pyarrow Table out
        rows = [self.merge(json.loads(r["plan"])) for r in batch.to_pylist()]
        return pa.Table.from_pylist(rows)

    def merge(self, plan: dict[str, Any]) -> dict[str, Any]:
        t0 = time.perf_counter()
        stem, prev = plan["shard"], plan["prev"]
        path = data_path(stem)
        entry = {"shard": stem, "path": path, "digest": plan["digest"], "write_s": 0.0}
        entry.update(dict.fromkeys(DIFF_FIELDS, 0))
        if plan["action"] == "carry":
            assert self.base_dir is not None and prev is not None
            link_or_copy(join(self.base_dir, prev["path"]), join(self.vdir, path))
            if prev["rejected"]:
                link_or_copy(
                    join(self.base_dir, rejects_path(stem)), join(self.vdir, rejects_path(stem))
                )
            entry.update(
                rows=prev["rows"],
                rejected=prev["rejected"],
                bytes=prev["bytes"],
                unchanged=prev["rows"] + prev["rejected"],
                write_s=time.perf_counter() - t0,
            )
            return entry
        hashes = index_hashes(plan["span"], stem) if plan["span"] else {}
        parts = _read_dir(join(self.staging, "parts", stem))
        rejects = _read_dir(join(self.staging, "rejects", stem))
        staged = {k for t in parts + rejects for k in t.column("key").to_pylist()}
        old = previous_keys(self.base_dir, prev) if (self.base_dir and prev) else {}
        if plan["action"] == "merge":
            assert self.base_dir is not None and prev is not None
            keep = {k for k in plan["skip"] if k not in staged}
            if prev["rows"]:
                parts.append(_keep(read_table(join(self.base_dir, prev["path"])), keep))
            if prev["rejected"]:
                rejects.append(_keep(read_table(join(self.base_dir, rejects_path(stem))), keep))
            entry["unchanged"] = len(keep)
        data = self._concat(parts, self.schema, hashes)
        rej = self._concat(rejects, EMBED_REJECTS_SCHEMA, hashes)
        new = dict(zip(data.column("key").to_pylist(), data.column("content_hash").to_pylist()))
        new.update(zip(rej.column("key").to_pylist(), rej.column("content_hash").to_pylist()))
        both = new.keys() & old.keys()
        entry["embedded"] = len(staged)
        entry["added"] = len(new.keys() - old.keys())
        entry["removed"] = len(old.keys() - new.keys())
        # Without content hashes (bare tars) a key of a touched shard counts as changed.
        same = sum(1 for k in both if new[k] is not None and new[k] == old[k])
        entry["changed"] = len(both) - same
        entry["unchanged"] = same
        w0 = time.perf_counter()
        entry["bytes"] = self._write(join(self.vdir, path), data, self.schema)
        if rej.num_rows:
            self._write(join(self.vdir, rejects_path(stem)), rej, EMBED_REJECTS_SCHEMA)
        entry.update(rows=data.num_rows, rejected=rej.num_rows, write_s=time.perf_counter() - w0)
        return entry

    @staticmethod
    def _concat(tables: list[pa.Table], schema: pa.Schema, hashes: dict[str, str]) -> pa.Table:
        tables = [t.select(schema.names).cast(schema) for t in tables if t.num_rows]
        if not tables:
            return schema.empty_table()
        table = pa.concat_tables(tables)
        staged_hash = table.column("content_hash")
        if staged_hash.null_count:  # staged rows: their hash comes from the index
            filled = _with_hashes(table, hashes)
            table = table.set_column(
                table.schema.get_field_index("content_hash"),
                "content_hash",
                pc.coalesce(staged_hash, filled.column("content_hash")),
            )
        keys = table.column("key").to_pylist()
        # One row per key even if a retried batch was staged twice under another grouping.
        first = {k: i for i, k in reversed(list(enumerate(keys)))}
        order = sorted(first.values(), key=lambda i: keys[i])
        return table.take(pa.array(order, pa.int64()))

    def _write(self, url: str, table: pa.Table, schema: pa.Schema) -> int:
        """One file, row groups of ~row_group_mb, committed atomically; returns its size."""
        per_row = max(1, table.nbytes // max(1, table.num_rows))
        rg_rows = max(1024, (self.row_group_mb << 20) // per_row)
        tagged = with_schema_metadata(
            schema, "embeddings" if "fused_emb" in schema.names else "embed_rejects"
        )
        with atomic_open(url, "wb") as f:
            with pq.ParquetWriter(f, tagged, compression="zstd") as w:
                w.write_table(table.cast(tagged), row_group_size=rg_rows)
            with contextlib.suppress(Exception):
                return int(f.tell())
        return 0
