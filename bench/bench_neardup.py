"""Precision and recall of near-duplicate search on real photographs, by pHash distance.

    python bench/bench_neardup.py [--distances 0 2 4 6 8 10]

scikit-image's photographs (``cat`` left out: it is ``chelsea`` again), each with the
copies a crawl meets: resized to 1/2 and 1/4, JPEG q60, 2/3 size at JPEG q30, brightened
10%, cropped by 2%, 5% and 10% a side. Each image is hashed as the build hashes it
(``validate.phash``) and searched as the build searches (``neardup.one_task``). A reject
is right when it is a copy and names its original or another copy of it. Prints JSON per
distance, overall and per kind of copy; docs/build.md records the figures with this
command.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.build import neardup
from pipeline.validate.phash import perceptual_hash


def photos() -> dict:
    from PIL import Image
    from skimage import data

    out = {}
    for name in sorted(data.__all__):
        if name in ("cat", "download_all", "lbp_frontal_face_cascade_filename"):
            continue
        try:
            a = getattr(data, name)()
        except Exception:  # remote-only datasets are skipped
            continue
        photo = isinstance(a, np.ndarray) and a.dtype == np.uint8 and a.ndim in (2, 3)
        if photo and (a.ndim == 2 or a.shape[2] in (3, 4)) and min(a.shape[:2]) >= 64:
            out[name] = Image.fromarray(a).convert("RGB")
    return out


def _jpeg(im, q):
    from PIL import Image

    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=q)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def copies(im) -> dict:
    from PIL import Image

    w, h = im.size
    out = {
        "resize 1/2": im.resize((w // 2, h // 2), Image.Resampling.BOX),
        "resize 1/4": im.resize((w // 4, h // 4), Image.Resampling.BOX),
        "jpeg q60": _jpeg(im, 60),
        "2/3 size, jpeg q30": _jpeg(im.resize((w * 2 // 3, h * 2 // 3)), 30),
        "brighter 10%": Image.eval(im, lambda v: min(255, int(v * 1.1))),
    }
    for c in (2, 5, 10):
        dx, dy = w * c // 100, h * c // 100
        out[f"crop {c}%"] = im.crop((dx, dy, w - dx, h - dy))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--distances", type=int, nargs="+", default=[0, 2, 4, 6, 8, 10])
    args = ap.parse_args()
    originals = photos()
    rows, truth, kinds = [], {}, {}
    for name, im in originals.items():  # originals first: they come earlier in input order
        rows.append((name, perceptual_hash(im)))
    for name, im in originals.items():
        for kind, copy in copies(im).items():
            key = f"{name}/{kind}"
            rows.append((key, perceptual_hash(copy)))
            truth[key], kinds[key] = name, kind
    table = pa.table(
        {
            "pos": pa.array(range(len(rows)), pa.int64()),
            "key": [k for k, _ in rows],
            "phash": pa.array([h for _, h in rows], pa.uint64()),
        }
    )
    keys = table.column("key").to_pylist()
    for d in args.distances:
        found = neardup.one_task(table, d)
        right, by_kind = 0, {k: 0 for k in dict.fromkeys(kinds.values())}
        for pos, msg in zip(found.column("pos").to_pylist(), found.column("message").to_pylist()):
            key = keys[pos]
            named = msg.removeprefix("near duplicate of ").split(":")[0]
            # Right when both are the same photo: a copy may name another copy of it, the
            # first of its chain when the original itself is too far.
            if key in truth and truth[key] == truth.get(named, named):
                right += 1
                by_kind[kinds[key]] += 1
        per = len(originals)
        print(
            json.dumps(
                {
                    "distance": d,
                    "photos": per,
                    "copies": len(truth),
                    "rejected": found.num_rows,
                    "precision": round(right / found.num_rows, 3) if found.num_rows else 1.0,
                    "recall": round(right / len(truth), 3),
                    "recall_by_copy": {k: round(v / per, 3) for k, v in by_kind.items()},
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
