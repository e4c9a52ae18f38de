"""curate's report.html: per-filter counts, and histograms (inline SVG) with thresholds marked."""

from __future__ import annotations

import html
from typing import Any

import numpy as np

from pipeline.curate.metrics import HIST_EDGES
from pipeline.io.fs import write_bytes_atomic

W, H, PAD = 560, 260, 48  # one figure's size and margin, in px

# name -> (title, x-axis label, the thresholds to mark as (label, value) pairs)
FIGURES: list[tuple[str, str, str]] = [
    ("image_min_side", "Image size", "shorter side (px)"),
    ("aspect_ratio", "Aspect ratio", "long side / short side"),
    ("caption_words", "Caption length", "words"),
    ("similarity", "Image-text similarity", "cosine"),
    ("audio_duration", "Audio duration", "seconds"),
    ("silent_fraction", "Audio silence", "silent fraction of 25 ms frames"),
    ("snr_db", "Audio SNR estimate", "dB"),
]


def _marks(name: str, th: dict[str, Any]) -> list[tuple[str, float]]:
    img, cap, aud = th["image"], th["caption"], th["audio"]
    on = {"image": img["enabled"], "caption": cap["enabled"], "audio": aud["enabled"]}
    found: dict[str, list[tuple[str, Any]]] = {
        "image_min_side": [("min_side", img["min_side"])] if on["image"] else [],
        "aspect_ratio": [("max_aspect", img["max_aspect"])] if on["image"] else [],
        "caption_words": [("min_words", cap["min_words"]), ("max_words", cap["max_words"])]
        if on["caption"]
        else [],
        "similarity": [("threshold", th["similarity"]["resolved_threshold"])],
        "audio_duration": [("min_seconds", aud["min_seconds"]), ("max_seconds", aud["max_seconds"])]
        if on["audio"]
        else [],
        "silent_fraction": [("max_silent_fraction", aud["max_silent_fraction"])]
        if on["audio"]
        else [],
        "snr_db": [("min_snr_db", aud["min_snr_db"])] if on["audio"] else [],
    }
    return [(k, float(v)) for k, v in found[name] if v is not None]


def _coarse(name: str, counts: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """At most 80 bars: fine bins (similarity's 4,000) are summed in runs."""
    edges, c = HIST_EDGES[name], np.asarray(counts, dtype=np.int64)
    step = max(1, len(c) // 80)
    n = len(c) // step * step
    return edges[: n + 1 : step], c[:n].reshape(-1, step).sum(axis=1)


def svg_histogram(name: str, title: str, xlabel: str, counts: list[int], marks: list) -> str:
    """One labelled bar chart: title, both axis labels, tick values, threshold lines."""
    edges, c = _coarse(name, counts)
    lo, hi = float(edges[0]), float(edges[-1])
    top = max(int(c.max()), 1)
    pw, ph = W - 2 * PAD, H - 2 * PAD

    def x(v: float) -> float:
        return PAD + (min(max(v, lo), hi) - lo) / (hi - lo) * pw

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" role="img" '
        f'aria-label="{html.escape(title)} histogram">',
        f'<text x="{W / 2}" y="18" text-anchor="middle" font-size="14">{html.escape(title)}</text>',
        f'<text class="xlabel" x="{W / 2}" y="{H - 8}" text-anchor="middle" font-size="12">'
        f"{html.escape(xlabel)}</text>",
        f'<text class="ylabel" x="14" y="{H / 2}" text-anchor="middle" font-size="12" '
        f'transform="rotate(-90 14 {H / 2})">rows</text>',
        f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - PAD}" y2="{H - PAD}" stroke="#333"/>',
        f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{H - PAD}" stroke="#333"/>',
        f'<text x="{PAD - 4}" y="{PAD + 4}" text-anchor="end" font-size="10">{top}</text>',
        f'<text x="{PAD - 4}" y="{H - PAD}" text-anchor="end" font-size="10">0</text>',
    ]
    for v in np.linspace(lo, hi, 5):
        parts.append(
            f'<text x="{x(v):.1f}" y="{H - PAD + 14}" text-anchor="middle" '
            f'font-size="10">{v:g}</text>'
        )
    for i, n in enumerate(c):
        if n:
            x0, x1 = x(float(edges[i])), x(float(edges[i + 1]))
            bh = n / top * ph
            parts.append(
                f'<rect x="{x0:.1f}" y="{H - PAD - bh:.1f}" width="{max(x1 - x0 - 1, 1):.1f}" '
                f'height="{bh:.1f}" fill="#4c78a8"><title>{n}</title></rect>'
            )
    for label, v in marks:
        # Labels right of their line, or left of it in the right half (never clipped).
        right = x(v) < W * 0.6
        tx, anchor = (x(v) + 3, "start") if right else (x(v) - 3, "end")
        parts.append(
            f'<line class="threshold" x1="{x(v):.1f}" y1="{PAD}" x2="{x(v):.1f}" '
            f'y2="{H - PAD}" stroke="#d62728" stroke-dasharray="4 3"/>'
            f'<text x="{tx:.1f}" y="{PAD + 10}" font-size="10" fill="#d62728" '
            f'text-anchor="{anchor}">{html.escape(label)} = {v:g}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def write_report(url: str, report: dict[str, Any], total: dict[str, Any]) -> None:
    """One self-contained HTML page: counts per filter, then one figure per measurement."""
    counts = report["counts"]
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>"
        for k, v in [
            ("input rows", counts["input_rows"]),
            ("kept", counts["written"]),
            *report["rejects_by_reason"].items(),
            ("earlier rejects carried forward", counts["carried_rejects"]),
        ]
    )
    figures = []
    for name, title, xlabel in FIGURES:
        c = total.get(f"hist_{name}") or []
        if not sum(c):
            figures.append(f"<p>{html.escape(title)}: no row has this measurement.</p>")
            continue
        svg = svg_histogram(name, title, xlabel, c, _marks(name, report["thresholds"]))
        figures.append(
            f"<figure>{svg}<figcaption>{html.escape(title)}: {sum(c)} rows</figcaption></figure>"
        )
    langs = ", ".join(f"{html.escape(k)} {v}" for k, v in report["measured"]["languages"].items())
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>mmpipe curate report</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 10px}}
figure{{display:inline-block;margin:8px}}</style></head><body>
<h1>mmpipe curate report</h1><p>{html.escape(report["build"])}</p>
<h2>Counts per filter</h2><table><tr><th>what</th><th>rows</th></tr>{rows}</table>
<p>Caption languages: {langs or "none measured"}</p>
<h2>Measurements</h2>{"".join(figures)}</body></html>"""
    write_bytes_atomic(url, page.encode())
