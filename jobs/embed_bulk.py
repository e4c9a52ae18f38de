"""Job entrypoint for ``embed``: a new embeddings version of every sample, from a YAML config."""

from __future__ import annotations

from collections.abc import Sequence

from jobs.common import job_main


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m jobs.embed_bulk --config jobs/configs/embed.yaml [--address ADDR]``."""
    return job_main("embed", argv, prog="embed_bulk")


if __name__ == "__main__":
    raise SystemExit(main())
