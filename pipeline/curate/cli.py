"""The ``mmpipe curate`` subcommand."""

from __future__ import annotations

import argparse
from typing import Any


def add_commands(sub: Any) -> None:
    p = sub.add_parser(
        "curate",
        help="quality filters and semantic dedup over a build, into a new build",
        description="Read a finished build, reject rows by the filters and SemDeDup in the "
        "config (docs/curate.md), and write a new build: shards, index/, "
        "rejects.parquet (the build's rejects carried forward), curate.json, report.html.",
    )
    p.add_argument("build", help="a finished build (or curated build) folder or URL")
    p.add_argument("--output", "-o", required=True, help="output folder or URL")
    p.add_argument("--config", help="YAML file with curate fields (CLI options override it)")
    p.add_argument(
        "--vectors",
        help="a features output or embeddings folder of BUILD: turns on SemDeDup (and lets "
        "similarity.enabled read image-text cosines)",
    )
    p.add_argument("--predicate", help="module:function that returns (keep, reasons) per batch")
    p.add_argument("--address", help="Ray address (default: start a local Ray for this job)")
    p.add_argument("--overwrite", action="store_true", help="replace what is in --output")
    p.add_argument(
        "--quiet", "-q", action="store_true", help="no progress: the summary and errors only"
    )
    p.set_defaults(func=_cmd_curate)


def _cmd_curate(args: argparse.Namespace) -> int:
    from pipeline.registry import run_from_args

    run_from_args("curate", args)
    return 0
