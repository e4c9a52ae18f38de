"""Association corpora: the label is whether two modalities agree, each one reliable alone.

Every corpus of ``bench/realmedia_corpora.py`` carries its label in each modality, so a late
fusion of per-modality classifiers is near the best there. Here the label (``same`` or
``different``) lives only in the relation: half the rows pair a picture with a word for the
same thing, the rest with another thing's word, drawn uniformly. Each modality alone, and any
late fusion, is at chance; a shared space in which the two meet is not.

- ``digits-speech``: scikit-learn's scanned digits (upscaled, lightly noised) with a digit's
  name spoken by espeak-ng (English or Mandarin, clear SNR); the caption is neutral.
- ``digits-caption``: the same scans with a caption naming a digit ("a handwritten seven");
  no audio.
- ``photos-speech``: ten scikit-image photographs, 100 crops each (larger and cleaner than
  ``photos``' crops: a picture reliable alone), with a photograph's name spoken as above; the
  caption is neutral. Added after every default was chosen: nothing was tuned on it.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from bench.bench_audio import WORDS, corrupt, speak
from bench.realmedia_corpora import PHOTOS, write_manifest

NEUTRAL = ("a picture and a word", "something seen and something heard", "a pairing")
SPEECH_SNR = (10.0, 20.0)  # dB: clear speech, so that the relation is what is hard


def other(k: int, n: int, rng: np.random.Generator) -> int:
    """A class other than ``k`` of ``n``, uniformly."""
    return int((k + rng.integers(1, n)) % n)


def digit_png(pix: np.ndarray, rng: np.random.Generator) -> bytes:
    """8x8 scan -> 96x96 RGB PNG with light Gaussian noise and no occlusion."""
    from PIL import Image

    x = np.kron(pix / 16.0, np.ones((12, 12))) + rng.normal(0, 0.1, (96, 96))
    buf = io.BytesIO()
    Image.fromarray((np.clip(x, 0, 1) * 255).astype(np.uint8)).convert("RGB").save(buf, "PNG")
    return buf.getvalue()


def photo_png(photo: np.ndarray, rng: np.random.Generator) -> bytes:
    """A random crop of a third to two thirds of the photo's side, in colour at 64 px, lightly
    noised: enough of the scene that the picture alone names it."""
    from PIL import Image

    h, w = photo.shape[:2]
    side = int(min(h, w) * rng.uniform(0.33, 0.67))
    r, c = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    im = Image.fromarray(photo[r : r + side, c : c + side]).convert("RGB").resize((64, 64))
    x = np.asarray(im, np.float32) / 255.0 + rng.normal(0, 0.05, (64, 64, 3))
    buf = io.BytesIO()
    Image.fromarray((np.clip(x, 0, 1) * 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _row(out: Path, key: str, png: bytes, same: bool) -> dict:
    (out / "media" / f"{key}.png").write_bytes(png)
    return {"key": key, "image": f"media/{key}.png", "label": "same" if same else "different"}


def _speech(out: Path, key: str, word: str, lang: str, rng: np.random.Generator) -> str:
    wave, sr = speak(word, lang, rng)
    (out / "media" / f"{key}.wav").write_bytes(corrupt(wave, sr, rng.uniform(*SPEECH_SNR), rng))
    return f"media/{key}.wav"


def write_digits_speech(out: Path, seed: int) -> Path:
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    (out / "media").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (pix, d) in enumerate(zip(digits.images, digits.target)):
        key, lang, same = f"a{i:05d}", ("en", "cmn")[i % 2], bool(rng.random() < 0.5)
        spoken = int(d) if same else other(int(d), 10, rng)
        row = _row(out, key, digit_png(pix, rng), same)
        row["audio"] = _speech(out, key, WORDS[lang][spoken], lang, rng)
        rows.append({**row, "text": str(rng.choice(NEUTRAL)), "lang": lang})
    return write_manifest(out, rows)


def write_digits_caption(out: Path, seed: int) -> Path:
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    (out / "media").mkdir(parents=True, exist_ok=True)
    forms = ("a handwritten {}", "the digit {}", "someone wrote {}")
    rows = []
    for i, (pix, d) in enumerate(zip(digits.images, digits.target)):
        same = bool(rng.random() < 0.5)
        named = int(d) if same else other(int(d), 10, rng)
        row = _row(out, f"c{i:05d}", digit_png(pix, rng), same)
        rows.append({**row, "text": str(rng.choice(forms)).format(WORDS["en"][named])})
    return write_manifest(out, rows)


def write_photos_speech(out: Path, seed: int) -> Path:
    import skimage.data

    rng = np.random.default_rng(seed)
    (out / "media").mkdir(parents=True, exist_ok=True)
    scenes = list(PHOTOS.values())
    rows = []
    for c, s in enumerate(scenes):
        photo = getattr(skimage.data, s.loader)()
        photo = photo[0] if isinstance(photo, tuple) else photo
        for j in range(100):
            i = c * 100 + j
            key, lang, same = f"s{i:05d}", ("en", "cmn")[i % 2], bool(rng.random() < 0.5)
            spoken = c if same else other(c, len(scenes), rng)
            row = _row(out, key, photo_png(photo, rng), same)
            row["audio"] = _speech(out, key, scenes[spoken].names[lang], lang, rng)
            rows.append({**row, "text": str(rng.choice(NEUTRAL)), "lang": lang})
    return write_manifest(out, rows)


ASSOCIATION = {
    "digits-speech": write_digits_speech,
    "digits-caption": write_digits_caption,
    "photos-speech": write_photos_speech,
}
