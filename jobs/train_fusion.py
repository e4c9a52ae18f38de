"""Job entrypoint for ``train``: read a YAML config, validate it, train, evaluate, exit with its status."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from jobs.common import guarded


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m jobs.train_fusion --config jobs/configs/train.yaml [--address ADDR] [--resume]``."""
    from pipeline.train.config import load_train_config
    from pipeline.train.evaluate import run_eval
    from pipeline.train.job import run_train

    p = argparse.ArgumentParser(prog="train_fusion")
    p.add_argument("--config", required=True, help="YAML file with a train: mapping")
    p.add_argument("--address", help="Ray address; default: a local Ray started for this job")
    p.add_argument("--data", help="override train.data")
    p.add_argument("--output", help="override train.output")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation after training")
    args = p.parse_args(argv)

    def run() -> None:
        cfg = load_train_config({"data": args.data, "output": args.output}, args.config)
        run_train(cfg, address=args.address, resume=args.resume)
        if not args.no_eval:
            run_eval(cfg.output, cfg.data)

    return guarded("train_fusion", run)


if __name__ == "__main__":
    raise SystemExit(main())
