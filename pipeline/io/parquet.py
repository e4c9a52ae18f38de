"""Parquet sinks that cast to a schema from schemas/ and commit atomically; streaming readers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.io.fs import atomic_open, get_fs
from schemas import with_schema_metadata


def to_table(rows: list[dict[str, Any]] | dict[str, list[Any]], schema: pa.Schema) -> pa.Table:
    """Build a table with exactly ``schema``'s columns and types (extra keys are an error)."""
    if isinstance(rows, dict):
        return pa.Table.from_pydict({f.name: rows[f.name] for f in schema}, schema=schema)
    return pa.Table.from_pylist(rows, schema=schema)


class ParquetSink:
    """Stream tables into one Parquet file that becomes visible only on ``close()``."""

    ROW_GROUP_ROWS = 1 << 20  # pyarrow's default, stated: write() says which groups it made

    def __init__(
        self, url: str, schema: pa.Schema, name: str, *, durable: bool = True, **writer_kwargs: Any
    ) -> None:
        self.schema = with_schema_metadata(schema, name)
        self._cm = atomic_open(url, "wb", durable=durable)
        self._f = self._cm.__enter__()
        self._writer = pq.ParquetWriter(self._f, self.schema, compression="zstd", **writer_kwargs)
        self.rows = self.row_groups = 0

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
        self._writer.close()
        self._cm.__exit__(None, None, None)

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()
        with contextlib.suppress(Exception):
            self._cm.__exit__(RuntimeError, RuntimeError("aborted"), None)


@contextlib.contextmanager
def parquet_sink(
    url: str, schema: pa.Schema, name: str, *, durable: bool = True
) -> Iterator[ParquetSink]:
    sink = ParquetSink(url, schema, name, durable=durable)
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
