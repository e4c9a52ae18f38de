"""Weight averaging against the last weights: the same features, split and seeds, in-process.

Trains with ``train_in_process`` (the loop the Ray workers run) once per seed and per
``ema_decay`` (``none``: the last weights), then scores each run with ``run_eval`` on the same
validation split. The averaging does not change the training trajectory, so each row differs
from ``none`` only in which weights are saved. Prints a Markdown table.

    .venv/bin/python bench/bench_realmedia.py --corpus photos          # writes the features
    .venv/bin/python bench/bench_ema.py bench/_work/realmedia-photos/features
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    from pipeline.train.config import load_train_config
    from pipeline.train.evaluate import run_eval
    from pipeline.train.job import train_in_process

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("features", help="an mmpipe features output")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--decays", nargs="+", default=["none", "0.9", "0.97", "0.99"])
    args = ap.parse_args()
    print("| ema_decay | " + " | ".join(f"seed {s}" for s in args.seeds) + " |")
    print("|---" * (len(args.seeds) + 1) + "|")
    probes = None
    for decay in args.decays:
        cells = []
        for seed in args.seeds:
            with tempfile.TemporaryDirectory() as out:
                ema = None if decay == "none" else float(decay)
                cfg = load_train_config({"data": args.features, "output": out, "seed": seed})
                # Set after loading: a None override reads as "not given" there.
                cfg = cfg.model_copy(update={"ema_decay": ema})
                train_in_process(cfg)
                # run_eval reads the split fraction from the run's config, as the job writes it.
                (Path(out) / "config.json").write_text(json.dumps(cfg.model_dump()))
                ev = run_eval(out, args.features, quiet=True)
            acc = ev["accuracy"]
            cells.append(f"{acc['fused']:.3f} / {acc['best_single']:.3f}")
            probes = ev["baselines"]["late_fusion"]
        print(f"| {decay} | " + " | ".join(cells) + " |", flush=True)
    print(f"| late fusion of the probes | {probes:.3f} |")
    print("(fused accuracy / the model's best single modality)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
