"""One training setting swept over seeds on the same features and split, in-process.

Trains with ``train_in_process`` (the loop the Ray workers run) once per seed and per value
of ``--field`` (a ``TrainConfig`` field; ``none``: null), everything else at the defaults,
then scores each run with ``run_eval`` on the same validation split. Prints a Markdown table
of fused accuracy, the model's best single modality and the worst modality pair's class-level
Recall@1, beside eval's late-fusion probes.

    .venv/bin/python bench/bench_realmedia.py --corpus photos          # writes the features
    .venv/bin/python bench/bench_sweep.py bench/_work/realmedia-photos/features
    .venv/bin/python bench/bench_sweep.py FEATURES --field w_single --values 0 0.5 1
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse(value: str) -> Any:
    """``none`` -> None, numbers as numbers, anything else as given (a fusion type)."""
    if value == "none":
        return None
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def main() -> int:
    from pipeline.train.config import load_train_config
    from pipeline.train.evaluate import run_eval
    from pipeline.train.job import train_in_process

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("features", help="an mmpipe features output")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--field", default="ema_decay", help="a train config field")
    ap.add_argument("--values", nargs="+", default=["none", "0.9", "0.97", "0.99"])
    args = ap.parse_args()
    print(f"| {args.field} | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean |")
    print("|---" * (len(args.seeds) + 2) + "|")
    probes = None
    for raw in args.values:
        cells, fused = [], []
        for seed in args.seeds:
            with tempfile.TemporaryDirectory() as out:
                cfg = load_train_config({"data": args.features, "output": out, "seed": seed})
                # Set after loading: a None override reads as "not given" there.
                cfg = cfg.model_validate({**cfg.model_dump(), args.field: parse(raw)})
                train_in_process(cfg)
                # run_eval reads the split fraction from the run's config, as the job writes it.
                (Path(out) / "config.json").write_text(json.dumps(cfg.model_dump()))
                ev = run_eval(out, args.features, quiet=True)
            acc = ev["accuracy"]
            fused.append(acc["fused"])
            r1 = min(v["class"]["R@1"] for v in ev["retrieval"].values() if "class" in v)
            cells.append(f"{acc['fused']:.3f} / {acc['best_single']:.3f} / {r1:.3f}")
            probes = ev["baselines"]["late_fusion"]
        mean = sum(fused) / len(fused)
        print(f"| {raw} | " + " | ".join(cells) + f" | {mean:.3f} |", flush=True)
    print(f"| late fusion of the probes | {probes:.3f} |")
    print("(fused accuracy / the model's best single modality / min class R@1 over the pairs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
