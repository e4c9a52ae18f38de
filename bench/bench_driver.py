"""Driver memory per Ray Data task, with the operator reservation off and on.

    python bench/bench_driver.py [--tasks 100 1000] [--kinds custom-summary ...]
                                 [--reservations off on on:0.1]

Each run starts a fresh local Ray (2 CPUs), streams K read tasks through one map stage to
the driver, and reports the driver's private memory (RSS less shared pages) before, at its
peak and at the end, per task. Sources: ``custom``, a ``Datasource`` whose read tasks each
yield one Arrow block of 100 x 200-byte binary values (the shape of a build's read tasks, one
a chunk), or ``range``, ``ray.data.range`` with the same number of blocks. The map stage
returns a one-row Arrow summary per block (``summary``, as a build's chunk stage does) or
its input block (``echo``), or sleeps 150 ms first (``sleep``: throughput, in ``seconds``).
Each runs with Ray Data's operator reservation off, on (Ray's default ratio, 0.5) or on with
another ratio (``on:0.1``). A build's driver grows with
its chunk count (docs/benchmarks.md); this separates Ray Data's share from the build's own.
Prints one JSON line per run.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any


def _private(proc: Any) -> int:
    m = proc.memory_info()
    return int(m.rss - m.shared)


def _block(i: int) -> Iterator[Any]:
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(i)
    yield pa.table({"x": [rng.bytes(200) for _ in range(100)]})


def one_run(kind: str, tasks: int, reservation: str) -> dict[str, Any]:
    """One pipeline of ``tasks`` read tasks on a fresh Ray, in this process. ``reservation``:
    ``off``, ``on`` (Ray's default ratio) or ``on:R`` (a reservation ratio of R)."""
    import time

    import psutil
    import ray
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class Blocks(Datasource):
        def estimate_inmemory_data_size(self) -> int | None:
            return None

        def get_read_tasks(
            self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
        ) -> list[ReadTask]:
            meta = BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=None)
            return [ReadTask(functools.partial(_block, i), meta) for i in range(tasks)]

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.op_resource_reservation_enabled = not reservation.startswith("off")
    cap = int(reservation[4:]) if reservation.startswith("off:") else None
    if reservation.startswith("on:"):
        ctx.op_resource_reservation_ratio = float(reservation[3:])
    for _ in ray.data.range(10).iter_batches():  # imports and worker start-up, before measuring
        pass
    proc = psutil.Process()
    start = peak = _private(proc)
    stop = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not stop.wait(0.1):
            peak = max(peak, _private(proc))

    threading.Thread(target=watch, daemon=True).start()
    t0 = time.perf_counter()
    source, out = kind.split("-")
    if source == "custom":
        ds = ray.data.read_datasource(Blocks(), override_num_blocks=tasks, concurrency=cap)
    else:
        ds = ray.data.range(tasks * 100, override_num_blocks=tasks, concurrency=cap)
    if out == "summary":
        ds = ds.map_batches(
            lambda b: {"n": [len(b)]}, batch_format="pyarrow", batch_size=None, concurrency=cap
        )
    elif out == "sleep":  # 150 ms of work per task: throughput, as the runner's comment says
        ds = ds.map_batches(_sleepy, batch_format="pyarrow", batch_size=None, concurrency=cap)
    else:
        ds = ds.map_batches(lambda b: b, batch_format="pyarrow", batch_size=None, concurrency=cap)
    blocks = sum(1 for _ in ds.iter_batches(batch_size=None, batch_format="pyarrow"))
    seconds = time.perf_counter() - t0
    stop.set()
    end = _private(proc)
    peak = max(peak, end)
    ray.shutdown()
    return {
        "kind": kind,
        "reservation": reservation,
        "tasks": tasks,
        "blocks_out": blocks,
        "start_mb": start >> 20,
        "peak_mb": peak >> 20,
        "end_mb": end >> 20,
        "peak_per_task_kb": round((peak - start) / 1024 / tasks, 1),
        "seconds": round(seconds, 2),
    }


def _sleepy(b: Any) -> Any:
    import time

    time.sleep(0.15)
    return {"n": [len(b)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--kinds", nargs="+", default=["custom-summary", "range-summary", "range-echo"])
    ap.add_argument("--reservations", nargs="+", default=["off", "on"], help="off, on, on:RATIO")
    ap.add_argument("--one", nargs=3, metavar=("KIND", "TASKS", "RES"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:  # a child run: one fresh Ray per figure
        kind, n, res = args.one
        print(json.dumps(one_run(kind, int(n), res)), flush=True)
        return
    runs = [(k, r) for r in args.reservations for k in args.kinds]
    for kind, res in runs:
        for n in args.tasks:
            out = subprocess.run(
                [sys.executable, __file__, "--one", kind, str(n), res],
                check=True,
                capture_output=True,
                text=True,
            )
            print(out.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
