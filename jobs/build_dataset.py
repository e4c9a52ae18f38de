"""Job entrypoint for ``build``: read a YAML config, validate it, run the build, exit with its status."""

from __future__ import annotations

from collections.abc import Sequence

from jobs.common import job_main


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m jobs.build_dataset --config jobs/configs/build.yaml [--address ADDR]``."""
    return job_main("build", argv, prog="build_dataset")


if __name__ == "__main__":
    raise SystemExit(main())
