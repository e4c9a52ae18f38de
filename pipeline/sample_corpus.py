"""A small, self-made multimodal corpus whose image, caption and audio share a learnable class."""

from __future__ import annotations

import io
import json
import os
from typing import Any

import numpy as np

from pipeline.errors import Reason

SHAPES = ["circle", "square", "triangle", "star", "cross", "diamond"]
SHAPES_ZH = ["圆形", "正方形", "三角形", "星形", "十字形", "菱形"]
COLORS = {
    "red": ((220, 40, 40), "红色"),
    "green": ((40, 170, 60), "绿色"),
    "blue": ((40, 80, 220), "蓝色"),
    "yellow": ((230, 200, 30), "黄色"),
    "purple": ((140, 50, 180), "紫色"),
    "orange": ((240, 130, 20), "橙色"),
}
SIZES = {"small": "小", "large": "大"}
POSITIONS = {
    "top left": ((0.3, 0.3), "左上角"),
    "top right": ((0.7, 0.3), "右上角"),
    "bottom left": ((0.3, 0.7), "左下角"),
    "bottom right": ((0.7, 0.7), "右下角"),
    "center": ((0.5, 0.5), "中间"),
}
# One tone per class: distinct enough to learn, close enough to need a model.
TONES_HZ = [330.0, 415.0, 523.0, 659.0, 784.0, 988.0]
IMAGE_SIZE = 128
SAMPLE_RATE = 16000
EN_TEMPLATES = [
    "a {size} {color} {shape} in the {pos}",
    "{pos_cap}: there is a {size} {color} {shape}",
    "picture of a {color} {shape}, {size}, placed {where}",
]
BROKEN_KINDS = [
    ("corrupt_image", Reason.DECODE_ERROR.value),
    ("missing_file", Reason.MISSING.value),
    ("no_modality", Reason.NO_MODALITY.value),
    ("truncated_audio", Reason.DECODE_ERROR.value),
    ("duplicate_content", Reason.DUPLICATE.value),
    ("repeated_key", Reason.DUPLICATE_KEY.value),
    ("text_named_jpg", Reason.DECODE_ERROR.value),
]


def _shape_points(shape: str, cx: float, cy: float, r: float) -> Any:
    if shape == "triangle":
        return [(cx, cy - r), (cx - r * 0.95, cy + r * 0.8), (cx + r * 0.95, cy + r * 0.8)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r * 0.75, cy), (cx, cy + r), (cx - r * 0.75, cy)]
    if shape == "star":
        pts = []
        for k in range(10):
            ang = -np.pi / 2 + k * np.pi / 5
            rr = r if k % 2 == 0 else r * 0.42
            pts.append((cx + rr * np.cos(ang), cy + rr * np.sin(ang)))
        return pts
    return None


def draw_image(rng: np.random.Generator, shape: str | None, color: str, size: str, pos: str) -> Any:
    """A noisy background with one filled shape (or none, for the hard variant's image)."""
    from PIL import Image, ImageDraw

    s = IMAGE_SIZE
    base = rng.integers(150, 235)
    grad = np.linspace(-20, 20, s)[None, :, None] * rng.choice([-1, 1])
    noise = rng.normal(0, 9, (s, s, 3))
    bg = np.clip(base + grad + noise, 0, 255).astype(np.uint8)
    im = Image.fromarray(bg, "RGB")
    d = ImageDraw.Draw(im)
    (fx, fy), _ = POSITIONS[pos]
    cx, cy = fx * s + rng.normal(0, 3), fy * s + rng.normal(0, 3)
    r = (0.2 if size == "large" else 0.11) * s * rng.uniform(0.9, 1.1)
    rgb = tuple(int(np.clip(c + rng.normal(0, 12), 0, 255)) for c in COLORS[color][0])
    if shape is None:
        # No shape: a soft blob of the colour, so colour and position survive but class does not.
        d.ellipse([cx - r * 0.5, cy - r * 0.2, cx + r * 0.5, cy + r * 0.2], fill=rgb)
    elif shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=rgb)
    elif shape == "square":
        d.rectangle([cx - r * 0.85, cy - r * 0.85, cx + r * 0.85, cy + r * 0.85], fill=rgb)
    elif shape == "cross":
        w = r * 0.33
        d.rectangle([cx - r, cy - w, cx + r, cy + w], fill=rgb)
        d.rectangle([cx - w, cy - r, cx + w, cy + r], fill=rgb)
    else:
        d.polygon(_shape_points(shape, cx, cy, r), fill=rgb)
    return im


def make_audio(rng: np.random.Generator, label: int | None, seconds: float = 1.0) -> Any:
    """A class tone with a harmonic and noise; pure noise when the class is withheld."""
    t = np.arange(int(SAMPLE_RATE * seconds)) / SAMPLE_RATE
    noise = rng.normal(0, 0.05, t.shape)
    if label is None:
        return np.clip(noise * 4, -1, 1).astype(np.float32)
    f = TONES_HZ[label] * rng.uniform(0.985, 1.015)
    env = np.minimum(1, np.minimum(t, seconds - t) * 20)
    tone = 0.5 * np.sin(2 * np.pi * f * t) + 0.15 * np.sin(4 * np.pi * f * t + rng.uniform(0, 6.28))
    return np.clip(env * tone * rng.uniform(0.6, 1.0) + noise, -1, 1).astype(np.float32)


def caption(
    rng: np.random.Generator, shape: str | None, color: str, size: str, pos: str, zh: bool
) -> tuple[str, int]:
    if zh:
        thing = SHAPES_ZH[SHAPES.index(shape)] if shape else "物体"
        return f"{POSITIONS[pos][1]}有一个{SIZES[size]}的{COLORS[color][1]}{thing}", 3
    variant = int(rng.integers(len(EN_TEMPLATES)))
    where = "in the center" if pos == "center" else f"at the {pos}"
    text = EN_TEMPLATES[variant].format(
        size=size,
        color=color,
        shape=shape or "object",
        pos=pos,
        pos_cap=pos.capitalize(),
        where=where,
    )
    return text, variant


def write_corpus(
    out: str, *, n: int, hard: bool = False, seed: int = 0, broken: bool = True
) -> dict[str, Any]:
    """Write images/, audio/ and manifest.jsonl under ``out``; return what was written.

    Each row records its generating attributes (label, colour, size, position, caption
    variant and language) so that class- and instance-level retrieval can be scored.
    """
    import soundfile as sf

    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    os.makedirs(os.path.join(out, "audio"), exist_ok=True)
    rows: list[dict[str, Any]] = []
    for i in range(n):
        label = int(rng.integers(len(SHAPES)))
        color = str(rng.choice(list(COLORS)))
        size = str(rng.choice(list(SIZES)))
        pos = str(rng.choice(list(POSITIONS)))
        missing = str(rng.choice(["image", "text", "audio"])) if hard else None
        key = f"s{i:06d}"
        im = draw_image(rng, None if missing == "image" else SHAPES[label], color, size, pos)
        img_name = f"images/{key}.png" if i % 5 == 4 else f"images/{key}.jpg"
        im.save(os.path.join(out, img_name), quality=92) if img_name.endswith("jpg") else im.save(
            os.path.join(out, img_name)
        )
        audio = make_audio(rng, None if missing == "audio" else label)
        aud_name = f"audio/{key}.flac" if i % 4 == 3 else f"audio/{key}.wav"
        sf.write(os.path.join(out, aud_name), audio, SAMPLE_RATE, subtype="PCM_16")
        zh = bool(rng.random() < 0.3)
        text, variant = caption(
            rng, None if missing == "text" else SHAPES[label], color, size, pos, zh
        )
        rows.append(
            {
                "key": key,
                "image": img_name,
                "audio": aud_name,
                "text": text,
                "label": SHAPES[label],
                "label_id": label,
                "color": color,
                "size": size,
                "position": pos,
                "lang": "zh" if zh else "en",
                "caption_variant": variant,
                "signal_missing": missing,
            }
        )
    n_broken = 0
    if broken:
        for j in range(max(len(BROKEN_KINDS), n // 25)):
            kind, reason = BROKEN_KINDS[j % len(BROKEN_KINDS)]
            rows.append(_broken_row(out, rng, j, kind, reason, rows))
            n_broken += 1
    manifest = os.path.join(out, "manifest.jsonl")
    with open(manifest, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return {"rows": len(rows), "broken": n_broken, "manifest": manifest}


def _broken_row(
    out: str, rng: np.random.Generator, j: int, kind: str, reason: str, rows: list[dict[str, Any]]
) -> dict[str, Any]:
    key = f"broken{j:04d}"
    row: dict[str, Any] = {"key": key, "label": None, "expected_reason": reason, "broken": kind}
    if kind == "corrupt_image":
        path = f"images/{key}.jpg"
        with open(os.path.join(out, path), "wb") as f:
            f.write(b"\xff\xd8\xff\xe0" + rng.bytes(600))
        row.update(image=path, text="a corrupt picture")
    elif kind == "missing_file":
        row.update(image=f"images/{key}-does-not-exist.jpg", text="a picture that is not there")
    elif kind == "truncated_audio":
        import soundfile as sf

        buf = io.BytesIO()
        sf.write(buf, make_audio(rng, 0), SAMPLE_RATE, format="WAV", subtype="PCM_16")
        path = f"audio/{key}.wav"
        with open(os.path.join(out, path), "wb") as f:
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        row.update(audio=path)
    elif kind == "duplicate_content":
        src = rows[0]
        row.update(image=src["image"], audio=src["audio"], text=src["text"])
    elif kind == "repeated_key":
        row.update(key=rows[1]["key"], text=f"another sample reusing a key {j}")
    elif kind == "text_named_jpg":
        path = f"images/{key}.jpg"
        with open(os.path.join(out, path), "w") as f:
            f.write("this is not an image\n")
        row.update(image=path)
    return row
