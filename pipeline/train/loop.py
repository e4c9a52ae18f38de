"""The training step and epoch loop in plain torch, with exact checkpoint state (Ray-free)."""

from __future__ import annotations

import contextlib
import io
import math
import queue
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from pipeline.device import amp_dtype
from pipeline.fusion.artifact import build_model
from pipeline.fusion.loss import fusion_loss
from pipeline.models.weights import load_tensors
from pipeline.train.config import TrainConfig
from pipeline.train.data import to_tensors
from pipeline.train.matching import Relations


@dataclass
class TrainProgress:
    """Where training stands; saved in every checkpoint so that a resume continues exactly."""

    epoch: int = 0  # the epoch in progress
    epoch_batches: int = 0  # batches of that epoch already consumed
    step: int = 0  # optimizer steps so far
    best: float = math.inf  # the watched metric's best score, lower is better (acc negated)
    bad_epochs: int = 0
    done: bool = False
    best_epoch: int = 0  # epochs completed when the best score was reached (0: none yet)
    best_metrics: dict[str, Any] = field(default_factory=dict)  # that epoch's validation
    stopped: str = ""  # why training ended: early_stop, epochs or max_steps
    selected_by: str = ""  # the metric that picked the kept epoch (early_stop_metric resolved)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    np_state: Any = np.random.get_state()
    kind, keys, pos, has_gauss, cached = np_state
    # Plain types only: a checkpoint loads with weights_only=True, which refuses numpy objects.
    state = {
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """Owns model, optimizer, schedule, scaler and progress. ``model`` may be wrapped (DDP)
    after construction; ``core`` is always the bare FusionModel."""

    def __init__(
        self,
        cfg: TrainConfig,
        dims: dict[str, int],
        n_classes: int,
        steps_per_epoch: int,
        device: Any = "cpu",
        stats: dict[str, Any] | None = None,
        relations: Relations | None = None,
    ) -> None:
        self.cfg, self.dims, self.device = cfg, dims, torch.device(device)
        spec = cfg.model_spec(dims, n_classes, relations.pairs if relations else ())
        model = build_model(spec, dropout=cfg.dropout, freeze_fraction=cfg.freeze_fraction)
        if stats and hasattr(model, "set_feature_stats"):  # before the average copies it
            model.set_feature_stats(stats)
        if relations is not None:  # likewise fixed before training
            model.set_relations(relations.fits)
        # The classes whose rows are matching pairs: only they are pulled together.
        self.matching = torch.tensor(relations.class_ids) if relations else None
        self.core = model.to(self.device)
        self.model: torch.nn.Module = self.core
        decay = [p for n, p in self.core.named_parameters() if p.ndim >= 2]
        rest = [p for n, p in self.core.named_parameters() if p.ndim < 2]
        self.opt = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": cfg.weight_decay},
                {"params": rest, "weight_decay": 0.0},
            ],
            lr=cfg.lr,
        )
        self.total_steps = max(
            1, cfg.max_steps or cfg.epochs * max(1, steps_per_epoch // cfg.grad_accum)
        )
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, self._lr_factor)
        self.amp_dtype = amp_dtype(cfg.amp, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.progress = TrainProgress()
        self.log_every = cfg.log_every_steps
        # Fusion models on features only: the presets have no per-modality path to score.
        self.single = {"single": True} if cfg.w_single > 0 and not cfg.preset else {}
        self.ema = None
        if cfg.ema_decay and not cfg.preset:
            from torch.optim.swa_utils import AveragedModel

            self.ema = AveragedModel(
                self.core, multi_avg_fn=ema_with_warmup(cfg.ema_decay), use_buffers=True
            )
        # The saved weights at the best epoch so far (CPU copies): what the run keeps.
        self.best_weights: dict[str, Any] | None = None
        if cfg.preset:
            from pipeline.train.presets import e2e_tensors

            self.convert: Any = e2e_tensors
        else:
            self.convert = to_tensors

    def _lr_factor(self, step: int) -> float:
        c = self.cfg
        if c.schedule == "constant":
            return 1.0
        if c.schedule == "onecycle":  # linear up for 30%, cosine down to ~0
            up = max(1, int(0.3 * self.total_steps))
            if step < up:
                return 0.04 + 0.96 * step / up
            t = (step - up) / max(1, self.total_steps - up)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
        if step < c.warmup_steps:
            return (step + 1) / c.warmup_steps
        t = (step - c.warmup_steps) / max(1, self.total_steps - c.warmup_steps)
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    def _autocast(self) -> Any:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=self.amp_dtype)

    def _drop_modalities(self, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        p = self.cfg.modality_dropout
        mods = list(masks)
        if p <= 0 or len(mods) < 2:
            return masks
        present = torch.stack([masks[m] for m in mods], 1)
        # Per row, maybe drop one present modality, chosen at random, if another stays.
        drop_row = (torch.rand(present.shape[0], device=present.device) < p) & (present.sum(1) > 1)
        score = torch.rand(present.shape, device=present.device) * present
        victim = torch.nn.functional.one_hot(score.argmax(1), len(mods)).bool() & drop_row[:, None]
        kept = present & ~victim
        return {m: kept[:, i] for i, m in enumerate(mods)}

    def train_epoch(
        self,
        batches: Iterable[pa.Table],
        on_step: Callable[[dict[str, Any]], None] | None = None,
        should_checkpoint: Callable[[], bool] | None = None,
        checkpoint: Callable[[], None] | None = None,
    ) -> None:
        """Consume one epoch's batches, skipping those a resumed checkpoint already consumed."""
        c, pr = self.cfg, self.progress
        self.model.train()
        skip = pr.epoch_batches  # consumed before the checkpoint we resumed from
        ready = prefetch(
            (t for i, t in enumerate(batches) if i >= skip), self.dims, self.device, self.convert
        )
        for i, (feats, masks, labels) in enumerate(ready, start=skip):
            if c.max_steps is not None and pr.step >= c.max_steps:
                break
            masks = self._drop_modalities(masks)
            with self._autocast():
                out = self.model(feats, masks, **self.single)
                loss, parts = fusion_loss(
                    self.core,
                    out,
                    masks,
                    labels,
                    c.w_contrastive,
                    c.w_classify,
                    c.w_single,
                    self._matching(labels),
                )
            self.scaler.scale(loss / c.grad_accum).backward()
            pr.epoch_batches = i + 1
            if pr.epoch_batches % c.grad_accum:
                continue
            if c.clip_norm:
                self.scaler.unscale_(self.opt)
                torch.nn.utils.clip_grad_norm_(self.core.parameters(), c.clip_norm)
            self.scaler.step(self.opt)
            self.scaler.update()
            self.opt.zero_grad(set_to_none=True)
            self.sched.step()
            if self.ema is not None:
                self.ema.update_parameters(self.core)
            pr.step += 1
            if on_step and (pr.step % self.log_every == 0 or pr.step == 1):
                on_step(
                    {
                        "step": pr.step,
                        "epoch": pr.epoch,
                        "time": time.time(),
                        "loss": float(loss.detach()),
                        "lr": self.sched.get_last_lr()[0],
                        **{k: float(v) for k, v in parts.items()},
                    }
                )
            if checkpoint and should_checkpoint and should_checkpoint():
                checkpoint()
        pr.epoch += 1
        pr.epoch_batches = 0
        if pr.epoch >= c.epochs:
            pr.stopped = "epochs"

    def _matching(self, labels: torch.Tensor) -> torch.Tensor | None:
        if self.matching is None:
            return None
        return torch.isin(labels, self.matching.to(labels.device))

    def reached_max_steps(self) -> bool:
        """Whether ``max_steps`` ends the run (noted as why it stopped)."""
        if self.cfg.max_steps is not None and self.progress.step >= self.cfg.max_steps:
            self.progress.stopped = self.progress.stopped or "max_steps"
            return True
        return False

    def saved_model(self) -> Any:
        """The model whose weights the run saves: the moving average when it keeps one."""
        return self.ema.module if self.ema is not None else self.core

    @torch.no_grad()
    def evaluate(self, batches: Iterable[pa.Table]) -> dict[str, float]:
        """Validation loss (same multi-task loss, no dropout) and accuracy, summed over rows,
        of the weights the run saves, so that what training reports is what eval scores."""
        c = self.cfg
        model = self.saved_model()
        model.eval()
        tot = {"loss": 0.0, "rows": 0.0, "correct": 0.0, "labelled": 0.0}
        for table in batches:
            feats, masks, labels = self.convert(table, self.dims, self.device)
            with self._autocast():
                out = model(feats, masks)
                loss, _ = fusion_loss(
                    model,
                    out,
                    masks,
                    labels,
                    c.w_contrastive,
                    c.w_classify,
                    matching=self._matching(labels),
                )
            n = float(labels.shape[0])
            tot["loss"] += float(loss) * n
            tot["rows"] += n
            if "logits" in out:
                known = labels >= 0
                tot["correct"] += float((out["logits"].argmax(1)[known] == labels[known]).sum())
                tot["labelled"] += float(known.sum())
        return tot

    def end_epoch(self, metrics: dict[str, Any]) -> bool:
        """Keep the best epoch's weights and count epochs without progress on the watched
        metric (``early_stop_metric``); True when training should stop."""
        pr, pat, name = self.progress, self.cfg.early_stop_patience, self.cfg.early_stop_metric
        if name == "auto":
            name = "val_acc"
        if metrics.get(name) is None:  # no labelled validation row: no accuracy to watch
            name = "val_loss"
        pr.selected_by = name
        score = -metrics[name] if name == "val_acc" else metrics[name]  # lower is better
        best_loss = pr.best_metrics.get("val_loss", math.inf)
        # Accuracy saturates (1.0 from the first epoch on a clean corpus) while the shared
        # space still improves: an equal accuracy with a lower loss is progress too.
        tie = name == "val_acc" and abs(score - pr.best) <= 1e-4
        better = score < pr.best - 1e-4 or (tie and metrics["val_loss"] < best_loss - 1e-4)
        if better or self.best_weights is None:
            pr.best, pr.bad_epochs, pr.best_epoch = score, 0, pr.epoch
            pr.best_metrics = {k: v for k, v in metrics.items() if k.startswith("val_")}
            self.best_weights = {
                k: v.detach().cpu().clone() for k, v in self.last_weights().items()
            }
        else:
            pr.bad_epochs += 1
        pr.done = bool(pat is not None and pr.bad_epochs >= pat)
        if pr.done and pr.epoch < self.cfg.epochs:
            pr.stopped = "early_stop"
        return pr.done

    def last_weights(self) -> dict[str, Any]:
        """The weights as they are now: the moving average when averaging is on, else the last."""
        return final_weights(
            {"model": self.core.state_dict(), "ema": self.ema.state_dict() if self.ema else None}
        )

    def final_weights(self) -> dict[str, Any]:
        """What the run saves: the best epoch's weights (by ``early_stop_metric``), or the
        weights as they are when no epoch was validated."""
        return final_weights(self.state_dict())

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.core.state_dict(),
            **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
            **({"best": self.best_weights} if self.best_weights is not None else {}),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "scaler": self.scaler.state_dict(),
            "progress": asdict(self.progress),
            "rng": rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.core.load_state_dict(state["model"])
        if self.ema is not None and "ema" in state:
            self.ema.load_state_dict(state["ema"])
        self.best_weights = state.get("best")
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.progress = TrainProgress(**state["progress"])
        set_rng_state(state["rng"])


def ema_with_warmup(decay: float) -> Callable[..., None]:
    """AveragedModel's update with TensorFlow's warm-up (``ExponentialMovingAverage`` with
    ``num_updates``): the decay is min(decay, (1 + n) / (10 + n)) after n updates, so that a
    run of a few steps averages its own steps instead of holding on to the first ones."""

    def update(ema: list[torch.Tensor], current: list[torch.Tensor], n: Any) -> None:
        d = min(decay, (1.0 + float(n)) / (10.0 + float(n)))
        if torch.is_floating_point(ema[0]) or torch.is_complex(ema[0]):
            torch._foreach_lerp_(ema, current, 1.0 - d)
        else:  # integer buffers (counters): as torch's own EMA treats them
            for e, c in zip(ema, current, strict=True):
                e.copy_(e * d + c * (1.0 - d))

    return update


def final_weights(state: dict[str, Any]) -> dict[str, Any]:
    """The model weights a training state saves: the best epoch's when one was validated,
    else the moving average's, when it kept one, else the last."""
    if state.get("best"):
        return dict(state["best"])
    ema = state.get("ema")
    if not ema:
        return dict(state["model"])
    return {k.removeprefix("module."): v for k, v in ema.items() if k.startswith("module.")}


def prefetch(
    tables: Iterable[Any],
    dims: dict[str, int],
    device: Any,
    convert: Any = to_tensors,
    depth: int = 2,
) -> Iterator[Any]:
    """Convert the next batches (Arrow -> tensors -> device) in a thread while the current
    one trains: on a GPU the host-side preparation otherwise leaves it idle a third of the time."""
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False  # the consumer has gone

    def work() -> None:
        try:
            for t in tables:
                if not put(convert(t, dims, device)):
                    return
            put(_END)
        except BaseException as e:  # hand the error to the consumer
            put(_Failed(e))

    th = threading.Thread(target=work, daemon=True, name="mmpipe-prefetch")
    th.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()  # the consumer stopped early (max_steps): let the thread end
        th.join(timeout=10)


_END = object()


@dataclass
class _Failed:
    error: BaseException


def save_state(state: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def load_state(data: bytes) -> dict[str, Any]:
    # weights_only: a checkpoint is data, never code; a pickle-bearing one is refused.
    return dict(load_tensors(data, "the training checkpoint"))


def epoch_order(n_rows: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The deterministic shuffled batches of one epoch (plain-torch runs): a function of the
    seed and the epoch only, so that a resumed run sees the very same batches."""
    perm = np.random.default_rng([seed, epoch]).permutation(n_rows)
    return [perm[i : i + batch_size] for i in range(0, n_rows - batch_size + 1, batch_size)]


def fit_local(
    cfg: TrainConfig,
    train: pa.Table,
    val: pa.Table,
    dims: dict[str, int],
    n_classes: int,
    state: dict[str, Any] | None = None,
    stop_after_steps: int | None = None,
    log: list[dict[str, Any]] | None = None,
    relations: Relations | None = None,
) -> Trainer:
    """Train in this process (no Ray): tests, the bare-loop benchmark, debugging."""
    from pipeline.train.standardize import local_stats

    seed_everything(cfg.seed)
    steps = train.num_rows // cfg.batch_size
    stats = local_stats(train, dims) if cfg.standardize and not cfg.preset else None
    tr = Trainer(cfg, dims, n_classes, steps, stats=stats, relations=relations)
    if state is not None:
        tr.load_state_dict(state)

    def stop() -> None:
        raise _Stop

    try:
        while tr.progress.epoch < cfg.epochs and not tr.progress.done:
            order = epoch_order(train.num_rows, cfg.batch_size, cfg.seed, tr.progress.epoch)
            batches = (train.take(pa.array(idx)) for idx in order)
            tr.train_epoch(
                batches,
                on_step=log.append if log is not None else None,
                should_checkpoint=lambda: tr.progress.step == stop_after_steps,
                checkpoint=stop,
            )
            tot = tr.evaluate(
                val.slice(i, cfg.batch_size) for i in range(0, val.num_rows, cfg.batch_size)
            )
            if tr.end_epoch(val_metrics(tot)) or tr.reached_max_steps():
                break
    except _Stop:
        pass  # stopped at an exact step: the caller checkpoints tr.state_dict()
    return tr


def val_metrics(tot: dict[str, float]) -> dict[str, Any]:
    """An epoch's validation figures from ``Trainer.evaluate``'s sums."""
    return {
        "val_loss": tot["loss"] / max(1.0, tot["rows"]),
        "val_acc": tot["correct"] / tot["labelled"] if tot["labelled"] else None,
    }


class _Stop(Exception):
    """Raised inside ``fit_local`` to stop at an exact step (resume tests)."""
