"""Built shards: finding them, and a WebDataset reader for Ray Data (one read task per tar)."""

from __future__ import annotations

import functools
import json
import posixpath
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import UserError
from pipeline.io.fs import exists, expand_inputs, get_fs, is_dir, join, list_files, read_bytes
from pipeline.io.parquet import iter_row_groups
from pipeline.io.tar import AUDIO_EXTS, IMAGE_EXTS, iter_tar_samples
from schemas import INDEX_SCHEMA

SAMPLE_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string()),
        pa.field("shard", pa.string()),
        pa.field("image", pa.large_binary()),
        pa.field("text", pa.large_string()),
        pa.field("audio", pa.large_binary()),
        pa.field("meta", pa.large_string()),  # the sample's .json member: labels, attributes
    ]
)


def shard_stem(url: str) -> str:
    return posixpath.basename(url).split(".", 1)[0]


def as_text(value: Any) -> str | None:
    """A text cell of a sample batch (str or bytes from numpy or Arrow), or None (NaN, null)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value) if isinstance(value, str) else None


# The commit marker of a finished build folder: a build's, or a curated build's.
BUILD_MARKERS = ("build.json", "curate.json")


# A build's index: one row per written sample, in numbered Parquet files under INDEX_DIR
# (``pipeline.io.parquet.PartedSink``) so that no writer or reader holds a footer that grows
# with the corpus. Builds before that wrote one LEGACY_INDEX file.
INDEX_DIR = "index"
LEGACY_INDEX = "index.parquet"


def index_files(build: str) -> list[str]:
    """The URLs of a finished build's index files, in order; [] when it has none."""
    parted = join(build, INDEX_DIR)
    if is_dir(parted):
        names = [n for n in list_files(parted) if n.endswith(".parquet")]
        return [join(parted, n) for n in sorted(names, key=lambda n: (len(n), n))]
    legacy = join(build, LEGACY_INDEX)
    return [legacy] if exists(legacy) else []


# Where one shard's index rows are: (index file URL, that file's row groups holding them).
IndexSpan = tuple[str, list[int]]


def index_span(build: str, row: dict[str, Any]) -> IndexSpan:
    """The span a ``shards.parquet`` row names (older builds name no file: one index)."""
    return join(build, row.get("index_file") or LEGACY_INDEX), list(row["index_row_groups"])


def shard_index_rows(span: IndexSpan, shard: str, columns: list[str]) -> pa.Table:
    """One shard's index rows, read from only the row groups that hold them."""
    url, groups = span
    cols = columns if "shard" in columns else [*columns, "shard"]
    parts = [
        t.filter(pc.equal(t.column("shard"), shard)) for _, t in iter_row_groups(url, cols, groups)
    ]
    out = (
        pa.concat_tables(parts)
        if parts
        else pa.schema([INDEX_SCHEMA.field(c) for c in cols]).empty_table()
    )
    return out.select(columns)


def build_marker(spec: str) -> str | None:
    """The URL of ``spec``'s commit marker when it is a finished build (or curated build)."""
    for name in BUILD_MARKERS:
        url = join(spec, name)
        if exists(url):
            return url
    return None


def empty_build_line(report: dict, where: str) -> str | None:
    """The one line that says a finished build (or curated build) holds no sample, and why."""
    counts = report.get("counts") or {}
    if counts.get("written", 1):
        return None
    reasons = sorted((report.get("rejects_by_reason") or {}).items(), key=lambda kv: -kv[1])
    top = ", ".join(f"{r} {n}" for r, n in reasons[:3])
    return (
        f"{where} holds no sample: all {counts.get('input_rows', 0)} input rows were rejected"
        + (f" ({top})" if top else "")
        + f"; mmpipe rejects {where} lists them"
    )


def resolve_shards(spec: str) -> list[str]:
    """A build output folder (its shards/), a glob or brace pattern, or one tar."""
    marker = build_marker(spec)
    if marker:
        empty = empty_build_line(json.loads(read_bytes(marker)), spec)
        if empty:
            raise UserError(empty)
        spec = join(spec, "shards", "*.tar")
    elif not any(c in spec for c in "*?[{") and is_dir(spec):
        if exists(join(spec, "_work")):
            raise UserError(
                f"{spec} is an unfinished build (no build.json); rerun its `mmpipe build` "
                "command to finish it"
            )
        spec = join(spec, "*.tar")  # a folder of tars, such as BUILD/shards
    urls = [u for u in expand_inputs(spec) if u.endswith(".tar")]
    if not urls:
        raise UserError(
            f"no .tar shards found at {spec}; point SHARDS at a build output or a tar pattern"
        )
    return urls


def read_shard(url: str, done: frozenset[str], rows: int, max_bytes: int) -> Iterator[pa.Table]:
    """Samples of one tar (skipping keys already done), in blocks of <= rows and ~max_bytes.

    Per-sample work is only grouping members: no size estimation per sample, which is what
    makes Ray's generic ``read_webdataset`` slow on media (docs/benchmarks.md).
    """
    fs, path = get_fs(url)
    buf: dict[str, list[Any]] = {n: [] for n in SAMPLE_SCHEMA.names}
    nbytes = 0
    stem = shard_stem(url)
    with fs.open(path, "rb") as f:
        for sample in iter_tar_samples(f, max_member_bytes=1 << 30):
            if not sample.key or sample.key in done:
                continue
            got: dict[str, Any] = {"image": None, "text": None, "audio": None, "meta": None}
            for m in sample.members:
                if m.data is None:
                    continue
                if m.ext in IMAGE_EXTS and got["image"] is None:
                    got["image"] = m.data
                elif m.ext == "txt" and got["text"] is None:
                    got["text"] = m.data.decode("utf-8", "replace")
                elif m.ext in AUDIO_EXTS and got["audio"] is None:
                    got["audio"] = m.data
                elif m.ext == "json" and got["meta"] is None:
                    got["meta"] = m.data.decode("utf-8", "replace")
            buf["key"].append(sample.key)
            buf["shard"].append(stem)
            for k, v in got.items():
                buf[k].append(v)
            nbytes += sum(len(v) for v in got.values() if v)
            if len(buf["key"]) >= rows or nbytes >= max_bytes:
                yield pa.Table.from_pydict(buf, schema=SAMPLE_SCHEMA)
                buf, nbytes = {n: [] for n in SAMPLE_SCHEMA.names}, 0
    if buf["key"]:
        yield pa.Table.from_pydict(buf, schema=SAMPLE_SCHEMA)


def make_shard_datasource(
    urls: list[str], done: dict[str, frozenset[str]], rows: int, max_bytes: int
) -> Any:
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class ShardDatasource(Datasource):
        def estimate_inmemory_data_size(self) -> int | None:
            return None

        def get_name(self) -> str:
            return "mmpipe_shards"

        def get_read_tasks(
            self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
        ) -> list[ReadTask]:
            return [
                ReadTask(
                    functools.partial(
                        read_shard, u, done.get(shard_stem(u), frozenset()), rows, max_bytes
                    ),
                    BlockMetadata(
                        num_rows=None, size_bytes=None, exec_stats=None, input_files=(u,)
                    ),
                    schema=SAMPLE_SCHEMA,
                )
                for u in urls
            ]

    return ShardDatasource()
