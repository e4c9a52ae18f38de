"""Job entrypoint for ``curate``: read a YAML config, validate it, curate, exit with its status."""

from __future__ import annotations

from collections.abc import Sequence

from jobs.common import job_main


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m jobs.curate --config jobs/configs/curate.yaml [--address ADDR]``."""
    return job_main("curate", argv, prog="curate")


if __name__ == "__main__":
    raise SystemExit(main())
