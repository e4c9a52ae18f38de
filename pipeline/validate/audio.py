"""Audio validation with soundfile: duration and rate read, truncation caught, optional mono FLAC."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Any

from pipeline.errors import Reason, SampleError

_PASSTHROUGH = {"WAV": "wav", "WAVEX": "wav", "FLAC": "flac"}


@dataclass
class AudioResult:
    data: bytes
    ext: str
    duration: float
    sample_rate: int
    channels: int


@dataclass(frozen=True)
class AudioOptions:
    rate: int | None = None
    min_seconds: float = 0.0
    max_seconds: float = 3600.0
    # "flac": every sample's audio is .flac, so WebDataset readers that want one member type
    # per key (HF datasets) load the build; "keep" stores WAV and FLAC as they came.
    format: str = "flac"

    @classmethod
    def from_config(cls, cfg: Any) -> AudioOptions:
        return cls(cfg.audio_rate, cfg.min_audio_seconds, cfg.max_audio_seconds, cfg.audio_format)


# FLAC holds integer PCM up to 24 bits: those subtypes transcode losslessly.
_FLAC_SUBTYPES = {"PCM_S8": "PCM_S8", "PCM_U8": "PCM_S8", "PCM_16": "PCM_16", "PCM_24": "PCM_24"}


def _clean(e: BaseException) -> str:
    """libsndfile's message without the address of our BytesIO: messages are deterministic."""
    return re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "the data", str(e))


def wav_truncated(data: bytes) -> bool:
    """True when a RIFF/WAVE file's ``data`` chunk declares more bytes than the file holds.

    libsndfile clamps the frame count of a cut-off WAV to what is present, so a truncated
    file would otherwise pass as a shorter, valid one.
    """
    import struct

    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return False
    pos = 12
    for _ in range(64):  # bounded: a hostile file cannot make us loop
        if pos + 8 > len(data):
            return False
        cid, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        if cid == b"data":
            # 0xFFFFFFFF (and 0) mark streamed WAVs whose writer never knew the length.
            return size not in (0, 0xFFFFFFFF) and size > len(data) - pos - 8
        pos += 8 + size + (size & 1)
    return False


def _flac(samples: Any, rate: int, subtype: str = "PCM_16") -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, samples, rate, format="FLAC", subtype=subtype)
    return buf.getvalue()


def validate_audio(data: bytes, opts: AudioOptions) -> AudioResult:
    """Read the header, check duration, decode everything, and transcode if asked.

    FLAC passes through untouched unless ``rate`` is set (then: mono FLAC at ``rate``); WAV
    is transcoded to FLAC losslessly, or kept with ``format="keep"``; other containers (OGG,
    MP3) are stored as FLAC at their own rate and channels.

    Raises:
        SampleError: ``decode_error`` (unreadable or truncated), ``too_long`` or ``too_small``.
    """
    import numpy as np
    import soundfile as sf

    try:
        info = sf.info(io.BytesIO(data))
    except Exception as e:  # libsndfile raises RuntimeError/LibsndfileError/TypeError variants
        raise SampleError(
            Reason.DECODE_ERROR, f"not readable audio: {_clean(e)}", "audio"
        ) from None
    if info.samplerate <= 0 or info.channels <= 0:
        raise SampleError(
            Reason.DECODE_ERROR, "audio header has no sample rate or channels", "audio"
        )
    duration = info.frames / info.samplerate
    # Checked on the header, before decoding: absurd durations never allocate.
    if duration > opts.max_seconds:
        raise SampleError(
            Reason.TOO_LONG,
            f"audio of {duration:.1f}s > max_audio_seconds {opts.max_seconds:g}",
            "audio",
        )
    if info.frames <= 0 or duration < opts.min_seconds:
        raise SampleError(
            Reason.TOO_SMALL,
            f"audio of {duration:.3f}s < min_audio_seconds {opts.min_seconds:g} or empty",
            "audio",
        )
    if wav_truncated(data):
        raise SampleError(Reason.DECODE_ERROR, "WAV data chunk is truncated", "audio")
    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as e:
        raise SampleError(
            Reason.DECODE_ERROR, f"audio data is corrupt: {_clean(e)}", "audio"
        ) from None
    # libsndfile returns what it could read of a truncated file without complaint.
    exact = info.format in _PASSTHROUGH
    if samples.shape[0] < (info.frames if exact else 0.95 * info.frames) or samples.shape[0] == 0:
        msg = (
            f"audio is truncated: header declares {info.frames} frames, {samples.shape[0]} decoded"
        )
        raise SampleError(Reason.DECODE_ERROR, msg, "audio")
    if not np.isfinite(samples).all():
        raise SampleError(Reason.DECODE_ERROR, "audio holds NaN or infinite samples", "audio")
    if opts.rate is not None:
        import soxr

        mono = samples.mean(axis=1)
        if rate != opts.rate:
            mono = soxr.resample(mono, rate, opts.rate, quality="HQ")
        mono = np.clip(mono, -1.0, 1.0)
        return AudioResult(_flac(mono, opts.rate), "flac", len(mono) / opts.rate, opts.rate, 1)
    if info.format == "FLAC" or (info.format in _PASSTHROUGH and opts.format == "keep"):
        return AudioResult(data, _PASSTHROUGH[info.format], duration, int(rate), int(info.channels))
    subtype = _FLAC_SUBTYPES.get(info.subtype, "PCM_24")  # float WAV: 24 bits, not 16
    return AudioResult(
        _flac(np.clip(samples, -1, 1), rate, subtype),
        "flac",
        duration,
        int(rate),
        int(info.channels),
    )
