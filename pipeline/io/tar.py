"""Deterministic WebDataset tar writing, and a safe streaming reader of untrusted tars."""

from __future__ import annotations

import io
import posixpath
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

from pipeline.errors import Reason

BLOCK = 512
RECORD = 20 * BLOCK
# A fixed mtime (2000-01-01) rather than 0: some extractors warn on the epoch.
FIXED_MTIME = 946684800
# Which role a member plays, from its extension (webdataset's convention).
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
AUDIO_EXTS = ("flac", "wav", "mp3", "ogg", "opus", "oga")
TEXT_EXTS = ("txt", "text", "caption")
JSON_EXTS = ("json",)


def part_name_for_ext(ext: str) -> str:
    """Which role a sidecar file or tar member plays, from its extension."""
    ext = ext.lower()
    if ext in IMAGE_EXTS:
        return "image"
    if ext in AUDIO_EXTS:
        return "audio"
    if ext in TEXT_EXTS:
        return "text"
    if ext in JSON_EXTS:
        return "json"
    return "extra:" + ext


# Below this size a member's header, body and padding go out in one write.
SMALL = 64 << 10
_ZEROS = bytes(BLOCK)


def _tarinfo_header(name: str, size: int) -> bytes:
    """tarfile's header for one of our members: PAX adds an extended header only for names
    that ustar cannot hold (long, non-ASCII)."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = FIXED_MTIME
    info.mode = 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


# Everything of a plain ustar header but its name, size and checksum is the same for every
# member (fixed mtime, mode, owner): building it from bytes costs ~1 us, where tarfile's
# TarInfo.tobuf costs ~40 (a third of a text row's CPU, profiled). tests/test_tar.py holds
# the two to the same bytes.
_TEMPLATE = _tarinfo_header("", 0)
_CHKSUM_BASE = sum(_TEMPLATE[:148]) + 8 * ord(" ") + sum(_TEMPLATE[156:]) - sum(b"%011o\0" % 0)
MAX_USTAR_SIZE = 8**11  # 11 octal digits; larger sizes need a PAX record


def member_header(name: str, size: int) -> bytes:
    """The header block(s) of one member, byte for byte what tarfile writes for it."""
    if name.isascii() and len(name) <= 100 and size < MAX_USTAR_SIZE:
        raw = name.encode("ascii")
        sz = b"%011o\0" % size
        chksum = _CHKSUM_BASE + sum(raw) + sum(sz)
        return b"".join(
            (raw, _ZEROS[: 100 - len(raw)], _TEMPLATE[100:124], sz, _TEMPLATE[136:148],
             b"%06o\0 " % chksum, _TEMPLATE[156:])
        )  # fmt: skip
    return _tarinfo_header(name, size)


class TarShardWriter:
    """Write tar members with fixed headers (mtime, owner, mode) and report data offsets.

    Headers are written by hand so that the same members give byte-identical tars and so
    that each member's data offset is known for random access from the index.
    """

    def __init__(self, fileobj: IO[bytes]) -> None:
        self.f = fileobj
        self.offset = 0
        self.closed = False

    def add(self, name: str, data: bytes) -> tuple[int, int]:
        """Append one regular file; return ``(data_offset, size)``."""
        header = member_header(name, len(data))
        data_offset = self.offset + len(header)
        pad = (-len(data)) % BLOCK
        if len(data) < SMALL:  # one write: small members are most of a text build's rows
            self.f.write(b"".join((header, data, _ZEROS[:pad])))
        else:  # a large body is written as it is, not copied into a joined buffer
            self.f.write(header)
            self.f.write(data)
            self.f.write(_ZEROS[:pad])
        self.offset = data_offset + len(data) + pad
        return data_offset, len(data)

    def close(self) -> None:
        if self.closed:
            return
        end = self.offset + 2 * BLOCK
        self.f.write(b"\0" * (2 * BLOCK + (-end) % RECORD))
        self.offset = end + (-end) % RECORD
        self.closed = True


def split_member_name(name: str) -> tuple[str, str]:
    """WebDataset's convention: the key is the path up to the first dot of the basename."""
    dname, bname = posixpath.split(name)
    if "." in bname:
        stem, ext = bname.split(".", 1)
    else:
        stem, ext = bname, ""
    return (posixpath.join(dname, stem) if dname else stem), ext.lower()


@dataclass
class TarMember:
    ext: str
    data: bytes | None = None
    error: str | None = None  # reason code when the member was refused unread
    message: str = ""


@dataclass
class TarSample:
    key: str
    members: list[TarMember] = field(default_factory=list)
    error: str | None = None
    message: str = ""


def iter_tar_samples(fileobj: IO[bytes], *, max_member_bytes: int) -> Iterator[TarSample]:
    """Stream samples (members grouped by key, contiguously) from an untrusted tar.

    Nothing is extracted to disk. Links, devices and other non-regular members are
    reported (``unsafe_member``) rather than followed; members declaring more than
    ``max_member_bytes`` are skipped unread (``too_large``). A repeated extension within
    a key starts a new sample, which dedup later rejects as ``duplicate_key``. A tar that
    ends early yields one final sample with ``error='decode_error'`` so the loss is counted.
    """
    current: TarSample | None = None
    counter = _CountingReader(fileobj)
    try:
        with tarfile.open(fileobj=counter, mode="r|*") as tf:  # type: ignore[call-overload]
            for info in tf:
                if info.isdir():
                    continue
                key, ext = split_member_name(info.name)
                if (
                    current is None
                    or current.key != key
                    or any(m.ext == ext for m in current.members)
                ):
                    if current is not None:
                        yield current
                    current = TarSample(key=key)
                if not info.isreg():
                    kind = "symlink" if info.issym() else "hardlink" if info.islnk() else "special"
                    current.members.append(
                        TarMember(
                            ext,
                            error=Reason.UNSAFE_MEMBER.value,
                            message=f"{kind} member {info.name!r}",
                        )
                    )
                elif info.size > max_member_bytes:
                    current.members.append(
                        TarMember(
                            ext,
                            error=Reason.TOO_LARGE.value,
                            message=f"member {info.name!r} declares {info.size} bytes",
                        )
                    )
                else:
                    fh = tf.extractfile(info)
                    data = fh.read() if fh is not None else b""
                    if len(data) != info.size:
                        raise tarfile.ReadError(f"member {info.name!r} is truncated")
                    current.members.append(TarMember(ext, data=data))
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        # The sample being read when the tar broke may be incomplete: reject it (or, when
        # the break came before any member, record one reject) so the loss is counted.
        if current is None:
            current = TarSample(key="")
        current.error = Reason.DECODE_ERROR.value
        current.message = f"tar ends early or is corrupt: {e}"
    else:
        # tarfile ends quietly when a header is cut short; an uncompressed tar is always a
        # whole number of 512-byte blocks, so a remainder means the file was truncated.
        if not counter.compressed and counter.total % BLOCK:
            if current is not None:
                yield current
            current = TarSample(
                key="", error=Reason.DECODE_ERROR.value, message="tar is truncated inside a header"
            )
    if current is not None:
        yield current


class _CountingReader:
    """Counts the bytes tarfile pulls from the source, to spot truncation it hides."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.total = 0
        self.compressed: bool | None = None

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        if self.compressed is None and data:
            self.compressed = data[:2] in (b"\x1f\x8b", b"BZ") or data[:6] == b"\xfd7zXZ\x00"
        self.total += len(data)
        return data


def read_member(fileobj: IO[bytes], offset: int, size: int) -> bytes:
    fileobj.seek(offset)
    return fileobj.read(size)


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    """Build a deterministic tar in memory (tests, small fixtures)."""
    buf = io.BytesIO()
    w = TarShardWriter(buf)
    for name, data in members:
        w.add(name, data)
    w.close()
    return buf.getvalue()
