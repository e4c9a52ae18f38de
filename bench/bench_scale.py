"""How a build grows with its rows: wall time, peak RSS, finalize old and new.

    python bench/bench_scale.py [--sizes 250000 1000000] [--dup 0.01] [--kind text|images]

``--driver-only``: the build alone, with the driver's private memory before and after each
step (process, dedup passes, finalize), and no other work in the driver.
``text`` (the default): each size is one manifest of text rows, a share of them exact
copies of the row before. ``images``: a Parquet of tiny 32x32 PNGs as Hugging Face image
bytes, ``--dup`` of them exact copies of an earlier image and ``--dup`` near copies (a few
pixels changed, so other bytes and a pHash within 4 bits), built with
``near_duplicates: true`` (the only field set: it is what the run measures); the recall and
precision of the near-dup search at scale are printed beside the timings.
For each size, on a fresh local Ray at the defaults:
- the build (``run_build``), with the peak RSS and private memory (RSS less shared pages)
  of the driver and of the largest worker, and the peak per task title;
- the one-task finalize over the same staged chunks (``finalize.finalize``: what every build
  ran before dedup was distributed), timed beside the job's own finalize;
- a bare loop over the same rows: parse, validate (UTF-8 and length), hash, tar write.
Each side prints its own CPU a row: the build's counts every process of its run (driver, Ray's
workers, raylet, GCS), the bare loop's its one process.
Prints JSON; docs/benchmarks.md records the figures with this command.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_build import RssMonitor, private_mb

WORK = Path(__file__).resolve().parent / "_work" / "scale"


def manifest(n: int, dup: float) -> Path:
    path = WORK / f"m{n}.jsonl"
    if not path.exists():
        import random

        rng = random.Random(n)
        WORK.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as f:
            text = ""
            for i in range(n):
                if not (i and rng.random() < dup):  # else: the row before, again
                    text = f"caption {i} " + " ".join(rng.choices(WORDS, k=12))
                f.write(json.dumps({"key": f"s{i:09d}", "text": text}) + "\n")
    return path


def image_manifest(n: int, dup: float) -> tuple[Path, set[str], set[str]]:
    """Tiny random images: (parquet, keys of exact copies, keys of near copies)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    path = WORK / f"img{n}.parquet"
    rng = np.random.default_rng(n)
    kind = rng.random(n)
    exact = {f"s{i:09d}" for i in range(1, n) if kind[i] < dup}
    near = {f"s{i:09d}" for i in range(1, n) if dup <= kind[i] < 2 * dup}
    if path.exists():
        return path, exact, near
    WORK.mkdir(parents=True, exist_ok=True)
    writer = None
    prev = None
    for lo in range(0, n, 10_000):
        keys, images = [], []
        for i in range(lo, min(n, lo + 10_000)):
            key = f"s{i:09d}"
            if key in exact:
                data = images[-1] if images else prev
            else:
                if key in near:  # the last image with 3 pixels nudged: other bytes, same look
                    px = np.array(Image.open(io.BytesIO(images[-1] if images else prev)))
                    px[rng.integers(0, 32, 3), rng.integers(0, 32, 3)] ^= 4
                else:  # smooth random structure: a pHash of its own
                    px = np.kron(rng.integers(0, 256, (8, 8, 3)), np.ones((4, 4, 1)))
                buf = io.BytesIO()
                Image.fromarray(px.astype("uint8")).save(buf, "PNG")
                data = buf.getvalue()
            keys.append(key)
            images.append(data)
        prev = images[-1]
        image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        table = pa.table(
            {
                "key": keys,
                "image": pa.array([{"bytes": b, "path": None} for b in images], image_type),
            }
        )
        if writer is None:
            writer = pq.ParquetWriter(str(path) + ".tmp", table.schema)
        writer.write_table(table)
    assert writer is not None
    writer.close()
    Path(str(path) + ".tmp").rename(path)
    return path, exact, near


WORDS = ["a", "red", "green", "blue", "small", "large", "dog", "cat", "bird", "tree"]


def bare_loop(path: Path, limit: int) -> tuple[float, float]:
    """Rows/s and CPU us a row of one process doing the per-row work of a text build, minus
    Ray and dedup."""
    out = io.BytesIO()
    t0, c0 = time.perf_counter(), time.process_time()
    n = 0
    with open(path, "rb") as f, tarfile.open(fileobj=out, mode="w") as tf:
        for line in f:
            if n >= limit:
                break
            row = json.loads(line)
            data = row["text"].encode("utf-8")
            assert len(row["text"]) <= 100_000
            hashlib.sha256(data).hexdigest()
            for name, payload in ((f"{row['key']}.txt", data), (f"{row['key']}.json", b"{}")):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
            n += 1
            if out.tell() > 256 << 20:  # a shard is written out and dropped, as the build does
                out.seek(0)
                out.truncate()
    return n / (time.perf_counter() - t0), (time.process_time() - c0) / n * 1e6


def one_task_finalize(out: Path, near: int | None) -> float:
    """Seconds of the one-task finalize on the build's staged chunks (kept aside)."""
    from pipeline.build.finalize import finalize

    work = out.parent / "old"
    ids = sorted(p.stem for p in (work / "_work" / "chunks").glob("*.parquet"))
    t0 = time.perf_counter()
    finalize(str(work / "_work"), str(work), ids, near)
    return time.perf_counter() - t0


def run(
    n: int,
    dup: float,
    kind: str,
    shard_samples: int | None = None,
    partition_rows: int | None = None,
    one_task: bool = True,
) -> dict:
    import ray

    import pipeline.build.job as job
    from pipeline.build.job import run_build
    from pipeline.config import BuildConfig

    extra: dict = {}
    if kind == "images":
        path, exact, near = image_manifest(n, dup)
        extra = {"near_duplicates": True}
    else:
        path = manifest(n, dup)
    if shard_samples:
        extra["shard_samples"] = shard_samples
    if partition_rows:
        extra["dedup_partition_rows"] = partition_rows
    out = WORK / f"out{n}" / "build"
    shutil.rmtree(out.parent, ignore_errors=True)
    kept: dict[str, float] = {}
    original = job.finalize_distributed

    def keep_chunks(work: str, *args: object) -> dict:
        """Copy the staged chunks aside before the job's finalize moves them."""
        import psutil

        # The driver's private memory after the process phase: what one record per chunk
        # task costs it, apart from what finalize adds.
        kept["driver_private_process_mb"] = private_mb(psutil.Process())
        t0, c0 = time.perf_counter(), time.process_time()
        if one_task:
            shutil.copytree(work, out.parent / "old" / "_work")
            (out.parent / "old" / "shards").mkdir()
        kept["copy_s"] = time.perf_counter() - t0
        kept["copy_cpu_s"] = time.process_time() - c0
        return original(work, *args)

    job.finalize_distributed = keep_chunks
    try:
        with RssMonitor() as rss:
            t0 = time.perf_counter()
            cfg = BuildConfig(input=str(path), output=str(out), **extra)
            report = run_build(cfg, quiet=True)
            wall = time.perf_counter() - t0 - kept["copy_s"]
    finally:
        job.finalize_distributed = original
        ray.shutdown()
    near = cfg.near_dup_distance if kind == "images" else None
    old = one_task_finalize(out, near) if one_task else None
    t = report["timings_s"]
    c = report["counts"]
    assert c["written"] + c["rejected"] == n
    found: dict = {}
    if kind == "images":
        import pyarrow.parquet as pq

        rejects = pq.read_table(out / "rejects.parquet", columns=["key", "reason"]).to_pylist()
        got = {r["key"] for r in rejects if r["reason"] == "near_duplicate"}
        found = {
            "rejects_by_reason": report["rejects_by_reason"],
            "exact_copies": len(exact),
            "near_copies": len(near),
            "near_recall": round(len(got & near) / max(1, len(near)), 4),
            "near_precision": round(len(got & near) / max(1, len(got)), 4),
        }
    return {
        "kind": kind,
        "rows": n,
        "written": c["written"],
        "rejected": c["rejected"],
        "wall_s": round(wall, 1),
        "process_s": t["process"],
        # The copy aside (for the one-task finalize) ran inside the job's finalize step.
        "finalize_s": round(t["finalize"] - kept["copy_s"], 1),
        "finalize_share": round((t["finalize"] - kept["copy_s"]) / wall, 3),
        "one_task_finalize_s": None if old is None else round(old, 1),
        "rows_per_s": round(n / wall),
        # Every process of the run: driver, Ray's workers, raylet and GCS (the copy aside out).
        "cpu_us_per_row": round((rss.cpu_s - kept["copy_cpu_s"]) / n * 1e6, 1),
        "driver_peak_mb": round(rss.driver / 2**20),
        "driver_private_peak_mb": round(rss.driver_private / 2**20),
        "driver_private_after_process_mb": round(kept["driver_private_process_mb"]),
        "shard_samples": cfg.shard_samples,
        "chunks": report["chunks"]["total"],
        "worker_peak_mb": round(rss.worker / 2**20),
        "worker_peak_task": rss.worker_task,
        "worker_private_peak_mb": round(rss.worker_private / 2**20),
        "peak_by_task_mb": rss.tasks_mb(),
        **found,
    }


def driver_only(n: int, dup: float, partition_rows: int | None) -> dict:
    """The build alone, and the driver's private memory at each step: nothing of the bench's
    own (the copy aside, the monitor of every worker) runs in the driver beside it."""
    import threading

    import psutil
    import ray

    import pipeline.build.distributed as dist
    import pipeline.build.job as job
    from pipeline.build.job import run_build
    from pipeline.config import BuildConfig

    proc = psutil.Process()

    def private() -> float:
        return round(private_mb(proc), 1)

    marks: dict[str, float] = {}

    def marked(fn: Any, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            marks[f"{name} start"] = private()
            try:
                return fn(*args, **kwargs)
            finally:
                marks[f"{name} end"] = private()

        return call

    peak, stop = [0.0], threading.Event()

    def watch() -> None:
        while not stop.wait(0.2):
            peak[0] = max(peak[0], private())

    out = WORK / f"out{n}" / "build"
    shutil.rmtree(out.parent, ignore_errors=True)
    extra = {"dedup_partition_rows": partition_rows} if partition_rows else {}
    saved = job.finalize_distributed, dist.decide
    job.finalize_distributed = marked(job.finalize_distributed, "finalize")
    dist.decide = marked(dist.decide, "dedup passes")
    threading.Thread(target=watch, daemon=True).start()
    try:
        report = run_build(BuildConfig(input=str(manifest(n, dup)), output=str(out), **extra))
    finally:
        stop.set()
        job.finalize_distributed, dist.decide = saved
        ray.shutdown()
    return {
        "rows": n,
        "driver_private_mb": marks,
        "driver_private_peak_mb": peak[0],
        "timings_s": report["timings_s"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[250_000, 1_000_000])
    ap.add_argument("--dup", type=float, default=0.01)
    ap.add_argument("--kind", choices=["text", "images"], default="text")
    ap.add_argument("--shard-samples", type=int, help="rows per chunk (default: the build's)")
    ap.add_argument("--driver-only", action="store_true", help="the driver's memory by step")
    ap.add_argument(
        "--skip-one-task", action="store_true", help="no copy aside, no one-task finalize"
    )
    ap.add_argument("--dedup-partition-rows", type=int, help="claims a dedup task may hold")
    ap.add_argument(
        "--text-shards-per-chunk",
        type=int,
        help="shards' worth of inline text rows a chunk holds (default: the build's)",
    )
    args = ap.parse_args()
    if args.text_shards_per_chunk:  # the plan runs in this process: the setting is read here
        import pipeline.ingest.layout as layout

        layout.TEXT_SHARDS_PER_CHUNK = args.text_shards_per_chunk
    if args.driver_only:
        for n in args.sizes:
            print(json.dumps(driver_only(n, args.dup, args.dedup_partition_rows)), flush=True)
            shutil.rmtree(WORK / f"out{n}", ignore_errors=True)
        return
    results = []
    for n in args.sizes:
        r = run(
            n,
            args.dup,
            args.kind,
            args.shard_samples,
            args.dedup_partition_rows,
            not args.skip_one_task,
        )
        if args.kind == "text":  # the bare loop is the text build's per-row work
            rate, cpu = bare_loop(manifest(n, args.dup), min(n, 250_000))
            r["bare_loop_rows_per_s"], r["bare_loop_cpu_us_per_row"] = round(rate), round(cpu, 1)
            r["vs_bare_loop"] = round(r["rows_per_s"] / r["bare_loop_rows_per_s"], 3)
        results.append(r)
        print(json.dumps(r), flush=True)
        shutil.rmtree(WORK / f"out{n}", ignore_errors=True)


if __name__ == "__main__":
    main()
