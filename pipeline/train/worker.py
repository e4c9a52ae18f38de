"""Ray Train's per-worker loop: one process per worker, DDP across them, checkpoints by rank 0."""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Any

from pipeline.train.config import TrainConfig
from pipeline.train.metrics import MetricsLog


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train's per-worker loop: one process per worker, DDP across them."""
    import ray.train
    import ray.train.torch as rtt
    import torch

    from pipeline.train.loop import Trainer, load_state, save_state, seed_everything, val_metrics

    cfg = TrainConfig(**config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    seed_everything(cfg.seed)  # the same initial weights on every rank
    device = rtt.get_device()
    steps = config["train_rows"] // (cfg.batch_size * world)
    tr = Trainer(
        cfg,
        config["dims"],
        len(config["classes"]),
        steps,
        device,
        config["stats"],
        config.get("relations"),
    )
    ckpt = ray.train.get_checkpoint()
    log_lines = 0
    if ckpt is not None:  # a restart after a failure, or --resume
        with ckpt.as_directory() as d:
            with open(os.path.join(d, "state.pt"), "rb") as f:
                tr.load_state_dict(load_state(f.read()))
            with open(os.path.join(d, "meta.json")) as mf:
                log_lines = int(json.load(mf).get("log_lines", 0))
    if world > 1:
        tr.model = rtt.prepare_model(tr.core, move_to_device=False)
    train_shard, val_shard = (
        ray.train.get_dataset_shard("train"),
        ray.train.get_dataset_shard("val"),
    )
    log = MetricsLog(config["run_dir"], enabled=rank == 0)
    if ckpt is not None:
        # Work after the checkpoint was lost with the failed workers: so are its metric rows.
        log.lines = log.lines[:log_lines]
        log.lines.append(
            json.dumps({"kind": "restore", "step": tr.progress.step, "epoch": tr.progress.epoch})
        )
    if rank == world - 1:  # the reliability tests' fault: this worker dies at a step, once
        log.fault = config.get("fault")

    def report(metrics: dict[str, Any]) -> None:
        metrics = {**metrics, "step": tr.progress.step, "epoch": tr.progress.epoch}
        if rank != 0:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "state.pt"), "wb") as f:
                f.write(save_state(tr.state_dict()))
            with open(os.path.join(d, "meta.json"), "w") as f:
                json.dump(
                    {
                        "metrics": metrics,
                        "lineage": config["lineage"],
                        "log_lines": len(log.lines),
                        "classes": config["classes"],
                        "dims": config["dims"],
                    },
                    f,
                )
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))

    every = cfg.checkpoint_every_steps
    fmt = "numpy" if cfg.preset else "pyarrow"  # presets carry pixel tensors
    while tr.progress.epoch < cfg.epochs and not tr.progress.done:
        batches = train_shard.iter_batches(
            batch_size=cfg.batch_size,
            batch_format=fmt,
            drop_last=True,
            local_shuffle_buffer_size=cfg.batch_size * 8,
            local_shuffle_seed=cfg.seed * 100003 + tr.progress.epoch,
        )
        t0 = time.perf_counter()
        tr.train_epoch(
            batches,
            on_step=log.step,
            should_checkpoint=lambda: bool(every) and tr.progress.step % every == 0,  # type: ignore[operator]
            checkpoint=lambda: report({"kind": "step"}),
        )
        tot = tr.evaluate(val_shard.iter_batches(batch_size=cfg.batch_size, batch_format=fmt))
        if world > 1:
            t = torch.tensor(
                [tot["loss"], tot["rows"], tot["correct"], tot["labelled"]], device=device
            )
            torch.distributed.all_reduce(t)
            tot = dict(zip(("loss", "rows", "correct", "labelled"), t.tolist()))
        val = val_metrics(tot)
        stop = tr.end_epoch(val) or tr.reached_max_steps()
        metrics = {
            "kind": "epoch",
            **val,
            "epoch_seconds": time.perf_counter() - t0,
            "best_epoch": tr.progress.best_epoch,
            **({"stopped": tr.progress.stopped} if stop else {}),
        }
        log.epoch({**metrics, "epoch": tr.progress.epoch, "step": tr.progress.step})
        report(metrics)
        if stop:
            break
