"""Real media end to end at the defaults: things seen, spoken and described, each one weak alone.

Three corpora (``--corpus``, written by ``bench/realmedia_corpora.py``): scikit-learn's scanned
digits, ten scikit-image photographs, and ten other scikit-image pictures (``textures``), each
with its name spoken by espeak-ng under noise and a caption that gives only one or two of its
attributes. ``photos`` was added after every default was chosen, and ``textures`` after every
default including ``w_single``: each in turn a corpus that nothing was tuned on.

The association corpora of ``bench/association_corpora.py`` (``digits-speech``,
``digits-caption``, ``photos-speech``) carry their label (``same`` / ``different``) only in
whether two modalities agree; ``--snr-db`` does not apply to them.

Then `mmpipe build`, `features`, `train` and `eval`, all with no flags, and the linear-probe
and CCA baselines that eval computes on the same features and split.

    apt-get install espeak-ng
    .venv/bin/python bench/bench_realmedia.py [--corpus digits|photos|textures|digits-speech|
        digits-caption|photos-speech] [--out DIR] [--snr-db LO HI]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.association_corpora import ASSOCIATION
from bench.realmedia_corpora import CORPORA


def mmpipe(*args: str) -> float:
    exe = Path(sys.executable).with_name("mmpipe")
    t0 = time.perf_counter()
    subprocess.run([str(exe), *args], check=True)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", choices=sorted({*CORPORA, *ASSOCIATION}), default="digits")
    ap.add_argument("--out", help="default: bench/_work/realmedia (digits), realmedia-CORPUS")
    ap.add_argument("--snr-db", type=float, nargs=2, help="speech; default: the corpus's own")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    default = "bench/_work/realmedia" + ("" if args.corpus == "digits" else f"-{args.corpus}")
    out = Path(args.out or default)
    manifest = out / "corpus" / "manifest.jsonl"
    if not manifest.exists():
        if args.corpus in ASSOCIATION:
            ASSOCIATION[args.corpus](out / "corpus", args.seed)
        else:
            writer, snr = CORPORA[args.corpus]
            writer(out / "corpus", tuple(args.snr_db or snr), args.seed)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    for step in ("build", "features", "run"):  # each step timed from scratch; a run of an
        shutil.rmtree(out / step, ignore_errors=True)  # older config is refused, not reused
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
        print(f"| linear probe, {m} | {v if v is not None else float('nan'):.3f} |")
    print(f"| late fusion of the probes | {base.get('late_fusion', float('nan')):.3f} |")
    cca = (base.get("cca") or {}).get("accuracy")
    print(f"| CCA of each modality pair | {cca if cca is not None else float('nan'):.3f} |")
    found = json.loads((out / "run" / "train.json").read_text()).get("relations")
    print(f"relations found before training: {json.dumps(found)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
