"""MelStats: a non-learned audio encoder, MFCC and log-energy statistics with deltas."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

N_MFCC = 31  # c1..c31: c0 is loudness, which log-energy already carries
SEGMENTS = 3  # means over thirds of the clip: when things are said, not only what on average
# Per track (31 MFCCs + log-energy): mean and std of it, its deltas and delta-deltas, and its
# mean over each third. Chosen on spoken digits under noise (docs/benchmarks.md, bench_audio).
MEL_STATS_DIM = (6 + SEGMENTS) * (N_MFCC + 1)
VERSION = "mel_stats-v1"  # the weights id: a change of the formula must change it


def dct_matrix(n_mels: int, n_out: int) -> np.ndarray:
    """Orthonormal DCT-II rows 1..n_out over the mel axis [n_out, n_mels] (c0 left out)."""
    k = np.arange(1, n_out + 1)[:, None]
    m = np.arange(n_mels)[None, :]
    return (np.sqrt(2.0 / n_mels) * np.cos(math.pi / n_mels * (m + 0.5) * k)).astype(np.float32)


def mel_stats(n_mels: int = 64, eps: float = 1e-6) -> Any:
    """log-mel [B, n_mels, F] -> [B, MEL_STATS_DIM]; frames of padding do not count.

    The features stage pads short clips with log(eps) in every band (see
    preprocess.audio.AudioLogMel), so padding is found from the input itself: the encoder
    keeps the one-tensor signature of the learned ones and exports to ONNX unchanged.
    """
    import torch
    import torch.nn as nn

    n_out = min(N_MFCC, n_mels - 1)

    class MelStats(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("dct", torch.from_numpy(dct_matrix(n_mels, n_out)))
            self.floor = math.log(eps) + 1e-3

        def forward(self, log_mel: Any) -> Any:
            real = (log_mel > self.floor).any(dim=1).to(log_mel.dtype)  # [B, F]
            mfcc = torch.einsum("km,bmf->bkf", self.dct, log_mel)
            energy = torch.logsumexp(log_mel, dim=1, keepdim=True) - math.log(n_mels)
            x = torch.cat([mfcc, energy], dim=1)  # [B, n_out + 1, F]
            d1, m1 = _delta(x, real)
            d2, m2 = _delta(d1, m1)
            stats = [s for t, m in ((x, real), (d1, m1), (d2, m2)) for s in _mean_std(t, m)]
            out = torch.cat([*stats, *_segment_means(x, real)], dim=1)
            if n_out < N_MFCC:  # few mel bands: the same width, zero-filled at the end
                out = nn.functional.pad(out, (0, MEL_STATS_DIM - out.shape[1]))
            return out

    return MelStats()


def _delta(x: Any, mask: Any) -> tuple[Any, Any]:
    """Central difference over time; valid only where both neighbours are real frames."""
    import torch.nn.functional as F

    d = (x[..., 2:] - x[..., :-2]) / 2.0
    m = mask[:, 2:] * mask[:, :-2]
    return F.pad(d, (1, 1)), F.pad(m, (1, 1))


def _segment_means(x: Any, mask: Any) -> list[Any]:
    """Means over ``SEGMENTS`` equal parts of the real frames, by position among them."""
    pos = (mask.cumsum(dim=1) - 1.0) / mask.sum(dim=1, keepdim=True).clamp(min=1.0)
    out = []
    for k in range(SEGMENTS):
        w = mask * (pos >= k / SEGMENTS).to(x.dtype) * (pos < (k + 1) / SEGMENTS).to(x.dtype)
        out.append((x * w[:, None, :]).sum(dim=-1) / w.sum(dim=-1, keepdim=True).clamp(min=1.0))
    return out


def _mean_std(x: Any, mask: Any) -> tuple[Any, Any]:
    """Masked mean and standard deviation over time [B, C, F] -> two [B, C]."""
    w = mask[:, None, :]
    n = w.sum(dim=-1).clamp(min=1.0)
    mean = (x * w).sum(dim=-1) / n
    var = ((x - mean[..., None]).square() * w).sum(dim=-1) / n
    return mean, (var + 1e-8).sqrt()
