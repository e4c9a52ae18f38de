"""Job entrypoint for the nightly ``refresh``: embed only new or changed samples, move ``latest``."""

from __future__ import annotations

from collections.abc import Sequence

from jobs.embed_bulk import main as _main


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m jobs.nightly_refresh --config jobs/configs/refresh.yaml [--address ADDR]``.

    A rerun with nothing new writes nothing; a run killed halfway resumes when rerun.
    """
    return _main(argv, kind="refresh")


if __name__ == "__main__":
    raise SystemExit(main())
