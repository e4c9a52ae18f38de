"""Filtered copies of our own tars: a sample's members copied as the bytes they fill."""

from __future__ import annotations

import io
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.io.tar import BLOCK, MAX_USTAR_SIZE, TarShardWriter, member_header, read_member


def _span(members: list[dict[str, Any]]) -> tuple[int, int] | None:
    """The byte range a row's members fill in a tar our writer wrote (headers, bodies and
    padding, back to back), or None where they do not lie that way."""
    if not members:
        return None
    start = end = members[0]["offset"] - len(member_header(members[0]["name"], members[0]["size"]))
    for m in members:
        if m["offset"] - len(member_header(m["name"], m["size"])) != end:
            return None
        end = m["offset"] + m["size"] + (-m["size"]) % BLOCK
    return start, end


def _copy_range(src: IO[bytes], dst: IO[bytes], start: int, end: int) -> None:
    if _local_copy(src, dst, start, end):
        return
    src.seek(start)
    left = end - start
    while left:
        buf = src.read(min(left, COPY_BUFFER))
        if not buf:
            raise ValueError(f"tar ends at {end - left}, before byte {end} of a sample")
        dst.write(buf)
        left -= len(buf)


COPY_BUFFER = 1 << 20


class _Runs:
    """Byte ranges of ``src`` appended to ``dst`` in order, adjacent ones in one copy."""

    def __init__(self, src: IO[bytes], dst: IO[bytes]) -> None:
        self.src, self.dst = src, dst
        self.run: list[int] = []  # [start, end] in src of bytes not yet copied

    def add(self, start: int, end: int) -> None:
        if self.run and self.run[1] == start:
            self.run[1] = end
            return
        self.flush()
        self.run = [start, end]

    def flush(self) -> None:
        if self.run:
            _copy_range(self.src, self.dst, *self.run)
            self.run = []


def _local_copy(src: IO[bytes], dst: IO[bytes], start: int, end: int) -> bool:
    """Copy in the kernel between two local files (no trip through Python's buffers);
    False where either is not a plain local file."""
    import os

    if not hasattr(os, "copy_file_range"):
        return False
    try:
        fin, fout = src.fileno(), dst.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        return False
    dst.flush()  # what the writer buffered goes first
    pos, left = start, end - start
    while left:
        n = os.copy_file_range(fin, fout, left, pos)
        if n == 0:
            raise ValueError(f"tar ends at {pos}, before byte {end} of a sample")
        pos, left = pos + n, left - n
    return True


def padded(sizes: np.ndarray) -> np.ndarray:
    """Bytes each member's body fills, with its padding to the block."""
    return sizes + (-sizes) % BLOCK


def header_lengths(names: pa.Array, sizes: np.ndarray) -> np.ndarray:
    """Bytes of each member's header(s) as our writer writes them: one block for a name
    ustar holds, more where PAX records it (rare, so those go one at a time)."""
    plain = pc.and_(pc.string_is_ascii(names), pc.less_equal(pc.binary_length(names), 100))
    fast = plain.to_numpy(zero_copy_only=False) & (sizes < MAX_USTAR_SIZE)
    out = np.full(len(sizes), BLOCK, np.int64)
    for i in np.flatnonzero(~fast).tolist():
        out[i] = len(member_header(names[i].as_py(), int(sizes[i])))
    return out


def copy_ranges(src: str, dst: str, ranges: list[tuple[int, int]]) -> None:
    """A new tar at ``dst`` (atomically) of the byte ranges of ``src`` that hold whole
    members, in order, adjacent ones in one copy: a filtered copy of one of our tars."""
    from pipeline.io.fs import atomic_open, get_fs

    fs, path = get_fs(src)
    with fs.open(path, "rb") as f, atomic_open(dst) as out:
        w = TarShardWriter(out)
        runs = _Runs(f, out)
        for start, end in ranges:
            runs.add(start, end)
        runs.flush()
        w.offset = sum(end - start for start, end in ranges)
        w.close()


def copy_samples(src: str, dst: str, rows: list[dict[str, Any]]) -> None:
    """Write the members of ``rows`` (index rows: their ``members`` name, offset and size in
    ``src``) into a new tar at ``dst``, in order, atomically; each row's ``members`` is
    updated to its offsets in ``dst``. A filtered copy of a shard, byte-deterministic.

    Our writer's headers depend only on a member's name and size, so a row's members are
    copied as the bytes they fill, runs of adjacent rows in one copy: the same bytes as
    writing each member again, at a fraction of the CPU (a build whose tars each lost a
    duplicate rewrote every tar member by member)."""
    from pipeline.io.fs import atomic_open, get_fs

    fs, path = get_fs(src)
    with fs.open(path, "rb") as f, atomic_open(dst) as out:
        w = TarShardWriter(out)
        runs = _Runs(f, out)
        pos = 0  # where the next row lands in dst
        for row in rows:
            span = _span(row["members"])
            if span is None:  # not laid out as our writer lays members: one at a time
                runs.flush()
                w.offset = pos
                row["members"] = [
                    {"name": m["name"], "offset": o, "size": s}
                    for m in row["members"]
                    for o, s in [w.add(m["name"], read_member(f, m["offset"], m["size"]))]
                ]
                pos = w.offset
                continue
            start, end = span
            runs.add(start, end)
            shift = pos - start
            row["members"] = [
                {"name": m["name"], "offset": m["offset"] + shift, "size": m["size"]}
                for m in row["members"]
            ]
            pos += end - start
        runs.flush()
        w.offset = pos
        w.close()
