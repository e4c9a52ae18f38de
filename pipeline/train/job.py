"""`mmpipe train`: the fusion model under Ray Train TorchTrainer, with checkpoints, resume, lineage."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from pipeline import faults
from pipeline.errors import UserError
from pipeline.fingerprint import fingerprint
from pipeline.fusion.artifact import MODEL_FILE, Lineage, ModelInfo, save_run
from pipeline.io.fs import (
    absolute,
    exists,
    is_remote,
    join,
    list_files,
    write_bytes_atomic,
)
from pipeline.lifecycle import Output, prepare
from pipeline.progress import Progress
from pipeline.redact import redact_obj
from pipeline.train.config import TrainConfig
from pipeline.train.data import FeatureSet, open_features, ray_split
from pipeline.train.matching import Relations
from pipeline.train.metrics import TrainProgressLine
from pipeline.train.worker import train_worker

RUN_NAME = "fusion"


def train_fingerprint(cfg: TrainConfig, fs_: FeatureSet) -> str:
    """What decides the trained model: the config's learning fields and the data's manifest."""
    fields = cfg.model_dump(
        exclude={"data", "output", "storage_path", "workers", "cpus_per_worker", "max_failures"}
    )
    return fingerprint({"cfg": fields, "data": fs_.manifest_sha256})


def lineage(cfg: TrainConfig, fs_: FeatureSet) -> Lineage:
    """What every checkpoint records: the data it was trained on and how it was preprocessed."""
    return Lineage(
        features=fs_.root,
        features_fingerprint=fs_.fingerprint,
        features_manifest_sha256=fs_.manifest_sha256,
        preprocessing=fs_.preprocessing,
        train_config=cfg.model_dump(),
    )


def model_info(cfg: TrainConfig, fs_: FeatureSet, relations: Relations | None = None) -> ModelInfo:
    """``model.json`` of a run of ``cfg`` on ``fs_`` (the weights' hash is added on save)."""
    same = {"preset", "image_size", "max_text_tokens", "d_model", "embed_dim", "label_field"}
    return ModelInfo(
        fusion=cfg.preset or cfg.fusion,
        fusion_type=cfg.fusion,
        dims=fs_.dims,
        classes=fs_.classes,
        dropout=cfg.dropout,
        lineage=lineage(cfg, fs_),
        relations=relations.pairs if relations else (),
        matching=tuple(relations.classes) if relations else (),
        **cfg.model_dump(include=same),
    )


def relations_of(cfg: TrainConfig, fs_: FeatureSet) -> Relations | None:
    """The relations the labels mark (pipeline/train/matching.py), when the config looks."""
    if cfg.relations == "off" or cfg.preset or not cfg.label_field or len(fs_.classes) < 2:
        return None
    from pipeline.train.data import split_batches
    from pipeline.train.matching import find_relations

    train = split_batches(fs_, "train", cfg.val_fraction, cfg.label_field)
    return find_relations(train, fs_.classes)


def train_in_process(cfg: TrainConfig) -> str:
    """Train a features model in this process, without Ray, and write the run's model files.

    For tests, benchmarks and debugging; ``run_train`` is the job. Returns the weights' SHA-256.
    """
    from pipeline.train.data import local_split
    from pipeline.train.loop import fit_local

    fs_ = open_features(cfg.data, cfg.modalities, cfg.label_field)
    train = local_split(fs_, "train", cfg.val_fraction, cfg.label_field)
    val = local_split(fs_, "val", cfg.val_fraction, cfg.label_field)
    relations = relations_of(cfg, fs_)
    tr = fit_local(cfg, train, val, fs_.dims, len(fs_.classes), relations=relations)
    return save_run(cfg.output, model_info(cfg, fs_, relations), tr.final_weights()).model_sha256


def stop_words(cfg: TrainConfig, pr: dict[str, Any]) -> str:
    """Why and when the run ended, in words."""
    if pr.get("stopped") == "early_stop":
        return (
            f"stopped early after epoch {pr['epoch']} of {cfg.epochs}: no better "
            f"{pr.get('selected_by') or cfg.early_stop_metric} for {cfg.early_stop_patience} epochs"
        )
    if pr.get("stopped") == "max_steps":
        return f"stopped at max_steps {cfg.max_steps} (epoch {pr['epoch']})"
    return f"{pr['epoch']} epochs"


def val_words(m: dict[str, Any]) -> str:
    acc = m.get("val_acc")
    loss = m.get("val_loss")
    return f"val_loss {loss:.4f}" + (f", val_acc {acc:.4f}" if acc is not None else "")


def _checkpoints(run_path: str) -> int:
    """Checkpoints an unfinished run left (Ray Train's ``checkpoint_*`` folders)."""
    if not exists(run_path):
        return 0
    return len({f.split("/")[0] for f in list_files(run_path) if f.startswith("checkpoint_")})


def without_absent_labels(
    cfg: TrainConfig,
    classes: list[str],
    quiet: bool = False,
    say: Callable[[str], None] | None = None,
) -> TrainConfig:
    """Captions with no labels train contrastive-only: the default label field, absent from
    every sample, turns the classifier off (eval then scores retrieval by Recall@K). A label
    field the user named and no sample has is a mistake, and stops the run.

    Raises:
        UserError: a non-default label field that no sample's metadata holds.
    """
    if not cfg.label_field or classes or cfg.w_classify == 0:
        return cfg
    default = TrainConfig.model_fields["label_field"].default
    if cfg.label_field != default or cfg.w_contrastive == 0:
        raise UserError(
            f"train config: label_field {cfg.label_field!r} is in no sample's metadata; "
            "set label_field: null to train without a classifier"
        )
    line = (
        f"no sample's metadata has a {default!r}; training contrastive-only "
        "(eval scores retrieval by Recall@K)"
    )
    if say is not None:
        say(line)
    elif not quiet:
        print(f"train: {line}", file=sys.stderr)
    return cfg.model_copy(update={"label_field": None})


def run_train(
    cfg: TrainConfig,
    *,
    address: str | None = None,
    resume: bool = False,
    quiet: bool = False,
    fail_at_step: int | None = None,
) -> dict[str, Any]:
    """Train; write ``model.pt``, ``model.json``, ``metrics.jsonl`` and ``train.json`` (last)."""

    from pipeline.device import cluster_has_gpu
    from pipeline.session import object_store_stats, ray_session

    t0 = time.perf_counter()
    # Workers may run in another directory: local paths travel absolute.
    cfg = cfg.model_copy(update={"data": absolute(cfg.data), "output": absolute(cfg.output)})
    prepare(cfg.output, address)
    with Progress("train", unit="steps", quiet=quiet) as progress:
        progress.phase(f"reading {cfg.data}")
        if cfg.preset:
            from pipeline.train.presets import e2e_split, open_shards

            fs_ = open_shards(cfg.data, cfg.label_field, cfg.image_size, cfg.max_text_tokens)
        else:
            fs_ = open_features(cfg.data, cfg.modalities, cfg.label_field)
        cfg = without_absent_labels(cfg, fs_.classes, quiet, progress.say)
        out, fp = cfg.output, train_fingerprint(cfg, fs_)
        output = Output(
            "train",
            out,
            fp,
            marker="train.json",
            started="_started.json",
            what="training run",
            unit=("checkpoint", "checkpoints"),
            overwritable=False,
        )
        report = output.finished()
        if report is not None:
            progress.quiet = True
            print(f"train: already complete in {out}; nothing to do", file=sys.stderr)
            return report
        storage = cfg.storage_path or (
            join(out, "ray") if is_remote(out) else os.path.abspath(join(out, "ray"))
        )
        output.claim(
            redact_obj(cfg.model_dump()),
            work_done=lambda: _checkpoints(join(storage, RUN_NAME)),
            resume=resume,
            say=progress.say,
        )
        write_bytes_atomic(
            join(out, "config.json"), json.dumps(redact_obj(cfg.model_dump()), indent=2).encode()
        )
        # Tests only: the last worker's process dies at that step, once (pipeline/faults.py).
        fault = (
            faults.spec("train_step", fail_at_step, join(out, ".fault_injected"))
            if fail_at_step
            else None
        )
        progress.phase("starting Ray")
        with ray_session(address, job="train"):
            from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
            from ray.train.torch import TorchTrainer

            has_gpu = cluster_has_gpu()  # the cluster's GPUs, not the driver's
            use_gpu = cfg.gpus == "on" or (cfg.gpus == "auto" and has_gpu)
            if cfg.gpus == "on" and not has_gpu:
                raise UserError(
                    "train config: gpus is 'on' but the Ray cluster has no GPU; use auto or off"
                )
            if cfg.preset:
                train_ds, val_ds = e2e_split(fs_, "train", cfg), e2e_split(fs_, "val", cfg)
            else:
                train_ds = ray_split(fs_, "train", cfg.val_fraction, cfg.label_field)
                val_ds = ray_split(fs_, "val", cfg.val_fraction, cfg.label_field)
            progress.phase("reading the training and validation splits")
            if cfg.cache_data:
                # Features are compact: keep both splits in the object store (it spills to disk
                # when full) so that epochs re-read blocks instead of re-running the pipeline.
                train_ds, val_ds = train_ds.materialize(), val_ds.materialize()
            train_rows = train_ds.count()  # the schedule needs the split's length
            if train_rows < cfg.batch_size * cfg.workers:
                raise UserError(
                    f"train: {train_rows} training rows are fewer than batch_size x workers "
                    f"({cfg.batch_size} x {cfg.workers}); lower batch_size"
                )
            stats = None
            if cfg.standardize and not cfg.preset:
                from pipeline.train.standardize import ray_stats

                stats = ray_stats(train_ds, fs_.dims)  # O(dims) on the driver, streamed
            progress.phase("testing whether the labels mark matching pairs")
            relations = relations_of(cfg, fs_)  # at most MAX_ROWS rows on the driver
            if relations is not None:
                progress.say(
                    f"classes {relations.classes} mark matching pairs: the contrastive loss "
                    f"uses only their rows; the classifier sees {list(relations.pairs)}"
                )
            config = {
                "cfg": cfg.model_dump(),
                "dims": fs_.dims,
                "classes": fs_.classes,
                "run_dir": out,
                "train_rows": train_rows,
                "stats": stats,
                "relations": relations,
                "lineage": dataclasses.asdict(lineage(cfg, fs_)),
                "fault": fault,
            }
            trainer = TorchTrainer(
                train_worker,
                train_loop_config=config,
                scaling_config=ScalingConfig(
                    num_workers=cfg.workers,
                    use_gpu=use_gpu,
                    resources_per_worker={"CPU": cfg.cpus_per_worker},
                ),
                run_config=RunConfig(
                    name=RUN_NAME,
                    storage_path=storage,
                    failure_config=FailureConfig(max_failures=cfg.max_failures),
                    checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
                ),
                datasets={"train": train_ds, "val": val_ds},
            )
            per_epoch = max(1, train_rows // (cfg.batch_size * cfg.workers) // cfg.grad_accum)
            total = cfg.max_steps or cfg.epochs * per_epoch
            progress.phase("starting the training workers")
            with TrainProgressLine(out, total, progress):
                result = trainer.fit()
            progress.finish()
            store = object_store_stats()  # the splits live in the object store: did they spill?
            if result.error is not None:
                raise result.error
            assert result.checkpoint is not None, "training reported no checkpoint"
            with result.checkpoint.as_directory() as d:
                from pipeline.train.loop import final_weights, load_state

                with open(os.path.join(d, "state.pt"), "rb") as f:
                    state = load_state(f.read())
                with open(os.path.join(d, "meta.json")) as f:
                    meta = json.load(f)
    save_run(out, model_info(cfg, fs_, relations), final_weights(state))
    pr = state["progress"]
    report = {
        "fingerprint": fp,
        # The saved model's validation: its epoch's, which eval reproduces on the same rows.
        "metrics": {**pr.get("best_metrics", {}), "epoch": pr.get("best_epoch")},
        "last_epoch": meta["metrics"],
        "best_epoch": pr.get("best_epoch"),
        "selected_by": pr.get("selected_by") or cfg.early_stop_metric,
        "stopped": pr.get("stopped") or "epochs",
        "progress": pr,
        "train_rows": train_rows,
        "model": MODEL_FILE,
        "checkpoint": result.checkpoint.path,
        "seconds": round(time.perf_counter() - t0, 2),
        "workers": cfg.workers,
        "gpu": use_gpu,
        "object_store": store,
        "relations": relations.summary() if relations else None,
    }
    output.commit(report, json.dumps(report, indent=2, default=str))  # the marker, last
    print(  # --quiet too: the summary stays
        f"train: {cfg.fusion} fusion, {pr['step']} steps, {stop_words(cfg, pr)}; "
        f"saved epoch {pr.get('best_epoch')}: {val_words(report['metrics'])}, "
        f"in {report['seconds']}s -> {out}"
        + (
            f"; object store spilled {store['spilled_mib']:.0f} MiB"
            if store.get("spilled_mib")
            else ""
        ),
        file=sys.stderr,
    )
    return report
