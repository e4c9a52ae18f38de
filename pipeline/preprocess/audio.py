"""AudioLogMel: decode, downmix, resample, log-mel spectrogram in torch, fixed length with a mask."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from pipeline.errors import SampleError, decode_failure, rejecting
from pipeline.stage import Batch, Stage


def hz_to_mel(f: Any) -> Any:
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m: Any) -> Any:
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(
    n_fft: int, n_mels: int, sample_rate: int, f_min: float, f_max: float
) -> np.ndarray:
    """Triangular HTK-scale filters [n_mels, n_fft // 2 + 1] (torchaudio's default, no norm)."""
    freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    pts = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    lower, center, upper = pts[:-2, None], pts[1:-1, None], pts[2:, None]
    up = (freqs[None, :] - lower) / (center - lower)
    down = (upper - freqs[None, :]) / (upper - center)
    return np.maximum(0.0, np.minimum(up, down)).astype(np.float32)


def slaney_filterbank(
    n_fft: int, n_mels: int, sample_rate: int, f_min: float, f_max: float
) -> np.ndarray:
    """Slaney-scale, area-normalised filters [n_mels, n_fft // 2 + 1]: librosa's default, which
    pretrained speech models such as resemblyzer were trained on."""
    f_sp, logstep = 200.0 / 3, np.log(6.4) / 27.0  # linear below 1 kHz, logarithmic above

    def to_mel(f: Any) -> Any:
        f = np.asarray(f, dtype=np.float64)
        return np.where(f >= 1000, 15 + np.log(np.maximum(f, 1e-9) / 1000) / logstep, f / f_sp)

    def to_hz(m: Any) -> Any:
        return np.where(m >= 15, 1000 * np.exp(logstep * (m - 15)), f_sp * m)

    pts = to_hz(np.linspace(to_mel(f_min), to_mel(f_max), n_mels + 2))
    freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    ramps = pts[:, None] - freqs[None, :]
    widths = np.diff(pts)[:, None]
    tri = np.maximum(0.0, np.minimum(-ramps[:-2] / widths[:-1], ramps[2:] / widths[1:]))
    return (tri * (2.0 / (pts[2:] - pts[:-2]))[:, None]).astype(np.float32)


@dataclass(frozen=True)
class LogMelConfig:
    sample_rate: int = 16000
    n_fft: int = 400
    hop_length: int = 160
    n_mels: int = 64
    f_min: float = 0.0
    f_max: float | None = None
    num_frames: int = 200  # 2 s at a 10 ms hop
    eps: float = 1e-6
    mel_scale: str = "htk"  # or "slaney": a pretrained encoder's own front end
    gain_dbfs: float | None = None  # scale each clip to this RMS level (dBFS)


def log_mel(waves: Any, cfg: LogMelConfig, fbank: Any) -> Any:
    """[B, T] float waves -> [B, n_mels, frames] log-mel (centered, reflect-padded Hann STFT)."""
    import torch

    window = torch.hann_window(cfg.n_fft, periodic=True, device=waves.device)
    spec = torch.stft(
        waves,
        cfg.n_fft,
        cfg.hop_length,
        cfg.n_fft,
        window,
        center=True,
        pad_mode="reflect",
        return_complex=True,
    )
    power = spec.real.square() + spec.imag.square()
    return torch.log(torch.matmul(fbank, power) + cfg.eps)


def decode_mono(data: bytes, rate: int) -> np.ndarray:
    """Mono float32 at ``rate``.

    Raises:
        SampleError: the bytes are no audio that libsndfile reads.
    """
    import soundfile as sf

    try:
        x, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile's errors for bytes it cannot read
        raise decode_failure("audio", e) from None
    mono = x.mean(axis=1)
    if sr != rate:
        import soxr

        mono = soxr.resample(mono, sr, rate, quality="HQ").astype(np.float32)
    return np.ascontiguousarray(mono, dtype=np.float32)


def decode_clips(
    items: Any, rate: int, samples: int
) -> tuple[list[np.ndarray | None], list[str | None]]:
    """Each clip as mono float32 at ``rate``, cut to ``samples``; None where a sample has no
    audio, or where it fails to decode, with the reason beside it (that sample's reject)."""
    clips: list[np.ndarray | None] = [None] * len(items)
    errors: list[str | None] = [None] * len(items)
    for i, data in enumerate(items):
        if data is None or len(data) == 0:
            continue
        try:
            clips[i] = decode_mono(bytes(data), rate)[:samples]
        except SampleError as e:  # this sample's reject; resampling errors are bugs
            errors[i] = rejecting(e).message
    return clips, errors


def level_to(x: np.ndarray, dbfs: float) -> np.ndarray:
    """``x`` scaled to an RMS level of ``dbfs``; digital silence stays silent. resemblyzer
    only raises quiet clips; scaling loud ones down too measured better (docs/features.md)."""
    power = float(np.mean(np.square(x, dtype=np.float64))) if len(x) else 0.0
    if power <= 0:
        return x
    return x * np.float32(10 ** ((dbfs - 10 * np.log10(power)) / 20))


class AudioLogMel(Stage):
    """``audio`` (encoded bytes or None) -> ``log_mel`` [N, n_mels, F], ``audio_frames_mask`` [N, F],
    ``audio_mask``; clips are cropped or zero-padded to ``num_frames``, the mask marks real frames."""

    name = "audio_log_mel"
    reads: ClassVar[tuple[str, ...]] = ("audio",)
    adds: ClassVar[tuple[str, ...]] = ("log_mel", "audio_frames_mask", "audio_mask", "audio_error")
    batch_format: ClassVar[str] = "numpy"

    def __init__(self, cfg: LogMelConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or LogMelConfig()

    def setup(self) -> None:
        import torch

        c = self.cfg
        bank = slaney_filterbank if c.mel_scale == "slaney" else mel_filterbank
        fb = bank(c.n_fft, c.n_mels, c.sample_rate, c.f_min, c.f_max or c.sample_rate / 2)
        self.fbank = torch.from_numpy(fb)

    def __call__(self, batch: Batch) -> Batch:
        import torch

        self.ensure_setup()
        c = self.cfg
        n = len(batch["audio"])
        samples = (
            c.num_frames - 1
        ) * c.hop_length  # the samples that make num_frames centered frames
        waves = np.zeros((n, samples), dtype=np.float32)
        lengths = np.zeros(n, dtype=np.int64)
        present = np.zeros(n, dtype=bool)
        clips, errors = decode_clips(batch["audio"], c.sample_rate, samples)
        for i, x in enumerate(clips):
            if x is not None:
                waves[i, : len(x)] = x if c.gain_dbfs is None else level_to(x, c.gain_dbfs)
                lengths[i], present[i] = len(x), True
        with torch.inference_mode():
            mel = log_mel(torch.from_numpy(waves), c, self.fbank).numpy()
        frames = mel.shape[-1]
        valid = np.minimum(frames, lengths // c.hop_length + 1) * present
        fmask = np.arange(frames)[None, :] < valid[:, None]
        mel[~fmask[:, None, :].repeat(c.n_mels, axis=1)] = np.log(c.eps)  # padding reads as silence
        batch["log_mel"], batch["audio_frames_mask"], batch["audio_mask"] = mel, fmask, present
        batch["audio_error"] = errors
        return batch
