"""The build's merge step alone as the shards grow: peak private memory, wall and CPU a row.

    python bench/bench_merge.py [--rows 250000] [--copies 1 4 16]

One text build of ``--rows`` rows (bench_scale's manifest, 1% exact copies) is staged, then
deduped and placed in this process, once. Its placed index and reject parts are then linked
``--copies`` times over (each copy another run of chunks, so K copies merge K x the shards
and rows), and each size is merged in a fresh process, twice:
- ``default``: the merge as the job runs it, the index a file per 1,024 shards or ~1M rows;
- ``one_file``: the same merge with both bounds lifted, so the whole index is one Parquet
  file (what builds wrote before): its writer holds every shard's row group in the footer.
Each prints the process's peak private memory (RSS less shared pages), the growth over the
smallest size, wall time and the process's own CPU a row. Prints JSON; docs/benchmarks.md
records the figures with this command.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_build import private_mb
from bench.bench_scale import WORK, manifest


def staged(rows: int) -> Path:
    """A folder whose ``_work/placed`` holds the placed parts of a ``rows``-row text build,
    and ``placed.json`` the records the merge takes."""
    import ray

    import pipeline.build.job as job
    from pipeline.build.finalize import dedup_one_task, first_shards, kept_tars, place_chunk
    from pipeline.build.job import run_build
    from pipeline.config import BuildConfig

    root = WORK / f"merge{rows}"
    if (root / "placed.json").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    original = job.finalize_distributed

    def keep(work: str, *args: object) -> dict:
        shutil.copytree(work, root / "_work")
        return original(work, *args)

    job.finalize_distributed = keep
    try:
        cfg = BuildConfig(input=str(manifest(rows, 0.01)), output=str(WORK / "merge-build"))
        run_build(cfg, quiet=True, overwrite=True)
    finally:
        job.finalize_distributed = original
        ray.shutdown()
    shutil.rmtree(WORK / "merge-build")
    work = str(root / "_work")
    (root / "shards").mkdir()
    ids = sorted(p.stem for p in (root / "_work" / "chunks").glob("*.parquet"))
    dedup_one_task(work, ids)
    bases = first_shards({c: kept_tars(work, c) for c in ids})
    placed = [place_chunk(work, str(root), c, bases[c]) for c in ids]
    (root / "placed.json").write_text(json.dumps(placed))
    return root


def copies(root: Path, k: int) -> list[dict]:
    """``k`` runs of the placed records, each chunk's parts linked under a new chunk id."""
    placed = json.loads((root / "placed.json").read_text())
    parts = root / "_work" / "placed"
    out = []
    for j in range(k):
        for p in placed:
            cid = f"{p['chunk_id']}x{j:04d}"
            for kind in ("index", "rejects"):
                dst = parts / f"{cid}.{kind}.parquet"
                if not dst.exists():
                    os.link(parts / f"{p['chunk_id']}.{kind}.parquet", dst)
            out.append({**p, "chunk_id": cid})
    return out


def merge_once(root: Path, k: int, mode: str) -> dict:
    """One merge of ``k`` copies, in this (fresh) process, with its peak private memory."""
    import psutil

    import pipeline.build.finalize as fin

    if mode == "one_file":
        fin.INDEX_FILE_ROW_GROUPS = fin.INDEX_FILE_ROWS = 1 << 62
    placed = copies(root, k)
    proc, peak, stop = psutil.Process(), [0.0], threading.Event()

    def watch() -> None:
        while not stop.wait(0.05):
            peak[0] = max(peak[0], private_mb(proc))

    base = private_mb(proc)
    threading.Thread(target=watch, daemon=True).start()
    t0, c0 = time.perf_counter(), time.process_time()
    counts = fin.merge(str(root / "_work"), placed)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    stop.set()
    rows = counts["written"] + counts["rejected"]
    files = len(list((root / "_work" / "index").glob("*.parquet")))
    return {
        "mode": mode,
        "copies": k,
        "shards": counts["shards"],
        "rows": rows,
        "index_files": files,
        "private_before_mb": round(base),
        "private_peak_mb": round(max(peak[0], private_mb(proc))),
        "wall_s": round(wall, 2),
        "cpu_us_per_row": round(cpu / rows * 1e6, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=250_000)
    ap.add_argument("--copies", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--one", nargs=2, metavar=("K", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(merge_once(staged(args.rows), int(args.one[0]), args.one[1])))
        return
    staged(args.rows)
    results = []
    for mode in ("default", "one_file"):
        for k in args.copies:
            cmd = [sys.executable, __file__, "--rows", str(args.rows), "--one", str(k), mode]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    for mode in ("default", "one_file"):
        mine = [r for r in results if r["mode"] == mode]
        print(
            f"{mode}: {mine[0]['shards']} -> {mine[-1]['shards']} shards, peak private "
            f"{mine[0]['private_peak_mb']} -> {mine[-1]['private_peak_mb']} MB "
            f"({mine[-1]['private_peak_mb'] / mine[0]['private_peak_mb']:.2f}x)",
            file=sys.stderr,
        )
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
