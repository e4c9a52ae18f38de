"""The ``mmpipe`` command: subcommands, and one-line errors for user mistakes."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from pipeline.errors import UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line that names the problem and where help is, never a usage dump.
        raise UserError(f"{message}; see '{self.prog} --help'")


def _add_build(sub: Any) -> None:
    from pipeline.config import BuildConfig
    from pipeline.errors import REASON_DOCS
    from pipeline.options import add_field

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
    f = functools.partial(add_field, p, BuildConfig)
    f("input_format", "the form of INPUT")
    for col in ("image", "audio", "text", "key"):
        f(f"{col}_column", f"manifest column holding the {col}")
    f("text_source", "whether the text column holds captions or paths")
    f("shard_samples", "max samples per shard")
    f("shard_bytes", "max bytes per shard, e.g. 512MB", type=str)
    f("resize", "resize images to this size (see --resize-mode)")
    f("resize_mode", "how --resize fits an image")
    f("resize_filter", "the resampling filter")
    f("upscale", "also enlarge smaller images")
    f("image_format", "re-encode images unless keep")
    f("image_quality", "JPEG/WebP quality", "--quality")
    f("min_image_size", "reject images with a smaller side (px)")
    f("max_image_size", "reject images with a larger side (px)")
    f("max_image_pixels", "decompression-bomb guard (pixels)")
    f(
        "near_duplicates",
        "also reject images whose pHash is near an earlier image's (docs/build.md)",
    )
    f("near_dup_distance", "pHash bits that still count as near")
    f("audio_rate", "transcode audio to mono FLAC at this rate")
    f("audio_format", "one audio format per build")
    f("min_audio_seconds", "reject shorter audio")
    f("max_audio_seconds", "reject longer audio")
    f("max_text_chars", "reject longer texts")
    f("max_file_bytes", "largest file read, e.g. 256MB", type=str)
    f("sample_timeout_s", "per-sample decode limit (s)", flag="--sample-timeout")
    f("on_modality_error", "what a failing modality does to its row")
    f("on_error", "what a sample's error does: its reject row, or raise to fail the run")
    f("allow_local_refs", "let a remote manifest name local files")
    f(
        "allow_hosts",
        "networks or host names that URLs in the data may reach besides public "
        "addresses, comma-separated, e.g. 10.0.0.0/8,minio.internal",
        type=str,
    )
    f(
        "fetch_concurrency",
        "at most this many HTTP requests in flight per host and chunk task (a ceiling: "
        "the fetcher adapts below it)",
    )
    f("num_cpus", "CPUs per chunk task")
    p.add_argument("--address", help="Ray address (default: start a local Ray for this job)")
    p.add_argument("--ray-num-cpus", type=int, help="logical CPUs of the local Ray")
    p.add_argument("--overwrite", action="store_true", help="replace an existing build in --output")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="plan, validate a few hundred sampled rows here and print what would happen; "
        "write nothing",
    )
    p.add_argument(
        "--quiet", "-q", action="store_true", help="no progress: the summary and errors only"
    )
    p.set_defaults(func=_cmd_build)


def _cmd_build(args: argparse.Namespace) -> int:
    from pipeline.registry import run_from_args

    if args.dry_run:
        from pipeline.build.dryrun import dry_run
        from pipeline.config import BuildConfig, load_build_config
        from pipeline.options import overrides

        dry_run(load_build_config(overrides(args, BuildConfig), args.config))
        return 0
    run_from_args("build", args, ray_num_cpus=args.ray_num_cpus)
    return 0


def _add_rejects(sub: Any) -> None:
    p = sub.add_parser("rejects", help="list the rows a build or curate rejected, with why")
    p.add_argument("build", help="a build or curate output folder")
    p.add_argument("--reason", help="only this reject reason (e.g. decode_error)")
    p.add_argument("--limit", type=int, default=50, help="at most this many rows (default 50)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=_cmd_rejects)


def _cmd_rejects(args: argparse.Namespace) -> int:
    import json

    from pipeline.build.browse import iter_rejects, reject_line
    from pipeline.redact import redact_obj

    shown = 0
    for row in iter_rejects(args.build, reason=args.reason, limit=args.limit):
        print(json.dumps(redact_obj(row)) if args.json else reject_line(row))
        shown += 1
    if not args.json:
        more = f" (--limit {args.limit}; raise it for more)" if shown == args.limit else ""
        print(f"{shown} rejected row{'s' if shown != 1 else ''} shown{more}", file=sys.stderr)
    return 0


def _add_features(sub: Any) -> None:
    from pipeline.features.config import FeaturesConfig
    from pipeline.options import add_field

    p = sub.add_parser(
        "features", help="preprocess built shards and extract frozen-encoder features"
    )
    p.add_argument("shards", help="a build output folder, or a tar glob/brace pattern")
    p.add_argument("--output", "-o", required=True, help="output folder or URL")
    p.add_argument("--config", help="YAML file with features fields (CLI options override it)")
    f = functools.partial(add_field, p, FeaturesConfig)
    f("batch_size", "samples per encoder batch")
    f("actors", "encoder actors (each loads the models once)")
    f("actor_num_cpus", "CPUs per encoder actor (fractions allowed)")
    f("device", "where the encoders run")
    f("on_error", "what a sample's error does: its reject row, or raise to fail the run")
    p.add_argument("--address", help="Ray address (default: start a local Ray for this job)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace features of another config in --output"
    )
    p.add_argument(
        "--quiet", "-q", action="store_true", help="no progress: the summary and errors only"
    )
    p.set_defaults(func=_cmd_features)


def _cmd_features(args: argparse.Namespace) -> int:
    from pipeline.registry import run_from_args

    run_from_args("features", args)
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
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--no-broken", action="store_true", help="leave out the deliberately broken rows"
    )
    p.set_defaults(func=_cmd_sample_corpus)


def _cmd_sample_corpus(args: argparse.Namespace) -> int:
    from pipeline.progress import Progress
    from pipeline.sample_corpus import write_corpus

    if args.n < 1:
        raise UserError("--n must be at least 1")
    with Progress("sample-corpus") as progress:
        progress.phase(f"drawing {args.n} samples (image, caption, audio)")
        info = write_corpus(
            args.output, n=args.n, hard=args.hard, seed=args.seed, broken=not args.no_broken
        )
    print(
        f"sample corpus: {info['rows']} rows ({info['broken']} broken) -> {info['manifest']}",
        file=sys.stderr,
    )
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mmpipe")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mmpipe", description="Offline batch pipeline for multimodal corpora on Ray."
    )
    parser.add_argument("--version", action="version", version=f"mmpipe {_version()}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="print the full traceback of a failure (it is always written to a log file)",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_build(sub)
    from pipeline.curate.cli import add_commands as add_curate

    add_curate(sub)
    _add_rejects(sub)
    _add_features(sub)
    _add_sample_corpus(sub)
    from pipeline.embed.cli import add_commands as add_embed
    from pipeline.train.cli import add_commands

    add_commands(sub)
    add_embed(sub)
    from pipeline.submit.cli import add_commands as add_submit

    add_submit(sub)
    return parser


def help_reference() -> str:
    """Every subcommand's ``--help``, as docs/cli.md holds it (tests/test_docs.py compares)."""
    import os

    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal: fix it for the docs
    try:
        parser = build_parser()
        subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parts = [
            "# Command reference\n",
            "Generated from the parser: `python -m pipeline.cli --help-reference > docs/cli.md`.\n",
            "```text\n" + parser.format_help() + "```\n",
        ]
        for name, sp in subs.choices.items():
            parts.append(f"## mmpipe {name}\n\n```text\n{sp.format_help()}```\n")
        return "\n".join(parts)
    finally:
        if saved is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = saved


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (2 for user mistakes, 1 for storage failures, 130 on
    Ctrl-C); see pipeline/failure.py."""
    from pipeline.failure import run_guarded

    rc = 0
    given = sys.argv[1:] if argv is None else list(argv)
    # --debug is taken anywhere on the line, before or after the subcommand.
    debug = "--debug" in given
    given = [a for a in given if a != "--debug"]
    if debug:  # Ray's own lines stay on the terminal too (pipeline/logs.py)
        import os

        from pipeline.logs import DEBUG_ENV

        os.environ[DEBUG_ENV] = "1"

    def run() -> None:
        nonlocal rc
        args = build_parser().parse_args(given)
        rc = int(args.func(args))

    return run_guarded("mmpipe", run, debug=debug) or rc


if __name__ == "__main__":
    if sys.argv[1:] == ["--help-reference"]:
        sys.stdout.write(help_reference())
        raise SystemExit(0)
    raise SystemExit(main())
