"""Pre-scans that cut each input file into chunks (byte offset, first row, row count) cheaply."""

from __future__ import annotations

import tarfile
from dataclasses import dataclass, replace

from pipeline.ingest.readers import LineTracker, csv_records, is_blank_line, open_binary
from pipeline.io.fs import get_fs, scheme_of
from pipeline.io.tar import split_member_name

_COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".tgz")


@dataclass(frozen=True)
class Span:
    """Where a chunk starts in its file (bytes, for seekable text and tars) and which rows it holds."""

    start: int
    row_start: int
    count: int | None  # None: to the end of the file (compressed inputs cannot be split)
    samples: int | None = None  # how many it holds, where known (a tar's last span reads to EOF)
    nbytes: int = 0  # member bytes, where known


WHOLE_FILE = Span(0, 0, None)


def _whole(url: str) -> list[Span] | None:
    """Files that cannot be seeked are read as one chunk: compressed ones, and HTTP sources
    (servers need not honour Range requests)."""
    if url.lower().endswith(_COMPRESSED) or scheme_of(url) in ("http", "https"):
        return [Span(0, 0, None)]
    return None


def _spans(starts: list[tuple[int, int]], total: int) -> list[Span]:
    bounds = [r for _, r in starts[1:]] + [total]
    return [Span(b, r, end - r) for (b, r), end in zip(starts, bounds)]


def _new_chunk(starts: list[tuple[int, int]], pos: int, rows: int, per: int, cap: int) -> bool:
    """Whether the row at byte ``pos`` starts a chunk: the first row, or the last chunk holds
    ``per`` rows or ``cap`` bytes of lines already."""
    return not starts or rows - starts[-1][1] >= per or pos - starts[-1][0] >= cap


def scan_jsonl(url: str, rows_per_chunk: int, max_bytes: int) -> list[Span]:
    """One pass over the raw lines (no JSON parsing) recording where every chunk starts: after
    ``rows_per_chunk`` rows, or sooner once a chunk's lines pass ``max_bytes``."""
    if whole := _whole(url):
        return whole
    starts: list[tuple[int, int]] = []
    rows = pos = 0
    with open_binary(url) as f:
        for line in f:
            if not is_blank_line(line):
                if _new_chunk(starts, pos, rows, rows_per_chunk, max_bytes):
                    starts.append((pos, rows))
                rows += 1
            pos += len(line)
    return _spans(starts, rows)


def scan_csv(url: str, rows_per_chunk: int, max_bytes: int) -> list[Span]:
    """Parse records (quoted newlines included) but keep nothing but chunk starts (as
    ``scan_jsonl`` cuts them)."""
    if whole := _whole(url):
        return whole
    starts: list[tuple[int, int]] = []
    rows = 0
    with open_binary(url) as f:
        records = csv_records(LineTracker(f))
        next(records, None)  # the header
        for pos, _ in records:
            if _new_chunk(starts, pos, rows, rows_per_chunk, max_bytes):
                starts.append((pos, rows))
            rows += 1
    return _spans(starts, rows)


def scan_parquet(url: str, rows_per_chunk: int, max_bytes: int) -> list[Span]:
    """Row ranges from the footer alone; embedded media shrinks the chunk to bound its bytes."""
    import pyarrow.parquet as pq

    fs, path = get_fs(url)
    with fs.open(path, "rb") as f:
        meta = pq.ParquetFile(f).metadata
    total = meta.num_rows
    if total == 0:
        return []
    nbytes = sum(meta.row_group(g).total_byte_size for g in range(meta.num_row_groups))
    per = max(1, min(rows_per_chunk, int(max_bytes / max(1.0, nbytes / total))))
    return [Span(0, r, min(per, total - r)) for r in range(0, total, per)]


def scan_tar(url: str, samples_per_chunk: int, max_bytes: int) -> list[Span]:
    """Read tar headers only (seeking over data) to find where every chunk's first sample starts.

    Samples are grouped exactly as the reader groups them. A tar that breaks mid-scan ends
    the scan: the last chunk runs to the end and its reader reports the damage as a reject.
    Compressed tars and HTTP sources are read whole, as one chunk (rolled into shards inside).
    """
    if whole := _whole(url):
        return whole
    starts: list[tuple[int, int]] = []
    sizes: list[int] = []  # member bytes per chunk
    samples = nbytes = 0
    key: str | None = None
    exts: set[str] = set()
    fs, path = get_fs(url)
    with fs.open(path, "rb") as f:
        try:
            with tarfile.open(fileobj=f, mode="r:") as tf:
                for info in tf:
                    tf.members = []  # type: ignore[attr-defined]  # keep memory flat on tars with millions of members
                    if info.isdir():
                        continue
                    k, ext = split_member_name(info.name)
                    if k != key or ext in exts:
                        if (
                            not starts
                            or samples - starts[-1][1] >= samples_per_chunk
                            or nbytes >= max_bytes
                        ):
                            starts.append((info.offset, samples))
                            sizes.append(0)
                            nbytes = 0
                        samples += 1
                        key, exts = k, set()
                    exts.add(ext)
                    nbytes += info.size if info.isreg() else 0
                    sizes[-1] += info.size if info.isreg() else 0
        except (tarfile.TarError, OSError, EOFError, ValueError):
            pass
    if not starts:
        return [Span(0, 0, None)]
    spans = [replace(s, samples=s.count, nbytes=b) for s, b in zip(_spans(starts, samples), sizes)]
    # The last chunk reads to the end, so a truncated tail is seen (and rejected) by its reader.
    return [*spans[:-1], replace(spans[-1], count=None)]
