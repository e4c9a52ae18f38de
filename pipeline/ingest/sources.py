"""Input detection and planning, and the Ray Data datasource that streams whole chunks."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa

from pipeline.config import BuildConfig
from pipeline.errors import Reason, SampleError, UserError
from pipeline.ingest import readers
from pipeline.ingest.layout import check_layout, rows_per_chunk
from pipeline.ingest.rows import InputRow, ManifestLayout
from pipeline.ingest.scan import WHOLE_FILE, Span, scan_csv, scan_jsonl, scan_parquet, scan_tar
from pipeline.io.fs import expand_inputs, get_fs, list_files
from pipeline.io.tar import split_member_name

MEMBER_TYPE = pa.struct(
    [
        pa.field("name", pa.string()),
        pa.field("ref", pa.string()),
        pa.field("data", pa.large_binary()),
        pa.field("error", pa.string()),
        pa.field("message", pa.string()),
    ]
)
# The block every read task yields: exactly one chunk of consecutive input rows.
CHUNK_SCHEMA = pa.schema(
    [
        pa.field("chunk_id", pa.string()),
        pa.field("chunk_rows", pa.int32()),
        pa.field("source_file", pa.string()),
        pa.field("source_row", pa.int64()),
        pa.field("source_key", pa.string()),
        pa.field("members", pa.list_(MEMBER_TYPE)),
        pa.field("error_reason", pa.string()),
        pa.field("error_message", pa.string()),
    ]
)
# Inline bytes (tars, embedded Parquet) are capped per chunk so that blocks stay small.
MAX_CHUNK_INLINE_BYTES = 128 * 1024 * 1024
_EXT_KINDS = {
    "jsonl": "jsonl",
    "ndjson": "jsonl",
    "json": "jsonl",
    "csv": "csv",
    "parquet": "parquet",
    "pq": "parquet",
    "tar": "tar",
    "tgz": "tar",
    "tar.gz": "tar",
}


@dataclass
class ReadUnit:
    """One chunk, read by one read task: a span of a manifest or tar, or sidecar groups.

    A chunk is never split or merged on its way through Ray Data because it is exactly
    one read task's only output; that is what makes shards deterministic.
    """

    kind: str
    url: str
    file_index: int
    chunk_index: int = 0
    span: Span = WHOLE_FILE
    groups: list[tuple[int, str, list[str]]] = field(default_factory=list)
    # Small tars (and tars' tails) packed into this one chunk, in input order.
    packed: list[ReadUnit] = field(default_factory=list)

    @property
    def chunk_id(self) -> str:
        return f"{self.file_index:06d}-{self.chunk_index:06d}"


@dataclass
class InputPlan:
    kind: str
    units: list[ReadUnit]
    description: str


def _kind_from_name(url: str) -> str | None:
    name = url.rsplit("/", 1)[-1].lower()
    for suffix in ("jsonl.gz", "ndjson.gz", "csv.gz", "tar.gz"):
        if name.endswith("." + suffix):
            return _EXT_KINDS.get(suffix.split(".")[0] if suffix != "tar.gz" else "tar")
    ext = name.rsplit(".", 1)[-1] if "." in name else ""
    return _EXT_KINDS.get(ext)


def plan_input(cfg: BuildConfig) -> InputPlan:
    """Decide what INPUT is and split it into read units, with one listing at most.

    Raises:
        UserError: the input is missing, empty, or of a form we cannot tell.
    """
    url = cfg.input
    if any(c in url for c in "*?[{"):
        files = expand_inputs(url)
        if not files:
            raise UserError(f"input pattern {url} matches no files; check the glob or brace range")
        missing = [f for f in files[:1] + files[-1:] if not get_fs(f)[0].exists(get_fs(f)[1])]
        if missing:
            raise UserError(f"input {missing[0]} (from {url}) does not exist; check the pattern")
        kind = cfg.input_format if cfg.input_format != "auto" else _kind_from_name(files[0])
        if kind is None:
            raise UserError(f"cannot tell the format of {files[0]}; pass --input-format")
        cols = check_layout(files[0], kind, cfg)
        return InputPlan(kind, _chunk_files(kind, files, cfg, rows_per_chunk(cols, cfg)), url)
    fs, path = get_fs(url)
    try:
        is_dir = fs.isdir(path)
        present = is_dir or fs.exists(path)
    except Exception as e:  # credentials, DNS: a user-facing problem, not a traceback
        raise UserError(
            f"cannot reach input {url}: {type(e).__name__}: {e}".splitlines()[0]
        ) from None
    if not present:
        raise UserError(f"input not found: {url}; check the path or URL")
    if is_dir:
        if cfg.input_format not in ("auto", "sidecar"):
            raise UserError(
                f"input {url} is a folder; --input-format {cfg.input_format} needs a file"
            )
        return _plan_sidecar(url, cfg)
    kind = cfg.input_format if cfg.input_format != "auto" else _kind_from_name(url)
    if kind is None or kind == "sidecar":
        raise UserError(
            f"cannot tell the format of {url}; name it .jsonl/.csv/.parquet/.tar "
            "or pass --input-format jsonl|csv|parquet|tar"
        )
    cols = check_layout(url, kind, cfg)
    return InputPlan(kind, _chunk_files(kind, [url], cfg, rows_per_chunk(cols, cfg)), url)


def _chunk_files(kind: str, files: list[str], cfg: BuildConfig, rows: int) -> list[ReadUnit]:
    """Scan each file for chunks of ``rows`` (headers and line ends only, never the media)."""
    max_bytes = min(cfg.shard_bytes, MAX_CHUNK_INLINE_BYTES)
    units: list[ReadUnit] = []
    for i, url in enumerate(files):
        try:
            if kind == "jsonl":
                spans = scan_jsonl(url, rows, MAX_CHUNK_INLINE_BYTES)
            elif kind == "csv":
                spans = scan_csv(url, rows, MAX_CHUNK_INLINE_BYTES)
            elif kind == "parquet":
                spans = scan_parquet(url, rows, max_bytes)
            else:
                spans = scan_tar(url, cfg.shard_samples, max_bytes)
        except FileNotFoundError:
            raise UserError(f"input file {url} does not exist; check the path or pattern") from None
        except (OSError, ValueError, UnicodeError) as e:
            raise UserError(
                f"cannot read input file {url}: {type(e).__name__}: {e}".splitlines()[0]
            ) from None
        units.extend(ReadUnit(kind, url, i, c, span) for c, span in enumerate(spans))
    return _pack(units, cfg.shard_samples, max_bytes) if kind == "tar" else units


def _pack(units: list[ReadUnit], samples: int, max_bytes: int) -> list[ReadUnit]:
    """Consecutive small tar spans become one chunk, so that tar input is re-rolled into
    shards of ``samples``: four tars of 50 give one shard of 200, not four of 50."""
    out: list[ReadUnit] = []
    group: list[ReadUnit] = []
    n = nbytes = 0
    for u in [*units, ReadUnit("end", "", -1)]:
        size = u.span.samples
        if group and (size is None or n + size > samples or nbytes + u.span.nbytes > max_bytes):
            out.append(group[0] if len(group) == 1 else replace(group[0], packed=group))
            group, n, nbytes = [], 0, 0
        if u.kind == "end":
            break
        if size is None:  # unknown length (compressed, HTTP): a chunk of its own
            out.append(u)
            continue
        group.append(u)
        n, nbytes = n + size, nbytes + u.span.nbytes
    return out


def _plan_sidecar(root: str, cfg: BuildConfig) -> InputPlan:
    rels = list_files(root)
    if not rels:
        raise UserError(f"folder {root} holds no files; point INPUT at a folder of sidecar files")
    groups: list[tuple[int, str, list[str]]] = []
    for rel in rels:  # sorted, so a stem's files are adjacent
        stem, _ = split_member_name(rel)
        if groups and groups[-1][1] == stem:
            groups[-1][2].append(rel)
        else:
            groups.append((len(groups), stem, [rel]))
    n = cfg.shard_samples
    units = [
        ReadUnit("sidecar", root, 0, chunk_index=i // n, groups=groups[i : i + n])
        for i in range(0, len(groups), n)
    ]
    return InputPlan("sidecar", units, root)


def iter_unit_rows(unit: ReadUnit, cfg: BuildConfig) -> Iterator[InputRow]:
    if unit.packed:
        return itertools.chain.from_iterable(
            iter_unit_rows(replace(p, packed=[]), cfg) for p in unit.packed
        )
    if unit.kind == "sidecar":
        return readers.sidecar_rows(unit.url, unit.groups)
    sp = unit.span
    if unit.kind == "tar":
        return readers.read_tar(
            unit.url,
            max_member_bytes=cfg.max_file_bytes,
            start=sp.start,
            row_start=sp.row_start,
            count=sp.count,
        )
    layout = ManifestLayout.for_manifest(unit.url, cfg)
    reader = {"jsonl": readers.read_jsonl, "csv": readers.read_csv, "parquet": readers.read_parquet}
    return reader[unit.kind](unit.url, layout, sp.start, sp.row_start, sp.count)


def iter_chunks(unit: ReadUnit, cfg: BuildConfig) -> Iterator[pa.Table]:
    """The unit's rows as one table: one chunk, one block."""
    rows = list(iter_unit_rows(unit, cfg))
    if rows:
        yield chunk_table(rows, unit.chunk_id)


def _encodable(s: str | None) -> bool:
    if s is None:
        return True
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _safe(row: InputRow) -> InputRow:
    """A row whose strings Arrow cannot store (lone surrogates from JSON escapes such as
    "\ud800", or undecodable bytes) becomes a malformed_row reject instead of failing the chunk
    (found by tests/test_fuzz.py)."""
    texts = [row.source_key, row.error_message] + [
        v
        for p in row.members
        for v in (p.get("name"), p.get("ref"))
        if isinstance(v, str) or v is None
    ]
    if all(_encodable(t) for t in texts) and _encodable(row.source_file):
        return row
    bad = InputRow(
        source_file=row.source_file.encode("utf-8", "backslashreplace").decode(),
        source_row=row.source_row,
    )
    bad.fail(
        SampleError(Reason.MALFORMED_ROW, "a value is not valid Unicode (lone surrogate)", "row")
    )
    return bad


def chunk_table(rows: list[InputRow], chunk_id: str) -> pa.Table:
    rows = [_safe(r) for r in rows]
    cols: dict[str, list[Any]] = {
        "chunk_id": [chunk_id] * len(rows),
        "chunk_rows": [len(rows)] * len(rows),
        "source_file": [r.source_file for r in rows],
        "source_row": [r.source_row for r in rows],
        "source_key": [r.source_key for r in rows],
        "members": [r.members for r in rows],
        "error_reason": [r.error_reason for r in rows],
        "error_message": [r.error_message for r in rows],
    }
    return pa.Table.from_pydict(cols, schema=CHUNK_SCHEMA)


def read_unit(unit: ReadUnit, cfg: BuildConfig) -> Iterator[pa.Table]:
    """A unit's rows as whole-chunk tables (what its read task yields)."""
    try:
        yield from iter_chunks(unit, cfg)
    except (OSError, ValueError, UnicodeError) as e:
        # The whole file is unreadable (missing, not UTF-8, bad header): fail the build with
        # a clear message rather than silently dropping an unknown number of rows.
        raise UserError(f"cannot read input file {unit.url}: {type(e).__name__}: {e}") from None


def make_datasource(plan: InputPlan, cfg: BuildConfig) -> Any:
    """A Ray Data datasource with one read task per unit; each task yields whole chunks."""
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class InputDatasource(Datasource):
        def estimate_inmemory_data_size(self) -> int | None:
            return None

        def get_name(self) -> str:
            return f"mmpipe_{plan.kind}"

        def get_read_tasks(
            self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
        ) -> list[ReadTask]:
            return [
                ReadTask(
                    functools.partial(read_unit, unit, cfg),
                    BlockMetadata(
                        num_rows=None,
                        size_bytes=None,
                        exec_stats=None,
                        input_files=tuple(dict.fromkeys(p.url for p in unit.packed or [unit])),
                    ),
                    schema=CHUNK_SCHEMA,
                )
                for unit in plan.units
            ]

    return InputDatasource()
