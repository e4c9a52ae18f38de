"""Job entrypoint for ``embed``: read a YAML config, validate it, embed every shard into a new version."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from jobs.common import guarded


def main(argv: Sequence[str] | None = None, *, kind: str = "embed") -> int:
    """``python -m jobs.embed_bulk --config jobs/configs/embed.yaml [--address ADDR]``."""
    from pipeline.embed.config import load_embed_config
    from pipeline.embed.job import run_embed

    prog = "embed_bulk" if kind == "embed" else "nightly_refresh"
    p = argparse.ArgumentParser(prog=prog)
    p.add_argument("--config", required=True, help="YAML file with an embed: mapping")
    p.add_argument("--address", help="Ray address; default: a local Ray started for this job")
    p.add_argument("--shards", help="override embed.shards")
    p.add_argument("--model", help="override embed.model")
    p.add_argument("--output", help="override embed.output")
    args = p.parse_args(argv)

    def run() -> None:
        overrides = {"shards": args.shards, "model": args.model, "output": args.output}
        cfg = load_embed_config(overrides, args.config)
        run_embed(cfg, incremental=kind == "refresh", kind=kind, address=args.address)

    return guarded(prog, run)


if __name__ == "__main__":
    raise SystemExit(main())
