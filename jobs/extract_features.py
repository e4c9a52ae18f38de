"""Job entrypoint for ``features``: frozen-encoder features of built shards, from a YAML config."""

from __future__ import annotations

from collections.abc import Sequence

from jobs.common import job_main


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m jobs.extract_features --config jobs/configs/features.yaml [--address ADDR]``."""
    return job_main("features", argv, prog="extract_features")


if __name__ == "__main__":
    raise SystemExit(main())
