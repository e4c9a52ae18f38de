"""Audio encoders on real speech: spoken digits (espeak-ng, English and Mandarin) under noise.

Each clip goes through the features stage's own preprocessing (AudioLogMel at its defaults)
and each audio encoder; a standardised logistic regression, 5-fold, scores the features.
The baseline is the plain mean log-mel spectrum of the same clips.

    apt-get install espeak-ng   # the speech synthesiser; its voices ship with the package
    .venv/bin/python bench/bench_audio.py [--per-class 40] [--snr-db 0 10]
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORDS = {
    "en": ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"],
    "cmn": ["零", "一", "二", "三", "四", "五", "六", "七", "八", "九"],
}
VARIANTS = ["m1", "m2", "m3", "m4", "m5", "m7", "f1", "f2", "f3", "f4", "croak", "whisper"]


def speak(word: str, lang: str, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """One clip: a random voice variant, speed and pitch."""
    import soundfile as sf

    voice = f"{lang}+{VARIANTS[rng.integers(len(VARIANTS))]}"
    cmd = ["espeak-ng", "-v", voice, "-s", str(rng.integers(110, 230)), "-p"]
    cmd += [str(rng.integers(10, 90)), "--stdout", word]
    wav = subprocess.run(cmd, capture_output=True, check=True).stdout
    x, sr = sf.read(io.BytesIO(wav), dtype="float32")
    return x, sr


def corrupt(x: np.ndarray, sr: int, snr_db: float, rng: np.random.Generator) -> bytes:
    """Leading silence of up to 0.4 s, then white noise at ``snr_db``; back to WAV bytes."""
    import soundfile as sf

    x = np.concatenate([np.zeros(int(rng.uniform(0, 0.4) * sr), np.float32), x])
    power = float(np.mean(x**2)) + 1e-12
    noise = rng.normal(0, np.sqrt(power / 10 ** (snr_db / 10)), len(x)).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, np.clip(x + noise, -1, 1), sr, format="WAV")
    return buf.getvalue()


def corpus(per_class: int, snr: tuple[float, float], seed: int) -> tuple[list[bytes], np.ndarray]:
    rng = np.random.default_rng(seed)
    clips, labels = [], []
    for digit in range(10):
        for i in range(per_class):
            lang = "en" if i % 2 == 0 else "cmn"
            x, sr = speak(WORDS[lang][digit], lang, rng)
            clips.append(corrupt(x, sr, rng.uniform(*snr), rng))
            labels.append(digit)
    return clips, np.array(labels)


def features(clips: list[bytes], batch: int = 64) -> dict[str, np.ndarray]:
    """Each encoder's features, each through its own front end as the features stage gives it,
    plus two baselines: the mean log-mel spectrum, and resemblyzer's own speaker embedding."""
    import torch

    from pipeline.models.encoders import AUDIO_ENCODERS, AUDIO_FRONT_ENDS, audio_encoder
    from pipeline.preprocess.audio import AudioLogMel, LogMelConfig

    out: dict[str, list[np.ndarray]] = {}
    seconds: dict[str, float] = {}
    for name in AUDIO_ENCODERS:
        # "random" only reaches the learned CNN: the others load their own weights or none
        weights = "random" if name == "audio_cnn" else "default"
        model = audio_encoder(name, weights).model
        pre = AudioLogMel(LogMelConfig(**AUDIO_FRONT_ENDS.get(name, {})))
        out[name], seconds[name] = [], 0.0
        for i in range(0, len(clips), batch):
            b = pre({"audio": np.array(clips[i : i + batch], dtype=object)})
            t0 = time.perf_counter()
            with torch.inference_mode():
                out[name].append(model(torch.from_numpy(b["log_mel"])).numpy())
            seconds[name] += time.perf_counter() - t0
            if name == "mel_stats":
                w = b["audio_frames_mask"][:, None, :]
                mean = (b["log_mel"] * w).sum(-1) / np.maximum(w.sum(-1), 1)
                out.setdefault("mean_log_mel", []).append(mean)
    for name, s in seconds.items():
        print(f"  {name}: {len(clips) / s:,.0f} clips/s on this CPU", file=sys.stderr)
    feats = {n: np.concatenate(v) for n, v in out.items()}
    feats["resemblyzer, top layer only"] = feats["resemblyzer"][:, -256:]
    feats["resemblyzer's speaker embedding"] = speaker_embedding(clips)
    return feats


def speaker_embedding(clips: list[bytes]) -> np.ndarray:
    """What resemblyzer itself returns: ReLU(linear(final state of the top layer)), L2-normed."""
    import torch

    from pipeline.models.voice import FRONT_END, load_voice_lstm, package_weights
    from pipeline.models.weights import load_tensors, read_bytes
    from pipeline.preprocess.audio import AudioLogMel, LogMelConfig

    model, _ = load_voice_lstm("default")
    state = load_tensors(read_bytes(package_weights()), "resemblyzer")["model_state"]
    pre = AudioLogMel(LogMelConfig(**FRONT_END))
    out = []
    for clip in clips:
        b = pre({"audio": np.array([clip], dtype=object)})
        frames = int(b["audio_frames_mask"][0].sum())
        x = torch.from_numpy(np.exp(b["log_mel"][0, :, :frames]).T[None] - 1e-6)
        with torch.inference_mode():
            for lstm in model.layers:
                x, (h, _) = lstm(x)
            e = torch.relu(h[-1] @ state["linear.weight"].T + state["linear.bias"])
        out.append((e / e.norm().clamp(min=1e-9)).numpy()[0])
    return np.stack(out)


def probe(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=0.5))
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    acc = cross_val_score(clf, x, y, cv=folds)
    return float(acc.mean()), float(acc.std())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=40)
    ap.add_argument("--snr-db", type=float, nargs=2, default=(0.0, 10.0))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if shutil.which("espeak-ng") is None:
        print(
            "bench_audio: espeak-ng is not installed (apt-get install espeak-ng)", file=sys.stderr
        )
        return 2
    clips, y = corpus(args.per_class, tuple(args.snr_db), args.seed)
    print(f"{len(clips)} clips, 10 digits, English and Mandarin, SNR {args.snr_db} dB")
    feats = features(clips)
    print("| features | dim | 5-fold accuracy (logistic regression) |\n|---|---|---|")
    for name, x in feats.items():
        mean, std = probe(x, y, args.seed)
        print(f"| {name} | {x.shape[1]} | {mean:.3f} ± {std:.3f} |")
    print("| chance | | 0.100 |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
