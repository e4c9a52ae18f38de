"""Streaming readers for each input form; each reads one chunk (offset + count) in input order."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from typing import IO, Any

from pipeline.errors import Reason, SampleError
from pipeline.ingest.rows import InputRow, ManifestLayout, row_from_record
from pipeline.io.fs import get_fs, join
from pipeline.io.tar import iter_tar_samples, part_name_for_ext

# Captions of megabytes must reach the text validator (which rejects them with a reason)
# instead of breaking the CSV parser for the rest of the file.
csv.field_size_limit(256 * 1024 * 1024)


def open_binary(url: str) -> IO[bytes]:
    """Open for reading; compressed manifests are decompressed (and cannot be seeked)."""
    import fsspec

    return fsspec.open(url, "rb", compression="infer").open()


class LineTracker:
    """Iterate decoded lines of a binary file while counting the bytes consumed.

    The csv module pulls exactly one line at a time, so ``pos`` before a record is the
    byte offset where that record starts: the planner records it as a chunk start.
    """

    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.pos = f.tell() if f.seekable() else 0

    def __iter__(self) -> Iterator[str]:
        for line in self.f:
            self.pos += len(line)
            yield line.decode("utf-8", "surrogateescape")


def is_blank_line(raw: bytes) -> bool:
    """A JSONL line that is not a record: nothing but whitespace, as ``str.strip`` sees it.

    The pre-scan and the reader both ask this, so a chunk's row count never disagrees with
    what its read task yields (found by the fuzz suite: a line holding only U+001F).
    """
    stripped = raw.strip()
    return not stripped or not stripped.decode("utf-8", "surrogateescape").strip()


def read_jsonl(
    url: str, layout: ManifestLayout, start: int = 0, row_start: int = 0, count: int | None = None
) -> Iterator[InputRow]:
    """One row per non-blank line; a line that is not a JSON object is a ``malformed_row``."""
    import json

    row_idx, end = row_start, None if count is None else row_start + count
    with open_binary(url) as f:
        if start:
            f.seek(start)
        for raw in f:
            if end is not None and row_idx >= end:
                break
            if is_blank_line(raw):
                continue
            line = raw.decode("utf-8", "surrogateescape")
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError(f"expected a JSON object, got {type(record).__name__}")
                yield row_from_record(record, layout, url, row_idx)
            except (ValueError, RecursionError) as e:
                row = InputRow(source_file=url, source_row=row_idx)
                row.fail(SampleError(Reason.MALFORMED_ROW, f"bad JSON line: {e}"[:300], "row"))
                yield row
            row_idx += 1


def csv_records(tracker: LineTracker) -> Iterator[tuple[int, list[str] | csv.Error]]:
    """``(start byte, fields or the parse error)`` per record; blank lines are not records."""
    reader = csv.reader(tracker, strict=True)
    while True:
        pos = tracker.pos
        try:
            values: list[str] | csv.Error = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            values = e
        if values == []:
            continue
        yield pos, values


def read_csv(
    url: str, layout: ManifestLayout, start: int = 0, row_start: int = 0, count: int | None = None
) -> Iterator[InputRow]:
    """A header row, then one row per record; wrong field counts or broken quoting are rejected."""
    with open_binary(url) as f:
        header_rec = next(csv_records(LineTracker(f)), None)
        if header_rec is None:
            return
        header = header_rec[1]
        if isinstance(header, csv.Error):
            raise ValueError(f"CSV header cannot be parsed: {header}")
        if start:
            f.seek(start)
        records = csv_records(LineTracker(f))
        if not start:
            next(records, None)  # the header
        row_idx = row_start
        for _, values in records:
            if count is not None and row_idx >= row_start + count:
                break
            if isinstance(values, csv.Error) or len(values) != len(header):
                if isinstance(values, csv.Error):
                    msg = f"CSV parse error: {values}"
                else:
                    msg = f"CSV row has {len(values)} fields, header has {len(header)}"
                row = InputRow(source_file=url, source_row=row_idx)
                row.fail(SampleError(Reason.MALFORMED_ROW, msg, "row"))
                yield row
            else:
                record: dict[str, Any] = {
                    h: (v if v != "" else None) for h, v in zip(header, values)
                }
                yield row_from_record(record, layout, url, row_idx)
            row_idx += 1


def read_parquet(
    url: str, layout: ManifestLayout, start: int = 0, row_start: int = 0, count: int | None = None
) -> Iterator[InputRow]:
    """Rows ``[row_start, row_start + count)``, read from the row groups that hold them."""
    import pyarrow.parquet as pq

    fs, path = get_fs(url)
    end = None if count is None else row_start + count
    with fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        groups, first, pos = [], None, 0
        for g in range(pf.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if pos + n > row_start and (end is None or pos < end):
                groups.append(g)
                first = pos if first is None else first
            pos += n
        row_idx = first or 0
        for batch in pf.iter_batches(batch_size=1024, row_groups=groups):
            for record in batch.to_pylist():
                if row_idx >= row_start and (end is None or row_idx < end):
                    yield row_from_record(record, layout, url, row_idx)
                row_idx += 1


def read_tar(
    url: str, *, max_member_bytes: int, start: int = 0, row_start: int = 0, count: int | None = None
) -> Iterator[InputRow]:
    """Re-validate an existing WebDataset tar: one row per sample (contiguous members of a key)."""
    fs, path = get_fs(url)
    with fs.open(path, "rb") as f:
        if start:
            f.seek(start)
        samples = iter_tar_samples(f, max_member_bytes=max_member_bytes)
        for idx, sample in enumerate(samples, start=row_start):
            if count is not None and idx >= row_start + count:
                break
            row = InputRow(source_file=url, source_row=idx, source_key=sample.key or None)
            if sample.error:
                row.fail(SampleError(Reason(sample.error), sample.message, "row"))
            seen: set[str] = set()
            for m in sample.members:
                name = _role(m.ext, seen)
                if m.error:
                    row.members.append(
                        {
                            "name": name,
                            "ref": None,
                            "data": None,
                            "error": m.error,
                            "message": m.message,
                        }
                    )
                else:
                    row.add(name, data=m.data)
            yield row


def sidecar_rows(root: str, groups: list[tuple[int, str, list[str]]]) -> Iterator[InputRow]:
    """Rows for sidecar groups ``(index, stem, [relative files])``; files are fetched later."""
    from pipeline.io.tar import split_member_name

    for idx, stem, rels in groups:
        row = InputRow(source_file=root, source_row=idx, source_key=stem)
        seen: set[str] = set()
        for rel in rels:
            _, ext = split_member_name(rel)
            row.add(_role(ext, seen), ref=join(root, rel))
        yield row


def _role(ext: str, seen: set[str]) -> str:
    """A second image (or audio, text) of one sample is kept as an extra member, not dropped."""
    name = part_name_for_ext(ext)
    if name in seen and not name.startswith("extra:"):
        return "extra:" + ext
    seen.add(name)
    return name
