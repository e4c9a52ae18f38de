"""Training steps/s through Ray Train against a plain torch loop (same model, data, threads).

    python bench/bench_train.py [--rows 16384] [--batch 256] [--epochs 4]
    python bench/bench_train.py --gpu          # no Ray: the training step on CUDA, AMP on/off

Writes a synthetic features directory (the schema `mmpipe features` writes, real dims), then
times steady-state steps (the first epoch, with start-up, is left out on both sides).
Not a test; prints ratios for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

WORK = Path(__file__).resolve().parent / "_work"
DIMS = {"image": 6400, "text": 1408, "audio": 256}  # efficientnet_lite0+grid, minilm_bow, audio_cnn


def synthetic_features(root: Path, rows: int, n_classes: int = 6, seed: int = 0) -> None:
    """A features directory with class-structured embeddings, in the features schema."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from schemas import features_schema

    if (root / "_SUCCESS").exists():
        return
    rng = np.random.default_rng(seed)
    (root / "parts" / "s").mkdir(parents=True, exist_ok=True)
    parts = []
    per = 4096
    for p, start in enumerate(range(0, rows, per)):
        n = min(per, rows - start)
        y = rng.integers(0, n_classes, n)
        cols: dict = {"key": [f"k{start + i:08d}" for i in range(n)], "shard": ["s"] * n}
        for j, (m, d) in enumerate(DIMS.items()):
            protos = np.random.default_rng(10 + j).normal(size=(n_classes, d)).astype(np.float32)
            x = protos[y] + rng.normal(size=(n, d)).astype(np.float32)
            cols[f"{m}_emb"] = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), d)
        for m in ("image", "text", "audio"):
            cols[f"has_{m}"] = [True] * n
        cols["meta"] = [json.dumps({"label": f"c{v}"}) for v in y]
        name = f"parts/s/{p:04d}.parquet"
        pq.write_table(pa.table(cols, schema=features_schema(DIMS)), root / name)
        parts.append(name)
    report = {
        "fingerprint": "synthetic",
        "parts": parts,
        "config": {},
        "encoders": {m: {"dim": d, "encoder": f"{m}:synthetic"} for m, d in DIMS.items()},
    }
    (root / "features.json").write_text(json.dumps(report))
    (root / "_SUCCESS").write_text("")


def steps_per_s(rows: list[dict], first_epoch: int = 1) -> float:
    ts = [
        (r["time"], r["step"])
        for r in rows
        if r.get("kind", "step") == "step" and r["epoch"] >= first_epoch
    ]
    (ta, sa), (tb, sb) = ts[0], ts[-1]
    return (sb - sa) / (tb - ta)


def bench_cpu(args: argparse.Namespace) -> dict:
    import torch

    from pipeline.train.config import TrainConfig
    from pipeline.train.data import local_split, open_features
    from pipeline.train.job import run_train
    from pipeline.train.loop import fit_local

    data = WORK / f"train_feats_{args.rows}"
    synthetic_features(data, args.rows)
    threads = args.threads
    common = dict(
        data=str(data),
        batch_size=args.batch,
        epochs=args.epochs,
        early_stop_patience=None,
        val_fraction=0.05,
        fusion=args.fusion,
    )
    # Plain loop: this process, `threads` intra-op threads, batches from an in-memory table.
    torch.set_num_threads(threads)
    fs_ = open_features(str(data), None, "label")
    train, val = local_split(fs_, "train", 0.05, "label"), local_split(fs_, "val", 0.05, "label")
    log: list[dict] = []
    fit_local(
        TrainConfig(output="/unused", **common), train, val, fs_.dims, len(fs_.classes), log=log
    )
    bare = steps_per_s(log)
    # Ray Train: one worker with the same threads, data through Ray Data's get_dataset_shard.
    out = WORK / f"train_run_{int(time.time())}"
    os.environ["OMP_NUM_THREADS"] = str(threads)
    cfg = TrainConfig(output=str(out), workers=1, cpus_per_worker=threads, **common)
    run_train(cfg, quiet=True)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    ray_sps = steps_per_s(rows)
    return {
        "rows": args.rows,
        "batch": args.batch,
        "threads": threads,
        "fusion": args.fusion,
        "plain_steps_per_s": bare,
        "ray_train_steps_per_s": ray_sps,
        "ratio": ray_sps / bare,
    }


def bench_gpu(args: argparse.Namespace) -> dict:
    """The same Trainer on CUDA, without Ray: steps/s with bf16 autocast and in fp32, and how
    much of a step is the host-side batch preparation (Arrow -> tensors -> device)."""
    import pyarrow as pa
    import torch

    from pipeline.train.config import TrainConfig
    from pipeline.train.data import local_split, open_features, to_tensors
    from pipeline.train.loop import Trainer

    data = Path(args.gpu_data)
    synthetic_features(data, args.rows)
    fs_ = open_features(str(data), None, "label")
    train = local_split(fs_, "train", 0.05, "label")
    res: dict = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "rows": train.num_rows,
    }
    for fusion in ("mid", "early"):  # log_every_steps=50: metric reads wait for the GPU
        for amp in ("bf16", "off"):
            cfg = TrainConfig(
                data=str(data),
                output="/unused",
                batch_size=args.batch,
                epochs=1,
                amp=amp,
                fusion=fusion,
                early_stop_patience=None,
                d_model=512,
                embed_dim=256,
                log_every_steps=50,
            )
            tr = Trainer(cfg, fs_.dims, len(fs_.classes), train.num_rows // args.batch, "cuda")
            batches = [
                train.slice(i, args.batch)
                for i in range(0, train.num_rows - args.batch + 1, args.batch)
            ]
            tr.train_epoch(batches[:5])  # warm-up
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            tr.train_epoch(batches)
            torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            t1 = time.perf_counter()
            for b in batches:
                to_tensors(b, fs_.dims, "cuda")
            torch.cuda.synchronize()
            prep = time.perf_counter() - t1
            res[f"{fusion}_{amp}"] = {
                "steps_per_s": len(batches) / dt,
                "samples_per_s": len(batches) * args.batch / dt,
                "batch_prep_share": prep / dt,
            }
            del tr
    assert pa
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=16384)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--fusion", default="mid")
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--gpu-data", default="/tmp/mmpipe_train_feats")
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.gpu:
        res = bench_gpu(args)
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        res = bench_cpu(args)
    print(json.dumps(res, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
