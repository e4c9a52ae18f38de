"""Job entrypoint for ``refresh``: the nightly refresh, from a YAML config."""

from __future__ import annotations

from collections.abc import Sequence

from jobs.common import job_main


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m jobs.nightly_refresh --config jobs/configs/refresh.yaml [--address ADDR]``.

    A rerun with nothing new writes nothing; a run killed halfway resumes when rerun.
    """
    return job_main("refresh", argv, prog="nightly_refresh")


if __name__ == "__main__":
    raise SystemExit(main())
