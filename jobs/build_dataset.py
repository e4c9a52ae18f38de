"""Job entrypoint for ``build``: read a YAML config, validate it, run the build, exit with its status."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from jobs.common import guarded


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m jobs.build_dataset --config jobs/configs/build.yaml [--address ADDR]``."""
    from pipeline.build.job import run_build
    from pipeline.config import load_build_config

    p = argparse.ArgumentParser(prog="build_dataset")
    p.add_argument("--config", required=True, help="YAML file with a build: mapping")
    p.add_argument(
        "--address", help="Ray address; default: the cluster this job runs on, else local"
    )
    p.add_argument("--input", help="override build.input")
    p.add_argument("--output", help="override build.output")
    args = p.parse_args(argv)

    def run() -> None:
        cfg = load_build_config({"input": args.input, "output": args.output}, args.config)
        run_build(cfg, address=args.address)

    return guarded("build_dataset", run)


if __name__ == "__main__":
    raise SystemExit(main())
