"""mmpipe curate: throughput against a bare loop, and SemDeDup precision and recall.

Two parts (``--part``):

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

    .venv/bin/python bench/bench_curate.py --part throughput [--n 8000]
    .venv/bin/python bench/bench_curate.py --part semdedup [--eps 0.02 0.05 0.1 0.15 0.2]
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

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.bench_neardup import photos  # noqa: E402
from bench.corpus import cores  # noqa: E402

WORK = ROOT / "bench" / "_work" / "curate"
MMPIPE = [str(ROOT / ".venv" / "bin" / "mmpipe")]
ENV = dict(os.environ, RAY_AUTH_MODE="disabled", HF_HUB_OFFLINE="1")


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
    rows = pq.read_metadata(build / "index.parquet").num_rows
    bare = bare_loop(build, WORK / "bare-out")
    wall = mmpipe("curate", str(build), "--output", str(WORK / "curated"), "--overwrite")
    report = json.loads((WORK / "curated" / "curate.json").read_text())
    steps = report["timings_s"]
    return {
        "rows": rows,
        "cores": cores(),
        "bare_loop_rows_per_s": round(rows / bare, 1),
        "curate_wall_s": round(wall, 1),
        "curate_rows_per_s": round(rows / wall, 1),
        "curate_in_ray_s": steps["total"],
        "curate_in_ray_rows_per_s": round(rows / steps["total"], 1),
        "ratio_wall_vs_bare_x_cores": round(rows / wall / (rows / bare * cores()), 2),
        "ratio_in_ray_vs_bare_x_cores": round(rows / steps["total"] / (rows / bare * cores()), 2),
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


def semdedup(eps_list: list[float]) -> list[dict]:
    root = WORK / "dups"
    truth = dup_corpus(root / "corpus")
    build, feats = root / "build", root / "features"
    mmpipe("build", str(root / "corpus" / "manifest.jsonl"), "--output", str(build), "--overwrite")
    if not (feats / "_SUCCESS").exists():
        mmpipe("features", str(build), "--output", str(feats))
    n = pq.read_metadata(build / "index.parquet").num_rows
    out = []
    for eps in eps_list:
        cfg = root / "cfg.yaml"
        cfg.write_text(
            "curate:\n  image: {enabled: false}\n  caption: {enabled: false}\n"
            f"  audio: {{enabled: false}}\n  semdedup: {{eps: {eps}}}\n"
        )
        dst = root / f"curated-{eps}"
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
        per = len(truth) // len(COPIES)
        out.append(
            {
                "eps": eps,
                "rows": n,
                "copies": len(truth),
                "rejected": len(dups),
                "precision": round(right / len(dups), 3) if dups else 1.0,
                "recall": round(right / len(truth), 3),
                "recall_by_copy": {k: round(v / per, 3) for k, v in by_kind.items()},
                "curate_wall_s": round(wall, 1),
            }
        )
        print(json.dumps(out[-1]), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["throughput", "semdedup"], required=True)
    ap.add_argument("--n", type=int, default=8000)
    ap.add_argument("--eps", type=float, nargs="+", default=[0.02, 0.05, 0.1, 0.15, 0.2])
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    if args.part == "throughput":
        print(json.dumps(throughput(args.n)), flush=True)
    else:
        semdedup(args.eps)


if __name__ == "__main__":
    main()
