"""BuildChunkStage: one chunk of input rows -> staged tar(s) plus chunk metadata (its commit marker)."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.build.card import member_types
from pipeline.build.stream import FetchedRows
from pipeline.config import BuildConfig
from pipeline.faults import maybe_fail
from pipeline.io.fs import atomic_open, exists, join
from pipeline.io.parquet import read_table, to_table, write_table
from pipeline.io.tar import TarShardWriter
from pipeline.redact import redact
from pipeline.stage import Batch, Resources, Stage
from pipeline.validate.fetch import FetchStage
from pipeline.validate.keys import KeyStage
from pipeline.validate.row import ValidateStage
from schemas import STAGED_SCHEMA
from schemas.work import SUMMARY_SCHEMA


def chunk_meta_url(work_dir: str, chunk_id: str) -> str:
    return join(work_dir, "chunks", f"{chunk_id}.parquet")


def claim(folder: str, chunk_id: str, side: str) -> bool:
    """Whether ``side`` builds the chunk: the first side to claim it in ``folder`` (a local
    folder shared by a driver and the tasks of the Ray it started; build/early.py).

    A claim names its side, not its process, so a task Ray retries after its worker died
    claims its chunk again. A symlink is made and read atomically, content and all.
    """
    path = os.path.join(folder, chunk_id)
    try:
        os.symlink(side, path)
    except FileExistsError:
        return os.readlink(path) == side
    return True


def staged_tar_url(work_dir: str, chunk_id: str, sub: int) -> str:
    return join(work_dir, "chunks", f"{chunk_id}-{sub:03d}.tar")


def sample_members(row: dict[str, Any]) -> list[tuple[str, bytes]]:
    """A sample's tar members in a fixed order; its JSON always comes with it."""
    key = row["key"]
    members: list[tuple[str, bytes]] = []
    if row.get("image") is not None:
        members.append((f"{key}.{row['image_ext']}", row["image"]))
    if row.get("text") is not None:
        members.append((f"{key}.txt", row["text"].encode("utf-8")))
    if row.get("audio") is not None:
        members.append((f"{key}.{row['audio_ext']}", row["audio"]))
    meta = dict(row.get("meta") or {})
    meta["key"] = key
    if row.get("source_key") and row["source_key"] != key:
        meta["source_key"] = row["source_key"]
    members.append((f"{key}.json", json.dumps(meta, sort_keys=True, ensure_ascii=False).encode()))
    for ext, data in row.get("extras") or ():
        members.append((f"{key}.{ext}", data))
    return members


class ChunkWriter:
    """Append samples of one chunk to staged tars (rolled at the byte target), then commit."""

    def __init__(self, work_dir: str, chunk_id: str, shard_samples: int, shard_bytes: int) -> None:
        self.work_dir, self.chunk_id = work_dir, chunk_id
        self.shard_samples, self.shard_bytes = shard_samples, shard_bytes
        self._in_tar = 0
        self.rows: list[dict[str, Any]] = []
        self.sub = -1
        self._cm: Any = None
        self._tar: TarShardWriter | None = None
        self.bytes = 0

    def _roll(self) -> None:
        self._close_tar()
        self.sub += 1
        self._cm = atomic_open(staged_tar_url(self.work_dir, self.chunk_id, self.sub))
        self._tar = TarShardWriter(self._cm.__enter__())

    def _close_tar(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self.bytes += self._tar.offset
            self._cm.__exit__(None, None, None)
            self._tar, self._cm = None, None

    def add(self, row: dict[str, Any]) -> None:
        common = {k: row.get(k) for k in ("source_file", "source_row", "source_key", "key")}
        if row.get("reason"):
            self.rows.append(
                {
                    **common,
                    "reason": row["reason"],
                    "modality": row.get("modality"),
                    "message": redact(row.get("message") or row["reason"]),
                }
            )
            return
        members = sample_members(row)
        size = sum(512 + len(d) + (-len(d)) % 512 for _, d in members)
        # A new tar when this one holds shard_samples samples or would pass shard_bytes;
        # a single sample larger than shard_bytes still gets a tar of its own.
        full = self._in_tar >= self.shard_samples or (
            self._tar is not None and self._tar.offset + size > self.shard_bytes
        )
        if self._tar is None or (self._in_tar > 0 and full):
            self._roll()
            self._in_tar = 0
        self._in_tar += 1
        assert self._tar is not None
        written = [
            {"name": n, "offset": o, "size": s}
            for n, d in members
            for o, s in [self._tar.add(n, d)]
        ]
        self.rows.append(
            {
                **common,
                "staged_tar": f"{self.chunk_id}-{self.sub:03d}.tar",
                "members": written,
                "content_hash": row["content_hash"],
                "image_format": row.get("image_ext"),
                "image_width": row.get("image_width"),
                "image_height": row.get("image_height"),
                "image_phash": row.get("image_phash"),
                "audio_format": row.get("audio_ext"),
                "audio_duration": row.get("audio_duration"),
                "audio_sample_rate": row.get("audio_sample_rate"),
                "audio_channels": row.get("audio_channels"),
                "text_length": len(row["text"]) if row.get("text") is not None else None,
            }
        )

    def commit(self) -> pa.Table:
        """Close the tars, then write the metadata last: its presence marks the chunk done."""
        self._close_tar()
        table = to_table(self.rows, STAGED_SCHEMA)  # a missing field is null
        write_table(chunk_meta_url(self.work_dir, self.chunk_id), table, STAGED_SCHEMA, "staged")
        return table

    def abort(self) -> None:
        if self._cm is not None:
            self._cm.__exit__(RuntimeError, RuntimeError("aborted"), None)


def summarize(
    chunk_id: str, table: pa.Table, nbytes: int, resumed: bool, seconds: float
) -> dict[str, Any]:
    reasons = Counter(r for r in table.column("reason").to_pylist() if r)
    rejected = sum(reasons.values())
    tars = len({t for t in table.column("staged_tar").to_pylist() if t})
    return {
        "chunk_id": chunk_id,
        "rows": table.num_rows,
        "staged": table.num_rows - rejected,
        "rejected": rejected,
        "bytes": nbytes,
        "tars": tars,
        "reasons": json.dumps(dict(sorted(reasons.items()))),
        "member_types": json.dumps(sorted(member_types(table.column("members")))),
        "resumed": resumed,
        "seconds": seconds,
    }


class BuildChunkStage(Stage):
    """Fetch, validate and key each chunk's rows, streaming them into staged tars.

    The whole chunk is handled in one call so that its output depends only on its input
    (deterministic shards) and so that a finished chunk can be skipped on resume.
    """

    name = "build_chunk"
    reads: ClassVar[tuple[str, ...]] = (
        "chunk_id",
        "chunk_rows",
        "source_file",
        "source_row",
        "members",
    )
    adds: ClassVar[tuple[str, ...]] = tuple(SUMMARY_SCHEMA.names)
    passthrough: ClassVar[bool] = False

    def __init__(
        self, cfg: BuildConfig, work_dir: str, claims: str | None = None, side: str = "tasks"
    ) -> None:
        super().__init__()
        # claims: a folder where the driver and this Ray's tasks claim chunks (a local build
        # shares its chunks that way); a chunk the other side claimed is skipped here.
        self.cfg, self.work_dir, self.claims, self.side = cfg, work_dir, claims, side

    @property
    def resources(self) -> Resources:
        return Resources(num_cpus=self.cfg.num_cpus)

    def setup(self) -> None:
        self.stages: list[Stage] = [
            FetchStage(
                max_file_bytes=self.cfg.max_file_bytes,
                concurrency=self.cfg.fetch_concurrency,
                allow_hosts=tuple(self.cfg.allow_hosts),
            ),
            ValidateStage(self.cfg),
            KeyStage(),
        ]
        for s in self.stages:
            s.ensure_setup()

    def __call__(self, batch: Batch) -> Batch:
        self.ensure_setup()
        table: pa.Table = batch if isinstance(batch, pa.Table) else pa.Table.from_pydict(batch)
        out = []
        for cid in pc.unique(table.column("chunk_id")).to_pylist():
            rows = table.filter(pc.equal(table.column("chunk_id"), cid))
            expected = rows.column("chunk_rows")[0].as_py()
            if rows.num_rows != expected:
                # A chunk split across blocks would give nondeterministic shards: stop loudly.
                raise RuntimeError(f"chunk {cid} arrived with {rows.num_rows} of {expected} rows")
            if self.claims is None or claim(self.claims, cid, self.side):
                out.append(self.build_chunk(cid, rows))
        return pa.Table.from_pylist(out, schema=SUMMARY_SCHEMA)

    def build_chunk(self, chunk_id: str, rows: pa.Table) -> dict[str, Any]:
        t0 = time.perf_counter()
        meta_url = chunk_meta_url(self.work_dir, chunk_id)
        if exists(meta_url):  # finished by an earlier, interrupted run
            done = read_table(meta_url)
            return summarize(chunk_id, done, 0, True, time.perf_counter() - t0)
        writer = ChunkWriter(self.work_dir, chunk_id, self.cfg.shard_samples, self.cfg.shard_bytes)
        maybe_fail("build_chunk")  # reliability tests: this worker dies mid-chunk
        fetch, rest = self.stages[0], self.stages[1:]
        assert isinstance(fetch, FetchStage)
        # Rows are validated as their fetches land, in any order, and written in input
        # order (deterministic shards): a slow URL delays its own row's write, not the
        # fetching or decoding of the rows after it.
        waiting: dict[int, dict[str, Any]] = {}
        head = 0
        try:
            with FetchedRows(fetch, rows) as stream:
                for got, batch in stream:
                    for stage in rest:
                        batch = stage.run(batch)
                    for j, i in enumerate(got):
                        waiting[i] = {k: v[j] for k, v in batch.items()}
                    while head in waiting:
                        writer.add(waiting.pop(head))
                        stream.release(head)
                        head += 1
            table = writer.commit()
        except BaseException:
            writer.abort()
            raise
        return summarize(chunk_id, table, writer.bytes, False, time.perf_counter() - t0)
