"""Training metrics: per-step and per-epoch rows in ``metrics.jsonl``, and TensorBoard if present."""

from __future__ import annotations

import json
import os
from typing import Any

from pipeline.faults import maybe_fail
from pipeline.io.fs import exists, is_remote, join, read_bytes, write_bytes_atomic


class MetricsLog:
    """Per-step and per-epoch metrics as JSONL in the run directory (rank 0 only), plus
    TensorBoard when it is installed."""

    def __init__(self, run_dir: str, enabled: bool) -> None:
        self.url, self.enabled = join(run_dir, "metrics.jsonl"), enabled
        self.fault: str | None = None
        self.lines: list[str] = []
        self.tb: Any = None
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
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, float):
                    self.tb.add_scalar(f"train/{k}", v, row["step"])

    def epoch(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.lines.append(json.dumps(row))
        write_bytes_atomic(self.url, ("\n".join(self.lines) + "\n").encode())
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, float):
                    self.tb.add_scalar(f"val/{k}", v, row["step"])
