"""Training metrics: per-step and per-epoch rows in ``metrics.jsonl``, and TensorBoard if present."""

from __future__ import annotations

import json
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from pipeline.faults import maybe_fail
from pipeline.io.fs import exists, is_remote, join, read_bytes, write_bytes_atomic

if TYPE_CHECKING:
    from pipeline.progress import Progress

PROGRESS_FILE = "progress.json"  # the latest step, for the driver's progress line
PROGRESS_EVERY_S = 2.0


class MetricsLog:
    """Per-step and per-epoch metrics as JSONL in the run directory (rank 0 only), plus
    TensorBoard when it is installed."""

    def __init__(self, run_dir: str, enabled: bool) -> None:
        self.url, self.enabled = join(run_dir, "metrics.jsonl"), enabled
        self.run_dir = run_dir
        self.fault: str | None = None
        self.lines: list[str] = []
        self.tb: Any = None
        self.last_progress = 0.0
        if enabled and exists(self.url):  # a resumed run appends to what is there
            self.lines = read_bytes(self.url).decode().splitlines()
        if enabled and not is_remote(run_dir):
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(os.path.join(run_dir, "tb"))
            except Exception:  # tensorboard not installed: JSONL is the record
                self.tb = None

    def step(self, row: dict[str, Any]) -> None:
        if self.fault:
            maybe_fail("train_step", self.fault)
        if not self.enabled:
            return
        self.lines.append(json.dumps({"kind": "step", **row}))
        now = time.monotonic()
        if now - self.last_progress >= PROGRESS_EVERY_S:
            self.last_progress = now
            self.progress(row)
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, float):
                    self.tb.add_scalar(f"train/{k}", v, row["step"])

    def progress(self, row: dict[str, Any]) -> None:
        """The latest step's figures, for the driver (workers' stdout is not the console)."""
        if self.enabled:
            doc = {k: row[k] for k in ("step", "epoch", "loss", "val_loss", "val_acc") if k in row}
            write_bytes_atomic(join(self.run_dir, PROGRESS_FILE), json.dumps(doc).encode())

    def epoch(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.progress(row)
        self.lines.append(json.dumps(row))
        write_bytes_atomic(self.url, ("\n".join(self.lines) + "\n").encode())
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, float):
                    self.tb.add_scalar(f"val/{k}", v, row["step"])


class TrainProgressLine:
    """Polls the run's ``progress.json`` while ``fit`` runs and hands step of total, epoch,
    loss and val_loss to the job's reporter, which adds the rate and ETA."""

    def __init__(self, run_dir: str, total_steps: int, progress: Progress) -> None:
        self.url, self.total, self.progress = join(run_dir, PROGRESS_FILE), total_steps, progress
        self.shown = -1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="train-progress", daemon=True)

    def __enter__(self) -> TrainProgressLine:
        if not self.progress.quiet:
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            try:
                doc = json.loads(read_bytes(self.url)) if exists(self.url) else None
            except (OSError, ValueError):  # mid-rename or the store blinked: next time
                doc = None
            if doc and doc.get("step", -1) != self.shown:
                self.show(doc)

    def show(self, doc: dict[str, Any]) -> None:
        self.shown = int(doc["step"])
        if self.progress.what != "training":
            self.progress.phase("training")
        fields = {"epoch": doc.get("epoch", 0)}
        for k in ("loss", "val_loss"):
            if isinstance(doc.get(k), float):
                fields[k] = f"{doc[k]:.4f}"
        self.progress.update(self.shown, total=self.total, **fields)
