"""Test media built in code: real images, audio and tars of every awkward kind (no shipped files)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def jpeg(
    w: int = 64,
    h: int = 48,
    color: tuple[int, int, int] = (200, 30, 30),
    exif_orientation: int | None = None,
    mode: str = "RGB",
) -> bytes:
    rng = np.random.default_rng(w * 31 + h)
    arr = np.clip(np.array(color)[None, None, :] + rng.normal(0, 10, (h, w, 3)), 0, 255).astype(
        np.uint8
    )
    im = Image.fromarray(arr, "RGB")
    if mode != "RGB":
        im = im.convert(mode)
    buf = io.BytesIO()
    kwargs = {}
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif.tobytes()
    im.save(buf, "JPEG", quality=90, **kwargs)
    return buf.getvalue()


def png(w: int = 40, h: int = 30, mode: str = "RGB") -> bytes:
    if mode == "I;16":
        arr = (np.arange(w * h, dtype=np.uint16).reshape(h, w) * 50).astype(np.uint16)
        im = Image.fromarray(arr)
    else:
        im = Image.new("RGB", (w, h), (10, 120, 240))
        if mode == "P":
            im = im.convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
            im.info["transparency"] = 0
        elif mode != "RGB":
            im = im.convert(mode)
    buf = io.BytesIO()
    im.save(buf, "PNG", **({"transparency": 0} if mode == "P" else {}))
    return buf.getvalue()


def image_bytes(fmt: str, w: int = 40, h: int = 30, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (w, h), (90, 60, 30) if mode == "RGB" else None).save(buf, fmt)
    return buf.getvalue()


def png_header_only(w: int, h: int) -> bytes:
    """A PNG whose header declares w x h but whose data is tiny: a bomb's signature."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def wav(
    seconds: float = 0.5,
    rate: int = 16000,
    channels: int = 1,
    subtype: str = "PCM_16",
    fmt: str = "WAV",
) -> bytes:
    import soundfile as sf

    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * 440 * t)
    if channels > 1:
        x = np.stack([x] * channels, axis=1)
    buf = io.BytesIO()
    sf.write(buf, x, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def tar_with(members: list[tuple[str, bytes | None, str]]) -> bytes:
    """A tar of (name, data, kind) where kind is reg|sym|lnk|chr|dir, written with tarfile."""
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            if kind == "reg":
                info.size = len(data or b"")
                tf.addfile(info, io.BytesIO(data or b""))
                continue
            info.type = {
                "sym": tarfile.SYMTYPE,
                "lnk": tarfile.LNKTYPE,
                "chr": tarfile.CHRTYPE,
                "dir": tarfile.DIRTYPE,
            }[kind]
            info.linkname = "/etc/passwd" if kind in ("sym", "lnk") else ""
            tf.addfile(info)
    return buf.getvalue()
