"""A small corpus where each curate filter has rows to reject, and vectors with injected
semantic duplicates, written as a features output (``parts/<shard>/``, ``_SUCCESS``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf
from PIL import Image

RATE = 16000
NORMAL = 12
# key -> what the row is for (the reason curate should give it, with every filter on)
SPECIAL = {
    "small": "small_image",
    "wide": "aspect_ratio",
    "oneword": "caption_length",
    "french": "language",
    "mismatch": "low_similarity",
    "short": "audio_duration",
    "silent": "silence",
    "noise": "low_snr",
    "forbid": "predicate",
    "dup00": "semantic_duplicate",
    "dup01": "semantic_duplicate",
}


def _audio(kind: str, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(RATE) / RATE
    if kind == "short":
        return (0.3 * np.sin(2 * np.pi * 440 * t[: RATE // 10])).astype(np.float32)
    if kind == "silent":
        x = np.zeros(RATE, np.float32)
        x[:200] = 0.3  # a click, then nothing
        return x
    if kind == "noise":
        return (0.2 * rng.standard_normal(RATE)).astype(np.float32)
    tone = 0.4 * np.sin(2 * np.pi * rng.uniform(200, 800) * t)
    tone[int(0.6 * RATE) :] = 0.0  # speech-like: sound, then a pause
    return (tone + 0.001 * rng.standard_normal(RATE)).astype(np.float32)


def write(root: Path, seed: int = 0) -> dict:
    """The manifest under ``root``; returns its row count and the keys by purpose."""
    rng = np.random.default_rng(seed)
    (root / "media").mkdir(parents=True, exist_ok=True)
    rows = []
    keys = [f"n{i:02d}" for i in range(NORMAL)] + list(SPECIAL)
    for key in keys:
        size = {"small": (16, 16), "wide": (200, 40)}.get(key, (64, 64))
        img = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
        img.save(root / "media" / f"{key}.png")
        sf.write(root / "media" / f"{key}.flac", _audio(key, rng), RATE)
        text = {
            "oneword": "cat",
            "french": "le chat noir est assis sur la table de la cuisine ce matin",
            "forbid": "a forbidden picture of a square",
        }.get(key, f"a photo of shape number {key} on a plain background")
        rows.append(
            {"key": key, "image": f"media/{key}.png", "audio": f"media/{key}.flac", "text": text}
        )
    rows.append({"key": "gone", "image": "media/missing.png", "text": "a missing image here"})
    with open(root / "manifest.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return {"rows": len(rows), "keys": keys}


def write_vectors(build: Path, out: Path, dim: int = 16, seed: int = 0) -> None:
    """One unit vector per key of ``build``; dupNN repeat nNN (cos > 0.999); each caption's
    vector is close to its image's except ``mismatch``'s."""
    rng = np.random.default_rng(seed)
    index = pq.read_table(build / "index").to_pylist()
    base = {r["key"]: rng.standard_normal(dim) for r in index}
    for r in index:
        if r["key"].startswith("dup"):
            src = "n" + r["key"][3:]
            base[r["key"]] = base[src] + 0.01 * rng.standard_normal(dim)
    by_shard: dict[str, list[dict]] = {}
    for r in index:
        img = base[r["key"]] / np.linalg.norm(base[r["key"]])
        txt = (
            rng.standard_normal(dim)
            if r["key"] == "mismatch"
            else img + 0.1 * rng.standard_normal(dim)
        )
        stem = r["shard"].rsplit("/", 1)[-1].split(".")[0]
        by_shard.setdefault(stem, []).append(
            {
                "key": r["key"],
                "shard": stem,
                "image_emb": img.astype(np.float32).tolist(),
                "text_emb": (txt / np.linalg.norm(txt)).astype(np.float32).tolist(),
            }
        )
    vec = pa.list_(pa.float32(), dim)
    schema = pa.schema(
        [("key", pa.string()), ("shard", pa.string()), ("image_emb", vec), ("text_emb", vec)]
    )
    for stem, rows in by_shard.items():
        (out / "parts" / stem).mkdir(parents=True, exist_ok=True)
        pq.write_table(
            pa.Table.from_pylist(rows, schema=schema), out / "parts" / stem / "p.parquet"
        )
    (out / "_SUCCESS").write_bytes(b"")
