"""What curate measures per sample (caption, language, audio), and fixed-bin histograms of it."""

from __future__ import annotations

import io
import re
from typing import Any

import numpy as np

# 25 ms frames: the usual speech analysis window; silence and SNR are judged per frame.
FRAME_S = 0.025
# A frame is silent below -60 dBFS, or 40 dB under the clip's loudest frame.
SILENCE_DBFS = -60.0
SILENCE_BELOW_PEAK_DB = 40.0
SNR_CAP_DB = 100.0

# Fixed bin edges (the last bin takes everything above): per-shard counts add up exactly,
# whatever the build's size, and the report draws them. Similarity bins are fine enough
# (0.0005) to place a top-fraction threshold.
HIST_EDGES: dict[str, np.ndarray] = {
    "image_min_side": np.arange(0, 1025, 16, dtype=np.float64),
    "aspect_ratio": np.linspace(1.0, 5.0, 41),
    "caption_words": np.arange(0, 81, 1, dtype=np.float64),
    "similarity": np.linspace(-1.0, 1.0, 4001),
    "audio_duration": np.linspace(0.0, 30.0, 61),
    "silent_fraction": np.linspace(0.0, 1.0, 21),
    "snr_db": np.linspace(-10.0, 60.0, 71),
}


def histogram(name: str, values: np.ndarray) -> list[int]:
    """Counts of the finite ``values`` in ``HIST_EDGES[name]``: below the first edge counts in
    the first bin, above the last in the last."""
    edges = HIST_EDGES[name]
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    idx = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, len(edges) - 2)
    return np.bincount(idx, minlength=len(edges) - 1).astype(int).tolist()


def top_fraction_threshold(counts: list[int], fraction: float) -> float:
    """The similarity at or above which ``fraction`` of the counted rows lie, to a bin
    (0.0005): the lower edge of the bin where the cumulative count from the top reaches it."""
    edges = HIST_EDGES["similarity"]
    total = sum(counts)
    if total == 0:
        return float(edges[0])
    want = fraction * total
    seen = 0
    for i in range(len(counts) - 1, -1, -1):
        seen += counts[i]
        if seen >= want:
            return float(edges[i])
    return float(edges[0])


# Han and kana are written without spaces: each character counts as a word.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_WORDS = re.compile(f"[{_CJK}]|[^\\s{_CJK}]+")


def caption_counts(text: str) -> tuple[int, int]:
    """Words and characters, after stripping. Words are runs between spaces, and each Han or
    kana character alone (Chinese and Japanese put no spaces between words)."""
    t = text.strip()
    return len(_WORDS.findall(t)), len(t)


class LanguageId:
    """py3langid's model from its wheel (no download), loaded once per worker."""

    def __init__(self) -> None:
        import py3langid.langid as langid

        self._idf = langid.LanguageIdentifier.from_modelpath(
            langid.MODEL_DIR / langid.MODEL_FILE, norm_probs=True
        )

    def __call__(self, text: str) -> tuple[str, float]:
        lang, prob = self._idf.classify(text)
        return str(lang), float(prob)


def audio_levels(data: bytes) -> tuple[float, float]:
    """(silent fraction, SNR estimate in dB) of an encoded clip.

    The SNR is the ratio of the 90th to the 10th percentile of frame power: the loud frames
    stand for signal plus noise, the quiet ones for the noise floor (capped at 100 dB for
    digital silence). A cheap estimate with no model; docs/curate.md says what it misses.
    """
    import soundfile as sf

    x, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    mono = x.mean(axis=1)
    n = max(1, int(rate * FRAME_S))
    frames = len(mono) // n
    if frames == 0:
        return 1.0, 0.0
    power = np.mean(mono[: frames * n].reshape(frames, n) ** 2, axis=1, dtype=np.float64)
    db = 10.0 * np.log10(power + 1e-20)
    floor = max(SILENCE_DBFS, float(db.max()) - SILENCE_BELOW_PEAK_DB)
    silent = float(np.mean(db < floor))
    lo, hi = np.percentile(power, [10, 90])
    snr = SNR_CAP_DB if lo <= 1e-12 else min(SNR_CAP_DB, 10.0 * np.log10(max(hi, 1e-20) / lo))
    return silent, float(snr)


def similarity(image: np.ndarray, text: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two [N, D] arrays (NaN where either row is zero)."""
    num = np.einsum("nd,nd->n", image, text)
    den = np.linalg.norm(image, axis=1) * np.linalg.norm(text, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan).astype(np.float32)


def normalise(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def add_counts(total: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    """Sum two summaries: counts and histograms add, language tallies merge."""
    out = dict(total)
    for k, v in part.items():
        if isinstance(v, list):
            base = out.get(k) or [0] * len(v)
            out[k] = [a + b for a, b in zip(base, v)]
        elif isinstance(v, dict):
            merged = dict(out.get(k) or {})
            for name, c in v.items():
                merged[name] = merged.get(name, 0) + c
            out[k] = merged
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = out.get(k, 0) + v
    return out
