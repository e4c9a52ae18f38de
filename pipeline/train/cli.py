"""The `mmpipe train|eval|report|export` subcommands."""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Any


def add_commands(sub: Any) -> None:
    from pipeline.options import add_field
    from pipeline.train.config import TrainConfig

    p = sub.add_parser("train", help="train a fusion model on features with Ray Train")
    p.add_argument("data", help="an `mmpipe features` output folder")
    p.add_argument("--output", "-o", required=True, help="the run directory (local or URL)")
    p.add_argument("--config", help="YAML file with train fields (CLI options override it)")
    f = functools.partial(add_field, p, TrainConfig)
    f("fusion", "how the modalities are combined")
    f("preset", "a classic model trained end to end (DATA is then a build)")
    f("epochs", "passes over the training split")
    f("batch_size", "samples per step, over all workers")
    f("lr", "peak learning rate")
    f("workers", "Ray Train workers (DDP)")
    f("seed", "seed for the split, initialisation and order")
    f("max_steps", "stop after this many steps")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    p.add_argument("--address", help="Ray address (default: start a local Ray for this job)")
    p.add_argument(
        "--quiet", "-q", action="store_true", help="no progress: the summary and errors only"
    )
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="Recall@K and accuracy of a trained run on a features folder")
    p.add_argument("run", help="the run directory of mmpipe train")
    p.add_argument("data", help="an `mmpipe features` output folder")
    p.add_argument(
        "--split", default="val", choices=["val", "train"], help="which split (default val)"
    )
    p.add_argument("--quiet", "-q", action="store_true", help="print only errors")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("report", help="a self-contained HTML report of one or more runs")
    p.add_argument("run", help="the run directory (its eval.json is used)")
    p.add_argument("--compare", nargs="*", default=[], help="more run directories to compare")
    p.add_argument("--output", "-o", help="HTML file (default RUN/report.html)")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser(
        "export", help="write the run as ONNX and TorchScript, each checked against eager"
    )
    p.add_argument("run", help="the run directory")
    p.add_argument(
        "--format",
        default="both",
        choices=["both", "onnx", "torchscript"],
        help="what to write (default both)",
    )
    p.add_argument("--output", "-o", help="folder (default RUN/export)")
    p.add_argument(
        "--tolerance",
        type=float,
        help="max abs difference from the eager model that the ONNX graphs may have (default 1e-4)",
    )
    p.add_argument(
        "--no-encoders",
        action="store_true",
        help="ONNX: only the fusion model and its heads, not the feature encoders",
    )
    p.set_defaults(func=_cmd_export)


def _cmd_train(args: argparse.Namespace) -> int:
    from pipeline.registry import run_from_args

    run_from_args("train", args)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from pipeline.train.evaluate import run_eval

    run_eval(args.run, args.data, split=args.split, quiet=args.quiet)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from pipeline.train.report import write_html_report

    path = write_html_report(args.run, args.compare, args.output)
    print(f"report: {path}", file=sys.stderr)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from pipeline.train.export import export_run

    done = export_run(
        args.run,
        args.format,
        args.output,
        tolerance=args.tolerance,
        encoders=not args.no_encoders,
    )
    for name, g in done["graphs"].items():
        diff = max(g["max_abs_diff"].values())
        print(f"export: {name} ({g['format']}, max abs diff {diff:.2g})", file=sys.stderr)
    print(f"export: {done['output']}", file=sys.stderr)
    return 0
