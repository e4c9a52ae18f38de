"""The filter rules: measurements + thresholds -> the first failing filter's reject, per row."""

from __future__ import annotations

import math
from typing import Any

import pyarrow as pa

from pipeline.curate.config import CurateConfig
from pipeline.errors import Reason

# (reason, message, modality) of a rejected row; None for a row every filter keeps.
Verdict = tuple[str, str, str] | None


def _num(v: Any) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _image(cfg: CurateConfig, r: dict[str, Any]) -> Verdict:
    f = cfg.image
    w, h = r.get("image_width"), r.get("image_height")
    if not f.enabled or not w or not h:
        return None
    short, long = min(w, h), max(w, h)
    if short < f.min_side:
        return (
            Reason.SMALL_IMAGE.value,
            f"shorter side {short} px < min_side {f.min_side}",
            "image",
        )
    if long / short > f.max_aspect:
        return (
            Reason.ASPECT_RATIO.value,
            f"aspect ratio {long / short:.2f} ({w}x{h}) > max_aspect {f.max_aspect:g}",
            "image",
        )
    return None


def _caption(cfg: CurateConfig, r: dict[str, Any]) -> Verdict:
    f = cfg.caption
    words, chars = r.get("caption_words"), r.get("caption_chars")
    if not f.enabled or words is None or chars is None:
        return None
    bounds = [
        ("words", words, f.min_words, "min_words", lambda v, t: v < t),
        ("words", words, f.max_words, "max_words", lambda v, t: v > t),
        ("characters", chars, f.min_chars, "min_chars", lambda v, t: v < t),
        ("characters", chars, f.max_chars, "max_chars", lambda v, t: v > t),
    ]
    for what, value, limit, name, fails in bounds:
        if limit is not None and fails(value, limit):
            sign = "<" if name.startswith("min") else ">"
            return (Reason.CAPTION_LENGTH.value, f"{value} {what} {sign} {name} {limit}", "text")
    lang, score = r.get("language"), _num(r.get("language_score"))
    judged = lang and score is not None and score >= f.min_language_score
    if f.languages and judged and lang not in f.languages:
        return (
            Reason.LANGUAGE.value,
            f"language {lang} (p={score:.2f}) not in {f.languages}",
            "text",
        )
    return None


def _similarity(cfg: CurateConfig, r: dict[str, Any], threshold: float | None) -> Verdict:
    sim = _num(r.get("similarity"))
    if threshold is None or sim is None:
        return None
    if sim < threshold:
        cut = cfg.similarity_cut()
        how = f"top {cut[1]:g} of rows" if cut and cut[0] == "top_fraction" else "threshold"
        return (
            Reason.LOW_SIMILARITY.value,
            f"image-text cosine {sim:.4f} < {threshold:.4f} ({how})",
            "row",
        )
    return None


def _audio(cfg: CurateConfig, r: dict[str, Any]) -> Verdict:
    f = cfg.audio
    dur = _num(r.get("audio_duration"))
    if not f.enabled or dur is None:
        return None
    if dur < f.min_seconds:
        return (
            Reason.AUDIO_DURATION.value,
            f"{dur:.2f} s < min_seconds {f.min_seconds:g}",
            "audio",
        )
    if f.max_seconds is not None and dur > f.max_seconds:
        return (
            Reason.AUDIO_DURATION.value,
            f"{dur:.2f} s > max_seconds {f.max_seconds:g}",
            "audio",
        )
    silent = _num(r.get("silent_fraction"))
    if silent is not None and silent > f.max_silent_fraction:
        return (
            Reason.SILENCE.value,
            f"silent fraction {silent:.2f} > max_silent_fraction {f.max_silent_fraction:g}",
            "audio",
        )
    snr = _num(r.get("snr_db"))
    if f.min_snr_db is not None and snr is not None and snr < f.min_snr_db:
        return (Reason.LOW_SNR.value, f"SNR {snr:.1f} dB < min_snr_db {f.min_snr_db:g}", "audio")
    return None


def _predicate(cfg: CurateConfig, r: dict[str, Any]) -> Verdict:
    if cfg.predicate is None or r.get("predicate_keep") is not False:
        return None
    why = r.get("predicate_reason") or "returned keep = false"
    return (Reason.PREDICATE.value, f"{cfg.predicate}: {why}", "row")


def verdicts(
    table: pa.Table, cfg: CurateConfig, similarity_threshold: float | None
) -> list[Verdict]:
    """The reject of each measured row (the first filter that fails, in the documented
    order: image, caption, similarity, audio, predicate), or None to keep it."""
    out: list[Verdict] = []
    for r in table.drop_columns([c for c in ("vector",) if c in table.column_names]).to_pylist():
        v = (
            _image(cfg, r)
            or _caption(cfg, r)
            or _similarity(cfg, r, similarity_threshold)
            or _audio(cfg, r)
            or _predicate(cfg, r)
        )
        out.append(v)
    return out
