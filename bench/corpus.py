"""Benchmark corpora: photo-like 640x480 JPEGs with captions, made in code and cached."""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np


def _make(args: tuple[str, int, int]) -> None:
    from PIL import Image, ImageDraw, ImageFilter

    root, start, stop = args
    for i in range(start, stop):
        path = Path(root) / "images" / f"{i:07d}.jpg"
        if path.exists():
            continue
        rng = np.random.default_rng(i)
        # Smooth gradients, a few shapes and mild grain: compresses like a photo (~40-70 KB).
        yy, xx = np.mgrid[0:480, 0:640]
        base = np.stack(
            [
                (xx * rng.uniform(0.1, 0.4) + yy * rng.uniform(0.1, 0.4) + rng.uniform(0, 120))
                % 256
                for _ in range(3)
            ],
            axis=-1,
        )
        im = Image.fromarray(base.astype(np.uint8), "RGB")
        d = ImageDraw.Draw(im)
        for _ in range(6):
            x, y = rng.integers(0, 600), rng.integers(0, 440)
            w, h = rng.integers(20, 200), rng.integers(20, 200)
            color = tuple(int(c) for c in rng.integers(0, 256, 3))
            (d.ellipse if rng.random() < 0.5 else d.rectangle)([x, y, x + w, y + h], fill=color)
        im = im.filter(ImageFilter.GaussianBlur(1.2))
        arr = np.asarray(im).astype(np.int16) + rng.integers(-6, 7, (480, 640, 3))
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, quality=90)


def make_jpeg_corpus(root: str | Path, n: int, workers: int = 2) -> Path:
    """Write ``n`` JPEGs and ``manifest.jsonl`` (relative paths + captions) under ``root``."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    step = max(1, n // (workers * 8))
    with ProcessPoolExecutor(workers) as ex:
        list(ex.map(_make, [(str(root), s, min(n, s + step)) for s in range(0, n, step)]))
    manifest = root / f"manifest-{n}.jsonl"
    with open(manifest, "w") as f:
        for i in range(n):
            f.write(
                json.dumps(
                    {
                        "key": f"{i:07d}",
                        "image": f"images/{i:07d}.jpg",
                        "text": f"synthetic photo {i}",
                    }
                )
                + "\n"
            )
    return manifest


def url_list(root: str | Path, n: int, base_url: str) -> tuple[Path, Path]:
    """The same corpus as URLs: a parquet for img2dataset and a JSONL manifest for mmpipe."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(root)
    urls = [f"{base_url}/images/{i:07d}.jpg" for i in range(n)]
    caps = [f"synthetic photo {i}" for i in range(n)]
    pq_path = root / f"urls-{n}.parquet"
    pq.write_table(pa.table({"url": urls, "caption": caps}), pq_path)
    js = root / f"urls-{n}.jsonl"
    with open(js, "w") as f:
        for i, (u, c) in enumerate(zip(urls, caps)):
            f.write(json.dumps({"key": f"{i:07d}", "image": u, "text": c}) + "\n")
    return pq_path, js


def cores() -> int:
    return len(os.sched_getaffinity(0))
