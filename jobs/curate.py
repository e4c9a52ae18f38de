"""Job entrypoint for ``curate``: read a YAML config, validate it, curate, exit with its status."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from jobs.common import guarded


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m jobs.curate --config jobs/configs/curate.yaml [--address ADDR]``."""
    from pipeline.curate.config import load_curate_config
    from pipeline.curate.job import run_curate

    p = argparse.ArgumentParser(prog="curate")
    p.add_argument("--config", required=True, help="YAML file with a curate: mapping")
    p.add_argument(
        "--address", help="Ray address; default: the cluster this job runs on, else local"
    )
    p.add_argument("--build", help="override curate.build")
    p.add_argument("--output", help="override curate.output")
    args = p.parse_args(argv)

    def run() -> None:
        cfg = load_curate_config({"build": args.build, "output": args.output}, args.config)
        run_curate(cfg, address=args.address)

    return guarded("curate", run)


if __name__ == "__main__":
    raise SystemExit(main())
