"""Streaming readers for each input form; each yields InputRows in input order."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Any

from pipeline.errors import Reason, SampleError
from pipeline.ingest.rows import InputRow, ManifestLayout, part_name_for_ext, row_from_record
from pipeline.io.fs import get_fs, join
from pipeline.io.tar import iter_tar_samples

# Captions of megabytes must reach the text validator (which rejects them with a reason)
# instead of breaking the CSV parser for the rest of the file.
csv.field_size_limit(256 * 1024 * 1024)


def _open_text(url: str) -> io.TextIOBase:
    import fsspec

    # newline="" keeps CSV quoted newlines intact; errors are caught per row below.
    return fsspec.open(url, "rt", encoding="utf-8", errors="surrogateescape", newline="", compression="infer").open()


def read_jsonl(url: str, layout: ManifestLayout) -> Iterator[InputRow]:
    """One row per non-blank line; a line that is not a JSON object is a ``malformed_row``."""
    row_idx = 0
    with _open_text(url) as f:
        for line in f:
            if not line.strip():
                continue
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


def read_csv(url: str, layout: ManifestLayout) -> Iterator[InputRow]:
    """A header row, then one row per record; wrong field counts or broken quoting are rejected."""
    with _open_text(url) as f:
        reader = csv.reader(f, strict=True)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise ValueError(f"CSV header of {url} cannot be parsed: {e}") from None
        row_idx = 0
        while True:
            try:
                values = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                row = InputRow(source_file=url, source_row=row_idx)
                row.fail(SampleError(Reason.MALFORMED_ROW, f"CSV parse error: {e}", "row"))
                yield row
                row_idx += 1
                continue
            if not values:
                continue
            if len(values) != len(header):
                row = InputRow(source_file=url, source_row=row_idx)
                msg = f"CSV row has {len(values)} fields, header has {len(header)}"
                row.fail(SampleError(Reason.MALFORMED_ROW, msg, "row"))
                yield row
            else:
                record: dict[str, Any] = {h: (v if v != "" else None) for h, v in zip(header, values)}
                yield row_from_record(record, layout, url, row_idx)
            row_idx += 1


def read_parquet(url: str, layout: ManifestLayout, batch_rows: int = 1024) -> Iterator[InputRow]:
    """Stream record batches; cells of the wrong type are rejected per row."""
    import pyarrow.parquet as pq

    fs, path = get_fs(url)
    with fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        row_idx = 0
        for batch in pf.iter_batches(batch_size=batch_rows):
            for record in batch.to_pylist():
                yield row_from_record(record, layout, url, row_idx)
                row_idx += 1


def read_tar(url: str, *, max_member_bytes: int) -> Iterator[InputRow]:
    """Re-validate an existing WebDataset tar: one row per sample (contiguous members of a key)."""
    fs, path = get_fs(url)
    with fs.open(path, "rb") as f:
        for idx, sample in enumerate(iter_tar_samples(f, max_member_bytes=max_member_bytes)):
            row = InputRow(source_file=url, source_row=idx, source_key=sample.key or None)
            if sample.error:
                row.fail(SampleError(Reason(sample.error), sample.message, "row"))
            seen: set[str] = set()
            for m in sample.members:
                name = _role(m.ext, seen)
                if m.error:
                    row.parts.append({"name": name, "ref": None, "data": None, "error": m.error, "message": m.message})
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
