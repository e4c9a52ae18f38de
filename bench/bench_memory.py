"""Peak RSS of the driver and of the workers as the corpus grows 4x (not a timed test).

    python bench/bench_memory.py [--sizes 5000 20000]

Builds the sample corpus (images, audio, captions) at each size on a fresh local Ray, sampling
the RSS of the driver and of every Ray worker every 0.2 s. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_build import RssMonitor

WORK = Path(__file__).resolve().parent / "_work" / "memory"


def build(n: int) -> dict:
    from pipeline.build.job import run_build
    from pipeline.config import BuildConfig
    from pipeline.io.fs import remove_tree
    from pipeline.sample_corpus import write_corpus

    corpus = WORK / f"c{n}"
    if not (corpus / "manifest.jsonl").exists():
        write_corpus(str(corpus), n=n, seed=21, broken=True)
    out = WORK / f"b{n}"
    remove_tree(str(out))
    t0 = time.perf_counter()
    with RssMonitor() as mon:
        report = run_build(
            BuildConfig(
                input=str(corpus / "manifest.jsonl"),
                output=str(out),
                shard_samples=1000,
                resize=224,
                image_format="jpg",
            ),
            quiet=True,
        )
    return {
        "rows": report["counts"]["input_rows"],
        "written": report["counts"]["written"],
        "wall_s": round(time.perf_counter() - t0, 1),
        "peak_driver_mb": round(mon.driver / 2**20),
        "peak_worker_mb": round(mon.worker / 2**20),
        "peak_workers_total_mb": round(mon.total / 2**20),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000])
    args = ap.parse_args()
    results = {str(n): build(n) for n in args.sizes}
    lo, hi = results[str(min(args.sizes))], results[str(max(args.sizes))]
    results["growth"] = {
        k: round(hi[k] / max(1, lo[k]), 2) for k in ("rows", "peak_driver_mb", "peak_worker_mb")
    }
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
