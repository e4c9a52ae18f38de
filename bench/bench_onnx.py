"""onnxruntime against eager PyTorch on the graphs that `mmpipe export` writes (not a timed test).

    python bench/bench_onnx.py [--batch 64] [--repeats 5] [--device cpu|cuda] [--embed 600]

A run at the defaults (features: EfficientNet-Lite0 + MiniLM; train: mid fusion, d_model 256,
embed_dim 128) is exported, then each graph runs on the same batches in both runtimes, in
this process, with the same threads: ms per batch and the ratio eager / onnxruntime (> 1:
onnxruntime is faster). On cuda, eager uses bf16 autocast and onnxruntime its best provider
(TensorRT fp16, else CUDA). ``--embed N`` then runs `mmpipe embed` at its defaults on a
built sample corpus of N (bench_embed's trained run), once with the run and once with its
ONNX export, on one local Ray started before timing: the wall time of each whole job
(actor start-up and model loading included).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.corpus import cores

WORK = Path(__file__).resolve().parent / "_work" / "onnx"


def _time(fn, repeats: int) -> float:
    fn()  # warm-up: first-call allocation, provider compilation
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64, help="rows per batch (features default)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--embed", type=int, default=600, help="samples for the embed job; 0: skip")
    args = ap.parse_args()

    import torch

    from pipeline.device import autocast
    from pipeline.features.config import FeaturesConfig
    from pipeline.features.stages import encoder_info
    from pipeline.fusion.artifact import RunArtifact
    from pipeline.models.onnx_runtime import OnnxModel
    from pipeline.train import onnx_export
    from pipeline.train.export import export_run
    from tests.onnx_runs import make_run

    threads = cores()
    torch.set_num_threads(threads)
    shutil.rmtree(WORK, ignore_errors=True)
    features = {"shards": "-", "output": "-"}  # every other field at its default
    t = time.perf_counter()
    run = make_run(
        WORK / "run",
        "mid",
        features=features,
        d_model=256,
        embed_dim=128,
        encoders=encoder_info(FeaturesConfig(**features)),
    )
    record = export_run(str(run), "onnx")
    export_s = time.perf_counter() - t
    art = RunArtifact.open(str(run))
    graphs = [onnx_export.model_graph(art, art.load()), *onnx_export.encoder_graphs(art)]
    rows = []
    for g in graphs:
        module = g.module.to(args.device)
        session = OnnxModel(
            (run / "export" / f"{g.name}.onnx").read_bytes(), args.device, threads=threads
        )
        # The batch: the probe's rows repeated up to --batch (real shapes, real dtypes).
        xs = tuple(
            x.repeat(-(-args.batch // len(x)), *[1] * (x.dim() - 1))[: args.batch] for x in g.probe
        )
        on_dev = tuple(x.to(args.device) for x in xs)
        if g.name == "image_encoder":  # as the features stage feeds it: NHWC
            on_dev = (on_dev[0].to(memory_format=torch.channels_last),)

        def eager(module=module, on_dev=on_dev) -> None:
            with torch.inference_mode(), autocast("auto", args.device):
                module(*on_dev)
            if args.device == "cuda":
                torch.cuda.synchronize()

        eager_ms = _time(eager, args.repeats)
        ort_ms = _time(lambda session=session, xs=xs: session(*xs), args.repeats)
        rows.append(
            {
                "graph": f"{g.name}.onnx",
                "eager_ms": round(eager_ms, 2),
                "onnxruntime_ms": round(ort_ms, 2),
                "ratio": round(eager_ms / ort_ms, 2),
                "provider": session.providers[0],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    summary = {
        "device": args.device,
        "threads": threads,
        "batch": args.batch,
        "export_s": round(export_s, 1),
        "max_abs_diff": {k: max(v["max_abs_diff"].values()) for k, v in record["graphs"].items()},
        "graphs": rows,
    }
    if args.embed:
        summary["embed"] = embed_both(args.embed)
    print(json.dumps(summary, indent=2))


def embed_both(n: int) -> dict:
    """`mmpipe embed` with the eager run, then with its ONNX export, on the same Ray."""
    import os

    import ray

    from bench.bench_embed import prepare
    from pipeline.embed.config import load_embed_config
    from pipeline.embed.job import run_embed
    from pipeline.session import ray_session
    from pipeline.train.export import export_run

    root = prepare(n)
    export_run(str(root / "run"), "onnx")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    found = {}
    with ray_session(None):
        assert ray.is_initialized()  # Ray's start-up is not the model's
        for label, model in (
            ("eager", root / "run"),
            ("onnxruntime", root / "run" / "export" / "model.onnx"),
        ):
            out = WORK / f"store_{label}"
            shutil.rmtree(out, ignore_errors=True)
            cfg = {"shards": str(root / "b"), "model": str(model), "output": str(out)}
            t0 = time.perf_counter()
            rec = run_embed(load_embed_config(cfg), incremental=False, kind="embed", quiet=True)
            found[label] = {"rows": rec["rows"], "wall_s": round(time.perf_counter() - t0, 1)}
            print(json.dumps({label: found[label]}), flush=True)
    found["ratio"] = round(found["eager"]["wall_s"] / found["onnxruntime"]["wall_s"], 2)
    return found


if __name__ == "__main__":
    main()
