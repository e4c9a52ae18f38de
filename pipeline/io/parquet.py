"""Parquet sinks that cast to a schema from schemas/ and commit atomically; streaming readers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.io.fs import atomic_open, get_fs, join
from schemas import with_schema_metadata


def to_table(rows: list[dict[str, Any]] | dict[str, list[Any]], schema: pa.Schema) -> pa.Table:
    """Build a table with exactly ``schema``'s columns and types (extra keys are an error)."""
    if isinstance(rows, dict):
        return pa.Table.from_pydict({f.name: rows[f.name] for f in schema}, schema=schema)
    return pa.Table.from_pylist(rows, schema=schema)


class ParquetSink:
    """Stream tables into one Parquet file that becomes visible only on ``close()``."""

    ROW_GROUP_ROWS = 1 << 20  # pyarrow's default, stated: write() says which groups it made
    BUFFER_ROWS = 1 << 14  # append()'s row groups: ~2 KB of footer each, a few MB held

    def __init__(
        self, url: str, schema: pa.Schema, name: str, *, durable: bool = True, **writer_kwargs: Any
    ) -> None:
        self.schema = with_schema_metadata(schema, name)
        self._cm = atomic_open(url, "wb", durable=durable)
        self._f = self._cm.__enter__()
        self._writer = pq.ParquetWriter(self._f, self.schema, compression="zstd", **writer_kwargs)
        self.rows = self.row_groups = 0
        self._held: list[pa.Table] = []
        self._held_rows = 0

    def append(self, table: pa.Table) -> None:
        """Append ``table`` through a buffer written as one row group once it holds
        ``BUFFER_ROWS`` rows: the footer, which the writer holds until ``close()``, grows by
        a group per ``BUFFER_ROWS`` rows instead of one per call."""
        if table.num_rows:
            self._held.append(table.select(self.schema.names).cast(self.schema))
            self._held_rows += table.num_rows
        if self._held_rows >= self.BUFFER_ROWS:
            self._flush()

    def _flush(self) -> None:
        if self._held_rows:
            self.write(pa.concat_tables(self._held))
        self._held, self._held_rows = [], 0

    def write(self, table: pa.Table) -> list[int]:
        """Append ``table``; returns the numbers of the row groups that hold its rows."""
        if not table.num_rows:
            return []
        t = table.select(self.schema.names).cast(self.schema)
        self._writer.write_table(t, row_group_size=self.ROW_GROUP_ROWS)
        self.rows += t.num_rows
        first, self.row_groups = (
            self.row_groups,
            self.row_groups + -(-t.num_rows // self.ROW_GROUP_ROWS),
        )
        return list(range(first, self.row_groups))

    def close(self) -> None:
        self._flush()
        self._writer.close()
        self._cm.__exit__(None, None, None)

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()
        with contextlib.suppress(Exception):
            self._cm.__exit__(RuntimeError, RuntimeError("aborted"), None)


def parquet_sink(
    url: str, schema: pa.Schema, name: str, *, durable: bool = True
) -> contextlib.AbstractContextManager[ParquetSink]:
    return _committed(ParquetSink(url, schema, name, durable=durable))


class PartedSink:
    """Stream tables into numbered Parquet files under a folder (``part-00000.parquet``, ...),
    each atomic; a new file starts once one holds ``max_row_groups`` row groups or
    ``max_rows`` rows, so no writer's footer grows past those bounds with the corpus."""

    def __init__(
        self,
        url: str,
        schema: pa.Schema,
        name: str,
        *,
        max_row_groups: int,
        max_rows: int,
    ) -> None:
        self.url, self.schema, self.name = url, schema, name
        self.max_row_groups, self.max_rows = max_row_groups, max_rows
        self.files = 0
        self._sink: ParquetSink | None = None

    def write(self, table: pa.Table) -> tuple[str, list[int]]:
        """Append ``table`` to one file (never split across two); returns that file's name,
        relative to the folder, and the numbers of its row groups that hold the rows."""
        s = self._sink
        if s is None or s.row_groups >= self.max_row_groups or s.rows >= self.max_rows:
            if s is not None:
                s.close()
            self._sink = s = ParquetSink(
                join(self.url, part_name(self.files)), self.schema, self.name
            )
            self.files += 1
        return part_name(self.files - 1), s.write(table)

    def close(self) -> None:
        """Close the last file; a folder that got no rows still gets one (empty) file, so
        that every reader of the folder finds the schema."""
        if self._sink is None:
            self.write(self.schema.empty_table())
        assert self._sink is not None
        self._sink.close()

    def abort(self) -> None:
        if self._sink is not None:
            self._sink.abort()


def part_name(n: int) -> str:
    return f"part-{n:05d}.parquet"


def parted_sink(
    url: str, schema: pa.Schema, name: str, *, max_row_groups: int, max_rows: int
) -> contextlib.AbstractContextManager[PartedSink]:
    return _committed(
        PartedSink(url, schema, name, max_row_groups=max_row_groups, max_rows=max_rows)
    )


_Sink = TypeVar("_Sink", ParquetSink, PartedSink)


@contextlib.contextmanager
def _committed(sink: _Sink) -> Iterator[_Sink]:
    """``sink`` for a with-block: closed (its files committed) after it, aborted if it raises."""
    try:
        yield sink
    except BaseException:
        sink.abort()
        raise
    sink.close()


def write_table(
    url: str, table: pa.Table, schema: pa.Schema, name: str, *, durable: bool = True
) -> None:
    """``table`` as one Parquet file at ``url``, atomically; see ``atomic_open``'s durable."""
    with parquet_sink(url, schema, name, durable=durable) as sink:
        sink.write(table)


def read_table(url: str, columns: list[str] | None = None) -> pa.Table:
    fs, path = get_fs(url)
    with fs.open(path, "rb") as f:
        return pq.read_table(f, columns=columns)


def iter_tables(
    files: list[str], columns: list[str] | None = None, rows: int = 4096
) -> Iterator[pa.Table]:
    """Stream record batches of the Parquet files: memory stays bounded by ``rows``."""
    for url in files:
        fs, path = get_fs(url)
        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            cols = [c for c in columns if c in pf.schema_arrow.names] if columns else None
            for rb in pf.iter_batches(batch_size=rows, columns=cols):
                yield pa.Table.from_batches([rb])


def iter_row_groups(
    url: str, columns: list[str], groups: list[int] | None = None
) -> Iterator[tuple[int, pa.Table]]:
    """(row group number, its table) of one file (every group, or ``groups``), one at a time."""
    fs, path = get_fs(url)
    with fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        for rg in range(pf.num_row_groups) if groups is None else groups:
            yield rg, pf.read_row_group(rg, columns=columns)


def fsl_to_numpy(col: Any, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed_size_list<float>[dim] column -> ([N, dim] float32 with nulls zeroed, valid)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    n = len(arr)
    valid = ~np.asarray(arr.is_null(), dtype=bool)
    # to_numpy, not np.asarray: float16 stores come back as float16 and are widened here.
    values = arr.values.to_numpy(zero_copy_only=False)[arr.offset * dim : (arr.offset + n) * dim]
    x = values.astype(np.float32, copy=True).reshape(n, dim)
    x[~valid] = 0.0  # a null slot's child values are undefined: never let them reach the model
    return x, valid
