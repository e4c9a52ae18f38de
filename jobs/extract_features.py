"""Job entrypoint for ``features``: read a YAML config, validate it, extract features, exit with its status."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from jobs.common import guarded


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m jobs.extract_features --config jobs/configs/features.yaml [--address ADDR]``."""
    from pipeline.features.config import load_features_config
    from pipeline.features.job import run_features

    p = argparse.ArgumentParser(prog="extract_features")
    p.add_argument("--config", required=True, help="YAML file with a features: mapping")
    p.add_argument("--address", help="Ray address; default: a local Ray started for this job")
    p.add_argument("--shards", help="override features.shards")
    p.add_argument("--output", help="override features.output")
    args = p.parse_args(argv)

    def run() -> None:
        cfg = load_features_config({"shards": args.shards, "output": args.output}, args.config)
        run_features(cfg, address=args.address)

    return guarded("extract_features", run)


if __name__ == "__main__":
    raise SystemExit(main())
