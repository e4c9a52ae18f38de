"""Real media end to end at the defaults: digits seen, spoken and described, each one weak alone.

The corpus: scikit-learn's 1,797 scanned handwritten digits (upscaled, noisy, a third of each
occluded), the digit's name spoken by espeak-ng in English or Mandarin under heavy noise, and
a caption that gives only one or two of its attributes (odd, prime, greater than four, ...).
Then `mmpipe build`, `features`, `train` and `eval`, all with no flags, and the linear-probe
baselines that eval computes on the same features and split.

    apt-get install espeak-ng
    .venv/bin/python bench/bench_realmedia.py [--out bench/_work/realmedia] [--snr-db -6 0]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bench_audio import WORDS, corrupt, speak

ATTRS = {
    "an even number": lambda d: d % 2 == 0,
    "an odd number": lambda d: d % 2 == 1,
    "a prime": lambda d: d in (2, 3, 5, 7),
    "not a prime": lambda d: d not in (2, 3, 5, 7),
    "greater than four": lambda d: d > 4,
    "at most four": lambda d: d <= 4,
    "a multiple of three": lambda d: d % 3 == 0,
    "not a multiple of three": lambda d: d % 3 != 0,
}


def caption(d: int, rng: np.random.Generator) -> str:
    """One or two attributes that hold for ``d``: never the digit itself."""
    true = [a for a, holds in ATTRS.items() if holds(d)]
    picked = rng.choice(true, size=int(rng.integers(1, 3)), replace=False)
    return "a digit that is " + " and ".join(picked)


def image(pix: np.ndarray, rng: np.random.Generator) -> bytes:
    """8x8 scan -> 96x96 RGB PNG, Gaussian noise, one occluding grey block."""
    from PIL import Image

    x = np.kron(pix / 16.0, np.ones((12, 12)))
    x = x + rng.normal(0, 0.35, x.shape)
    h = 32
    r, c = rng.integers(0, 96 - h, 2)
    x[r : r + h, c : c + h] = 0.5
    img = Image.fromarray((np.clip(x, 0, 1) * 255).astype(np.uint8)).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def write_corpus(out: Path, snr: tuple[float, float], seed: int) -> Path:
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    (out / "media").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (pix, d) in enumerate(zip(digits.images, digits.target)):
        key = f"d{i:05d}"
        (out / "media" / f"{key}.png").write_bytes(image(pix, rng))
        lang = "en" if i % 2 == 0 else "cmn"
        wave, sr = speak(WORDS[lang][d], lang, rng)
        (out / "media" / f"{key}.wav").write_bytes(corrupt(wave, sr, rng.uniform(*snr), rng))
        rows.append(
            {
                "key": key,
                "image": f"media/{key}.png",
                "audio": f"media/{key}.wav",
                "text": caption(int(d), rng),
                "label": str(int(d)),
                "lang": lang,
            }
        )
    manifest = out / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def mmpipe(*args: str) -> float:
    exe = Path(sys.executable).with_name("mmpipe")
    t0 = time.perf_counter()
    subprocess.run([str(exe), *args], check=True)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/_work/realmedia")
    ap.add_argument("--snr-db", type=float, nargs=2, default=(-6.0, 0.0))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = Path(args.out)
    manifest = out / "corpus" / "manifest.jsonl"
    if not manifest.exists():
        write_corpus(out / "corpus", tuple(args.snr_db), args.seed)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    times = {
        "build": mmpipe("build", str(manifest), "-o", str(out / "build"), "-q"),
        "features": mmpipe("features", str(out / "build"), "-o", str(out / "features"), "-q"),
        "train": mmpipe("train", str(out / "features"), "-o", str(out / "run"), "-q"),
        "eval": mmpipe("eval", str(out / "run"), str(out / "features"), "-q"),
    }
    ev = json.loads((out / "run" / "eval.json").read_text())
    acc, base = ev["accuracy"], ev.get("baselines") or {}
    print(
        f"{ev['rows']} validation rows; seconds: {json.dumps({k: round(v) for k, v in times.items()})}"
    )
    print("| model | accuracy |\n|---|---|")
    print(f"| trained fusion ({ev['fusion']}), fused | {acc['fused']:.3f} |")
    for m in ("image", "text", "audio"):
        print(f"| trained fusion, {m} only | {acc.get(f'{m}_only') or float('nan'):.3f} |")
    for m, v in (base.get("probe") or {}).items():
        print(f"| linear probe, {m} | {v:.3f} |")
    print(f"| late fusion of the probes | {base.get('late_fusion', float('nan')):.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
