"""The ``mmpipe`` command: subcommands, and one-line errors for user mistakes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from pipeline.errors import UserError, is_storage_error, storage_message
from pipeline.redact import redact


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line that names the problem and where help is, never a usage dump.
        raise UserError(f"{message}; see '{self.prog} --help'")


def _add_build(sub: Any) -> None:
    from pipeline.errors import REASON_DOCS

    reasons = "\n".join(f"  {r.value:<15} {doc}" for r, doc in REASON_DOCS.items())
    p = sub.add_parser(
        "build",
        help="validate inputs and shard them into WebDataset tars",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"reject reasons written to OUT/rejects.parquet:\n{reasons}",
    )
    p.add_argument(
        "input", help="manifest (.jsonl/.csv/.parquet), sidecar folder, or tar glob/brace pattern"
    )
    p.add_argument("--output", "-o", required=True, help="output folder or URL")
    p.add_argument("--config", help="YAML file with build fields (CLI options override it)")
    p.add_argument("--input-format", help="auto|jsonl|csv|parquet|sidecar|tar")
    for col in ("image", "audio", "text", "key"):
        p.add_argument(
            f"--{col}-column", help=f"manifest column holding the {col} (default: {col})"
        )
    p.add_argument(
        "--text-source", help="auto|inline|path: whether the text column holds captions or paths"
    )
    p.add_argument("--shard-samples", type=int, help="max samples per shard (default 1000)")
    p.add_argument("--shard-bytes", help="max bytes per shard, e.g. 512MB")
    p.add_argument("--resize", type=int, help="resize images to this size (see --resize-mode)")
    p.add_argument("--resize-mode", help="no|keep_ratio|keep_ratio_largest|center_crop|border")
    p.add_argument(
        "--upscale", action="store_true", default=None, help="also enlarge smaller images"
    )
    p.add_argument("--image-format", help="keep|jpg|png|webp (re-encode when not keep)")
    p.add_argument(
        "--image-quality", "--quality", type=int, dest="image_quality", help="JPEG/WebP quality"
    )
    p.add_argument("--min-image-size", type=int)
    p.add_argument("--max-image-size", type=int)
    p.add_argument("--max-image-pixels", type=int, help="decompression-bomb guard (pixels)")
    p.add_argument("--audio-rate", type=int, help="transcode audio to mono FLAC at this rate")
    p.add_argument("--min-audio-seconds", type=float)
    p.add_argument("--max-audio-seconds", type=float)
    p.add_argument("--max-text-chars", type=int)
    p.add_argument("--max-file-bytes", help="largest file read, e.g. 256MB")
    p.add_argument(
        "--sample-timeout", type=float, dest="sample_timeout_s", help="per-sample decode limit (s)"
    )
    p.add_argument(
        "--on-modality-error", help="reject|drop: what a failing modality does to its row"
    )
    p.add_argument("--allow-local-refs", action="store_true", default=None)
    p.add_argument("--fetch-concurrency", type=int)
    p.add_argument("--num-cpus", type=float, help="CPUs per chunk task")
    p.add_argument("--address", help="Ray address (default: start a local Ray for this job)")
    p.add_argument("--ray-num-cpus", type=int, help="logical CPUs of the local Ray")
    p.add_argument("--overwrite", action="store_true", help="replace an existing build in --output")
    p.add_argument("--quiet", "-q", action="store_true")
    p.set_defaults(func=_cmd_build)


def _cmd_build(args: argparse.Namespace) -> int:
    from pipeline.build.job import run_build
    from pipeline.config import load_build_config

    skip = {"func", "command", "config", "address", "ray_num_cpus", "overwrite", "quiet"}
    overrides = {k: v for k, v in vars(args).items() if k not in skip}
    cfg = load_build_config(overrides, args.config)
    run_build(
        cfg,
        address=args.address,
        ray_num_cpus=args.ray_num_cpus,
        overwrite=args.overwrite,
        quiet=args.quiet,
    )
    return 0


def _add_features(sub: Any) -> None:
    p = sub.add_parser(
        "features", help="preprocess built shards and extract frozen-encoder features"
    )
    p.add_argument("shards", help="a build output folder, or a tar glob/brace pattern")
    p.add_argument("--output", "-o", required=True, help="output folder or URL")
    p.add_argument("--config", help="YAML file with features fields (CLI options override it)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--actors", type=int, help="encoder actors (each loads the models once)")
    p.add_argument(
        "--actor-num-cpus", type=float, help="CPUs per encoder actor (fractions allowed)"
    )
    p.add_argument("--device", help="auto|cpu|cuda")
    p.add_argument("--address", help="Ray address (default: start a local Ray for this job)")
    p.add_argument("--quiet", "-q", action="store_true")
    p.set_defaults(func=_cmd_features)


def _cmd_features(args: argparse.Namespace) -> int:
    from pipeline.config import options
    from pipeline.features.config import load_features_config
    from pipeline.features.job import run_features

    names = ("shards", "output", "batch_size", "actors", "actor_num_cpus", "device")
    cfg = load_features_config(options(args, names), args.config)
    run_features(cfg, address=args.address, quiet=args.quiet)
    return 0


def _add_sample_corpus(sub: Any) -> None:
    p = sub.add_parser(
        "sample-corpus", help="write a small multimodal corpus with a learnable class signal"
    )
    p.add_argument("output", help="folder to write")
    p.add_argument("--n", type=int, default=200, help="number of valid samples (default 200)")
    p.add_argument(
        "--hard", action="store_true", help="one random modality per sample carries no class signal"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--no-broken", action="store_true", help="leave out the deliberately broken rows"
    )
    p.set_defaults(func=_cmd_sample_corpus)


def _cmd_sample_corpus(args: argparse.Namespace) -> int:
    from pipeline.sample_corpus import write_corpus

    if args.n < 1:
        raise UserError("--n must be at least 1")
    info = write_corpus(
        args.output, n=args.n, hard=args.hard, seed=args.seed, broken=not args.no_broken
    )
    print(
        f"sample corpus: {info['rows']} rows ({info['broken']} broken) -> {info['manifest']}",
        file=sys.stderr,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mmpipe", description="Offline batch pipeline for multimodal corpora on Ray."
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_build(sub)
    _add_features(sub)
    _add_sample_corpus(sub)
    from pipeline.embed.cli import add_commands as add_embed
    from pipeline.train.cli import add_commands

    add_commands(sub)
    add_embed(sub)
    from pipeline.submit.cli import add_commands as add_submit

    add_submit(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (2 for user mistakes, 130 on Ctrl-C)."""
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args))
    except UserError as e:
        print(f"mmpipe: error: {redact(str(e))}", file=sys.stderr)
        return 2
    except Exception as e:
        if not is_storage_error(e):
            raise  # a bug: the traceback is what we need to see
        print(
            f"mmpipe: error: storage: {redact(storage_message(e))}; rerun to resume once the store "
            "answers",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("mmpipe: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
