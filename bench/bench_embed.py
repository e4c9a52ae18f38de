"""Embed and refresh against bare loops measured in the same run (not a timed test).

    python bench/bench_embed.py [--n 2000] [--noop-rows 100000] [--planning-only]

Prints: the embed pipeline's throughput against one bare loop per core (read, preprocess,
encoders + model, write Parquet), the share of Parquet writing, the cost of a 1% refresh
against a full run, and the wall time of a no-op refresh over a store of --noop-rows samples,
with refresh planning from the build's shards.parquet beside one pass over its index.
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

import numpy as np

from bench.corpus import cores

WORK = Path(__file__).resolve().parent / "_work" / "embed"
FEATURES = {
    "batch_size": 32,
    "audio": {"name": "audio_cnn", "weights": "random"},
    "audio_frames": 100,
    "actor_num_cpus": 0.5,
}


def prepare(n: int) -> Path:
    """A sample corpus of n, built into shards of 100, its features and a trained model (cached)."""
    from pipeline.build.job import run_build
    from pipeline.config import BuildConfig
    from pipeline.features.config import load_features_config
    from pipeline.features.job import run_features
    from pipeline.sample_corpus import write_corpus
    from pipeline.train.config import load_train_config
    from pipeline.train.job import train_in_process

    root = WORK / f"n{n}"
    if (root / "run" / "model.json").exists():
        return root
    write_corpus(str(root / "c"), n=n, seed=11, broken=False)
    run_build(
        BuildConfig(
            input=str(root / "c" / "manifest.jsonl"), output=str(root / "b"), shard_samples=100
        ),
        quiet=True,
    )
    run_features(
        load_features_config({**FEATURES, "shards": str(root / "b"), "output": str(root / "f")}),
        quiet=True,
    )
    train_in_process(
        load_train_config(
            {"data": str(root / "f"), "output": str(root / "run"), "epochs": 10, "batch_size": 64}
        )
    )
    return root


def _bare(urls: list[str], run: str, out: str, start_at: float, q) -> None:
    """One core's bare loop: the same stages called directly, single-threaded, warm-up excluded."""
    import torch

    torch.set_num_threads(1)
    from pipeline.embed.model import resolve_model
    from pipeline.embed.stages import EmbedStage, EmbedWriter
    from pipeline.features.stages import FeaturePreprocess
    from pipeline.io.shards import read_shard

    ref = resolve_model(run)
    fcfg = ref.features_config(shards="-", output=out, batch_size=32, actor_num_cpus=1.0)
    pre, emb = FeaturePreprocess(fcfg, ref.image_preset), EmbedStage(fcfg, ref)
    writer = EmbedWriter(out, ref, "float32", [])

    def batches(url: str):
        for t in read_shard(url, frozenset(), 32, 64 << 20):
            yield {c: t.column(c).to_numpy(zero_copy_only=False) for c in t.column_names}

    writer(emb(pre(next(batches(urls[0])))))  # warm-up: models loaded, first batch run
    time.sleep(max(0.0, start_at - time.time()))
    t0, rows = time.perf_counter(), 0
    for url in urls:
        for b in batches(url):
            rows += int(writer(emb(pre(b)))["rows"].sum())
    q.put((rows, time.perf_counter() - t0))


def bare_on_cores(urls: list[str], run: str, n_cores: int) -> float:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    start_at = time.time() + 25.0  # after every process has loaded its models
    procs = [
        ctx.Process(target=_bare, args=(urls[i::n_cores], run, str(WORK / f"bare{i}"), start_at, q))
        for i in range(n_cores)
    ]
    for p in procs:
        p.start()
    results = [q.get(timeout=1800) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    return sum(r for r, _ in results) / max(s for _, s in results)


def grow(root: Path, extra: int) -> Path:
    """A second build of the same corpus plus ``extra`` new samples at the end."""
    from pipeline.build.job import run_build
    from pipeline.config import BuildConfig

    out = root / f"b_plus{extra}"
    if (out / "build.json").exists():
        return out
    rows = [json.loads(x) for x in (root / "c" / "manifest.jsonl").read_text().splitlines()]
    new = [
        dict(rows[i], key=f"new{i:05d}", text=f"new {i}: " + rows[i]["text"]) for i in range(extra)
    ]
    (root / "c" / f"manifest_plus{extra}.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows + new)
    )
    run_build(
        BuildConfig(
            input=str(root / "c" / f"manifest_plus{extra}.jsonl"),
            output=str(out),
            shard_samples=100,
        ),
        quiet=True,
    )
    return out


def noop_store(run: Path, n: int) -> tuple[Path, Path]:
    """A build index of n samples (1,000 per shard) and a store version matching it.

    Embedding n samples for real would take hours on 2 CPUs; the no-op path reads only the
    index and the manifest, so the version's files hold random unit vectors of the right schema.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.embed.config import load_embed_config
    from pipeline.embed.job import file_schema, layout_of
    from pipeline.embed.model import resolve_model
    from pipeline.embed.plan import scan_input
    from pipeline.embed.store import commit_version, set_latest, version_dir

    root = WORK / f"noop{n}"
    build, store = root / "b", root / "store"
    if (store / "latest").exists() and (build / "shards.parquet").exists():
        return build, store
    shutil.rmtree(root, ignore_errors=True)
    (build / "shards").mkdir(parents=True)
    per = 1000
    shards = [f"shards/{i:06d}.tar" for i in range((n + per - 1) // per)]
    for s in shards:
        (build / s).write_bytes(b"\0" * 1024)
    keys = [f"k{i:09d}" for i in range(n)]
    index = pa.table(
        {
            "key": keys,
            "shard": [shards[i // per] for i in range(n)],
            "content_hash": [f"{hash((k, 7)) & (2**64 - 1):016x}" for k in keys],
        }
    )
    part = build / "index" / "part-00000.parquet"
    part.parent.mkdir(exist_ok=True)
    pq.write_table(index, part, row_group_size=per)
    # shards.parquet as finalize writes it: one digest per shard.
    from pipeline.embed.plan import index_digests
    from pipeline.io.parquet import to_table, write_table
    from schemas import SHARDS_SCHEMA

    rows = [
        {
            "shard": f"shards/{s}.tar",
            "samples": v.count,
            "digest": v.digest,
            "index_file": "index/part-00000.parquet",
            "index_row_groups": v.span[1] if v.span else [],
        }
        for s, v in sorted(index_digests(str(part)).items())
    ]
    write_table(
        str(build / "shards.parquet"), to_table(rows, SHARDS_SCHEMA), SHARDS_SCHEMA, "shards"
    )
    (build / "build.json").write_text("{}")
    ref = resolve_model(str(run))
    cfg = load_embed_config({"shards": str(build), "model": str(run), "output": str(store)})
    schema = file_schema(ref, cfg)
    _, found = scan_input(str(build))
    vdir = version_dir(str(store), "v000001")
    rng = np.random.default_rng(0)
    files = []
    for j, s in enumerate(shards):
        stem = s.split("/")[1].split(".")[0]
        sl = index.slice(j * per, per)
        x = rng.normal(size=(sl.num_rows, ref.dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        vec = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), ref.dim)
        cols = {
            "key": sl["key"],
            "shard": [stem] * sl.num_rows,
            "content_hash": sl["content_hash"],
            "model_id": [ref.model_id] * sl.num_rows,
            "model_version": [ref.version] * sl.num_rows,
            **{f"has_{m}": [True] * sl.num_rows for m in ("image", "text", "audio")},
            **{f"{m}_emb": vec for m in (*ref.modalities, "fused")},
            "created_at": pa.array([0] * sl.num_rows, pa.timestamp("us", tz="UTC")),
        }
        os.makedirs(vdir, exist_ok=True)
        pq.write_table(pa.table(cols, schema=schema), os.path.join(vdir, f"{stem}.parquet"))
        files.append(
            {
                "path": f"{stem}.parquet",
                "shard": stem,
                "rows": sl.num_rows,
                "rejected": 0,
                "bytes": os.path.getsize(os.path.join(vdir, f"{stem}.parquet")),
                "digest": found[stem].digest,
            }
        )
    manifest = {
        "schema_version": 1,
        "version": "v000001",
        "model_id": ref.model_id,
        "model_version": ref.version,
        "model_path": ref.weights_url,
        "layout": layout_of(ref, cfg),
        "dim": ref.dim,
        "storage": "float32",
        "normalization": "l2",
        "preprocessing": ref.preprocessing,
        "created_at": "2026-01-01T00:00:00+00:00",
        "rows": n,
        "rejected": 0,
        "files": files,
    }
    commit_version(str(store), "v000001", manifest)
    set_latest(str(store), "v000001")
    return build, store


def noop_refresh(root: Path, rows: int) -> dict:
    """The `mmpipe refresh` CLI over an unchanged store of ``rows``, and its planning alone:
    from shards.parquet (what the build writes) and from one pass over the index."""
    from pipeline.embed.plan import index_digests, scan_input

    build, store = noop_store(root / "run", rows)
    t0 = time.perf_counter()
    subprocess.run(
        [
            str(Path(sys.executable).with_name("mmpipe")),
            "refresh",
            "--shards",
            str(build),
            "--model",
            str(root / "run"),
            "--output",
            str(store),
        ],
        check=True,
    )
    wall = time.perf_counter() - t0
    t0 = time.perf_counter()
    scan_input(str(build))
    from_digests = time.perf_counter() - t0
    t0 = time.perf_counter()
    index_digests(str(build / "index" / "part-00000.parquet"))
    from_index = time.perf_counter() - t0
    return {
        "noop_refresh_s": {"rows": rows, "wall_s": round(wall, 2)},
        "planning_s": {
            "shards_parquet": round(from_digests, 3),
            "index_pass": round(from_index, 3),
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--noop-rows", type=int, default=100_000)
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--planning-only", action="store_true", help="only the no-op refresh part")
    args = ap.parse_args()
    import ray

    from pipeline.embed.config import load_embed_config
    from pipeline.embed.job import run_embed
    from pipeline.io.shards import resolve_shards
    from pipeline.session import ray_session

    n_cores = cores()
    root = prepare(args.n)
    if args.planning_only:
        print(json.dumps(noop_refresh(root, args.noop_rows), indent=1))
        return
    results: dict = {"cores": n_cores, "n": args.n}
    urls = resolve_shards(str(root / "b"))
    bare = bare_on_cores(urls, str(root / "run"), n_cores)
    results["bare_rows_per_s"] = round(bare, 2)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    out = WORK / "store"
    shutil.rmtree(out, ignore_errors=True)
    # Two encoder+model actors of one thread each, beside the preprocessing tasks: on 2 CPUs
    # one actor left the preprocessing core idle half the time (docs/benchmarks.md).
    cfg = dict(
        shards=str(root / "b"),
        model=str(root / "run"),
        output=str(out),
        batch_size=32,
        actor_num_cpus=0.5,
        actors=args.actors,
    )
    with ray_session(None):
        assert ray.is_initialized()  # Ray is up before timing: its start-up is not ours
        t0 = time.perf_counter()
        full = run_embed(load_embed_config(cfg), incremental=False, kind="embed", quiet=True)
        wall = time.perf_counter() - t0
        results["full"] = {
            "rows": full["rows"],
            "wall_s": round(wall, 2),
            **full["timings"],
            "write_seconds": full["write_seconds"],
        }
        results["embed_ratio_steady"] = round(full["timings"]["steady_rows_per_s"] / bare, 3)
        results["embed_ratio_wall"] = round(full["rows"] / wall / bare, 3)
        results["write_share_of_wall"] = round(full["write_seconds"] / wall, 4)
        for extra in (1, args.n // 100):
            grown = grow(root, extra)
            t0 = time.perf_counter()
            rec = run_embed(load_embed_config({**cfg, "shards": str(grown)}), quiet=True)
            secs = round(time.perf_counter() - t0, 2)
            results[f"refresh_plus{extra}"] = {
                "embedded": rec["embedded"],
                "wall_s": secs,
                "shards_carried": rec["shards_carried"],
                **rec["timings"],
            }
            # Back to the base corpus for the next size: a refresh that removes the extra rows.
            run_embed(load_embed_config(cfg), quiet=True)
    results.update(noop_refresh(root, args.noop_rows))
    one, pct = results["refresh_plus1"]["wall_s"], results[f"refresh_plus{args.n // 100}"]["wall_s"]
    results["refresh_1pct_over_full"] = round(pct / results["full"]["wall_s"], 3)
    results["refresh_1pct_variable_over_full_variable"] = round(
        (pct - one) / max(1e-9, results["full"]["wall_s"] - one), 3
    )
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
