"""mmpipe curate: throughput against a bare loop, and SemDeDup precision and recall.

Three parts (``--part``):

- ``throughput``: the sample corpus (image, audio, caption per row) is built, then curated at
  the defaults (no config, no vectors), and a bare single-process loop does the same work on
  the same rows: every caption counted and its language identified, every clip's levels
  measured, kept samples copied into new tars. Prints rows/s of both and the ratio against
  the bare loop x cores.
- ``semdedup``: scikit-image's photographs, each cut into distinct crops (the originals),
  each original followed by the copies a crawl meets: the same image under another caption,
  resized, recompressed, brightened, cropped a little, mirrored. Built, embedded by
  ``mmpipe features`` at its defaults, and curated with SemDeDup over ``image_emb`` at each
  eps. A reject is right when it is a copy and names its original or another copy of it.
- ``realmedia``: every filter on over real media (``realmedia``), where each reason must
  appear with its value: see ``realmedia()``.

    .venv/bin/python bench/bench_curate.py --part throughput [--n 8000]
    .venv/bin/python bench/bench_curate.py --part realmedia   # after bench/bench_realmedia.py
    .venv/bin/python bench/bench_curate.py --part semdedup [--eps 0.02 0.05 0.1 0.15 0.2]
        [--pools grid avg]   # grid: the features default; avg: the one setting changed
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
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.bench_neardup import photos  # noqa: E402
from bench.corpus import cores  # noqa: E402

WORK = ROOT / "bench" / "_work" / "curate"
MMPIPE = [str(ROOT / ".venv" / "bin" / "mmpipe")]
# PYTHONPATH: the realmedia part names a predicate in this file, imported on every worker.
ENV = dict(os.environ, RAY_AUTH_MODE="disabled", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))


def mmpipe(*args: str) -> float:
    t = time.time()
    subprocess.run([*MMPIPE, *args, "-q"], check=True, env=ENV)
    return time.time() - t


def bare_loop(build: Path, out: Path) -> float:
    """The same per-row work as curate's defaults, in one process, no Ray: seconds."""
    from pipeline.curate import metrics
    from pipeline.io.tar import TarShardWriter, iter_tar_samples

    t = time.time()
    lang = metrics.LanguageId()
    out.mkdir(parents=True, exist_ok=True)
    for shard in sorted((build / "shards").glob("*.tar")):
        with open(shard, "rb") as f, open(out / shard.name, "wb") as o:
            w = TarShardWriter(o)
            for s in iter_tar_samples(f, max_member_bytes=1 << 30):
                keep = True
                for m in s.members:
                    if m.ext == "txt" and m.data is not None:
                        words, chars = metrics.caption_counts(m.data.decode())
                        lang(m.data.decode())
                        keep &= words >= 2 and chars >= 5
                    elif m.ext == "flac" and m.data is not None:
                        silent, _ = metrics.audio_levels(m.data)
                        keep &= silent <= 0.95
                if keep:
                    for m in s.members:
                        w.add(f"{s.key}.{m.ext}", m.data or b"")
            w.close()
    return time.time() - t


def throughput(n: int) -> dict:
    corpus, build = WORK / f"sample{n}", WORK / f"sample{n}-build"
    if not (build / "build.json").exists():
        subprocess.run(
            [*MMPIPE, "sample-corpus", str(corpus), "--n", str(n), "--no-broken"],
            check=True,
            env=ENV,
        )
        mmpipe("build", str(corpus / "manifest.jsonl"), "--output", str(build), "--overwrite")
    rows = pq.read_table(build / "index", columns=["key"]).num_rows
    bare = bare_loop(build, WORK / "bare-out")
    wall = mmpipe("curate", str(build), "--output", str(WORK / "curated"), "--overwrite")
    report = json.loads((WORK / "curated" / "curate.json").read_text())
    steps = report["timings_s"]
    task_s = steps["measure_task_s"] + steps["place_task_s"]
    return {
        "rows": rows,
        "cores": cores(),
        "bare_loop_s": round(bare, 1),
        "bare_loop_rows_per_s": round(rows / bare, 1),
        "curate_wall_s": round(wall, 1),
        "curate_rows_per_s": round(rows / wall, 1),
        "curate_steps_s": steps,
        # The same work as the bare loop, summed over curate's tasks (no start-up).
        "curate_task_s": round(task_s, 1),
        "ratio_task_vs_bare_loop": round(bare / task_s, 2),
        "ratio_wall_vs_bare_x_cores": round(bare / cores() / wall, 2),
        "kept": report["counts"]["written"],
    }


COPIES = ["other caption", "resize 1/2", "jpeg q40", "brighter 15%", "crop 5%", "mirror"]


def _copy(im, kind: str):
    from PIL import Image, ImageOps

    w, h = im.size
    if kind == "resize 1/2":
        return im.resize((w // 2, h // 2), Image.Resampling.BOX)
    if kind == "jpeg q40":
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=40)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    if kind == "brighter 15%":
        return Image.eval(im, lambda v: min(255, int(v * 1.15)))
    if kind == "crop 5%":
        return im.crop((w * 5 // 100, h * 5 // 100, w - w * 5 // 100, h - h * 5 // 100))
    if kind == "mirror":
        return ImageOps.mirror(im)
    return im


def dup_corpus(root: Path) -> dict[str, str]:
    """Originals (4 distinct crops of each photo) and their copies; key -> original key."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    truth, rows = {}, []
    for name, im in photos().items():
        if name == "checkerboard":  # its four quarters are the same image: no originals
            continue
        w, h = im.size
        for i, (x, y) in enumerate([(0, 0), (w // 2, 0), (0, h // 2), (w // 2, h // 2)]):
            orig = im.crop((x, y, x + w // 2, y + h // 2)).resize((224, 224))
            base = f"{name}_{i}"
            for kind in ["original", *COPIES]:
                key = base if kind == "original" else f"{base}_{COPIES.index(kind)}"
                pic = orig if kind == "original" else _copy(orig, kind)
                pic.save(root / "img" / f"{key}.jpg", quality=92)
                cap = f"a photo of {name}" if kind != "other caption" else f"{name}, part {i}"
                rows.append({"key": key, "image": f"img/{key}.jpg", "text": cap})
                if kind != "original":
                    truth[key] = base
    with open(root / "manifest.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return truth


def semdedup(eps_list: list[float], pools: list[str]) -> list[dict]:
    root = WORK / "dups"
    truth = dup_corpus(root / "corpus")
    build = root / "build"
    mmpipe("build", str(root / "corpus" / "manifest.jsonl"), "--output", str(build), "--overwrite")
    index = pq.read_table(build / "index", columns=["key"])["key"].to_pylist()
    truth = {k: v for k, v in truth.items() if k in set(index)}  # copies that reach curate
    n = len(index)
    out = []
    for pool, eps in [(p, e) for p in pools for e in eps_list]:
        # The default features (no config; pool: grid), or the one setting changed beside it.
        feats = root / f"features-{pool}"
        if not (feats / "_SUCCESS").exists():
            extra = []
            if pool != "grid":
                (root / f"features-{pool}.yaml").write_text(
                    f"features:\n  image: {{name: efficientnet_lite0, pool: {pool}}}\n"
                )
                extra = ["--config", str(root / f"features-{pool}.yaml")]
            mmpipe("features", str(build), "--output", str(feats), *extra)
        cfg = root / "cfg.yaml"
        cfg.write_text(
            "curate:\n  image: {enabled: false}\n  caption: {enabled: false}\n"
            f"  audio: {{enabled: false}}\n  semdedup: {{eps: {eps}}}\n"
        )
        dst = root / f"curated-{pool}-{eps}"
        wall = mmpipe(
            "curate",
            str(build),
            "--output",
            str(dst),
            "--vectors",
            str(feats),
            "--config",
            str(cfg),
            "--overwrite",
        )
        rej = pq.read_table(dst / "rejects.parquet").to_pylist()
        dups = [r for r in rej if r["reason"] == "semantic_duplicate"]
        right, by_kind = 0, dict.fromkeys(COPIES, 0)
        for r in dups:
            named = r["message"].rsplit("kept key ", 1)[1]
            if r["key"] in truth and truth[r["key"]] == truth.get(named, named):
                right += 1
                by_kind[COPIES[int(r["key"].rsplit("_", 1)[1])]] += 1
        per = {k: sum(1 for c in truth if COPIES[int(c.rsplit("_", 1)[1])] == k) for k in COPIES}
        out.append(
            {
                "image_pool": pool,
                "eps": eps,
                "rows": n,
                "copies": len(truth),
                "rejected": len(dups),
                "precision": round(right / len(dups), 3) if dups else 1.0,
                "recall": round(right / len(truth), 3),
                "recall_by_copy": {k: round(v / max(per[k], 1), 3) for k, v in by_kind.items()},
                "curate_wall_s": round(wall, 1),
            }
        )
        print(json.dumps(out[-1]), flush=True)
    return out


def drop_greater_than_four(batch: dict) -> tuple[list[bool], list]:
    """The real-media run's user predicate: a team's own rule on captions."""
    keep = ["greater than four" not in (t or "") for t in batch["text"]]
    return keep, [None if k else "caption says greater than four" for k in keep]


EVERY_FILTER = """curate:
  caption: {languages: [en]}
  similarity: {enabled: true, top_fraction: 0.95}
  audio: {max_silent_fraction: 0.6, min_snr_db: 3.0}
  predicate: bench.bench_curate:drop_greater_than_four
"""


def realmedia() -> dict:
    """Every filter on, over real media: bench_realmedia's digits and photos corpora, the
    photographs at their own sizes with bare captions, raw 8x8 digit scans, banner strips cut
    from the photographs, and clean espeak-ng speech with long silences, some cut short, some
    captioned in Mandarin."""
    import soundfile as sf
    from PIL import Image
    from sklearn.datasets import load_digits

    from bench.bench_audio import WORDS, speak

    src = ROOT / "bench" / "_work"
    run = src / "realmedia" / "run"
    if not (run / "model.json").exists():
        raise SystemExit("run bench/bench_realmedia.py first: this part embeds with its model")
    root = WORK / "realmedia"
    (root / "media").mkdir(parents=True, exist_ok=True)
    rows = []
    for name in ["realmedia", "realmedia-photos"]:
        base = src / name / "corpus"
        for line in (base / "manifest.jsonl").read_text().splitlines():
            r = json.loads(line)
            rows.append({**r, "image": str(base / r["image"]), "audio": str(base / r["audio"])})
    for name, im in photos().items():
        im.save(root / "media" / f"{name}.png")
        rows.append(
            {
                "key": f"photo_{name}",
                "image": str(root / "media" / f"{name}.png"),
                "text": name.replace("_", " "),
            }
        )
    rng = np.random.default_rng(0)
    digits = load_digits()
    for i in range(90):
        d = int(digits.target[i])
        lang = "cmn" if i % 3 == 2 else "en"
        x, sr = speak(WORDS[lang][d], lang, rng)
        if i % 3 == 1:
            x = x[: int(0.15 * sr)]  # a recording cut short
        else:
            x = np.concatenate([np.zeros(sr, np.float32), x, np.zeros(2 * sr, np.float32)])
        sf.write(root / "media" / f"clean{i:02d}.flac", x, sr)
        pix = (np.kron(digits.images[i] / 16.0, np.ones((12, 12))) * 255).astype(np.uint8)
        Image.fromarray(pix).convert("RGB").save(root / "media" / f"clean{i:02d}.png")
        text = f"这个数字是{WORDS['cmn'][d]}" if lang == "cmn" else f"the digit {WORDS['en'][d]}"
        rows.append(
            {
                "key": f"clean{i:02d}",
                "image": str(root / "media" / f"clean{i:02d}.png"),
                "audio": str(root / "media" / f"clean{i:02d}.flac"),
                "text": text,
            }
        )
    # Junk a crawl meets: raw 8x8 scans (thumbnails), and banner strips cut from the photos.
    for i in range(20):
        pix = (digits.images[100 + i] / 16.0 * 255).astype(np.uint8)
        Image.fromarray(pix).convert("RGB").save(root / "media" / f"thumb{i:02d}.png")
        rows.append(
            {
                "key": f"thumb{i:02d}",
                "image": str(root / "media" / f"thumb{i:02d}.png"),
                "text": f"a scanned digit {WORDS['en'][int(digits.target[100 + i])]}",
            }
        )
    for name, im in list(photos().items())[:10]:
        w, h = im.size
        im.crop((0, h // 3, w, h // 3 + max(8, w // 5))).save(root / "media" / f"strip_{name}.png")
        rows.append(
            {
                "key": f"strip_{name}",
                "image": str(root / "media" / f"strip_{name}.png"),
                "text": f"a strip of the {name} photograph",
            }
        )
    with open(root / "manifest.jsonl", "w") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    build, emb, out = root / "build", root / "emb", root / "curated"
    mmpipe("build", str(root / "manifest.jsonl"), "--output", str(build))  # a no-op when done
    if not (emb / "latest").exists():
        mmpipe("embed", str(build), "--model", str(run), "--output", str(emb))
    (root / "curate.yaml").write_text(EVERY_FILTER)
    wall = mmpipe(
        "curate",
        str(build),
        "--output",
        str(out),
        "--vectors",
        str(emb),
        "--config",
        str(root / "curate.yaml"),
        "--overwrite",
    )
    report = json.loads((out / "curate.json").read_text())
    rej = pq.read_table(out / "rejects.parquet").to_pylist()
    example = {}
    for r in rej[report["counts"]["carried_rejects"] :]:
        example.setdefault(r["reason"], f"{r['key']}: {r['message']}")
    return {
        "rows": report["counts"]["input_rows"],
        "kept": report["counts"]["written"],
        "rejects_by_reason": report["rejects_by_reason"],
        "example": example,
        "similarity_threshold": report["thresholds"]["similarity"]["resolved_threshold"],
        "curate_wall_s": round(wall, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["throughput", "semdedup", "realmedia"], required=True)
    ap.add_argument("--n", type=int, default=8000)
    ap.add_argument("--eps", type=float, nargs="+", default=[0.02, 0.05, 0.1, 0.15, 0.2])
    ap.add_argument("--pools", nargs="+", default=["grid", "avg"], help="features image pools")
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    if args.part == "throughput":
        print(json.dumps(throughput(args.n)), flush=True)
    elif args.part == "realmedia":
        print(json.dumps(realmedia(), ensure_ascii=False, indent=1), flush=True)
    else:
        semdedup(args.eps, args.pools)


if __name__ == "__main__":
    main()
