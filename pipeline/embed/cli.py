"""The `mmpipe embed|refresh|search|index` subcommands."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from typing import Any

from pipeline.errors import UserError

SHARDS_HELP = "a build output folder, a folder of tars, or a tar glob/brace pattern"


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is below 1")
    return value


def _common(p: Any) -> None:
    from pipeline.embed.config import EmbedConfig
    from pipeline.options import add_field

    p.add_argument(
        "--model",
        help="a run directory of mmpipe train, or its export (RUN/export/model.onnx runs in "
        "onnxruntime; RUN/export/model.torchscript.pt)",
    )
    p.add_argument("--output", "-o", help="the embeddings store (local or URL)")
    p.add_argument("--config", help="YAML file with embed fields (CLI options override it)")
    f = functools.partial(add_field, p, EmbedConfig)
    f("batch_size", "samples per model batch")
    f("actors", "encoder+model actors, or auto to follow free resources")
    f("device", "where the model runs")
    f("storage", "the float type stored")
    f("keep_versions", "complete versions kept")
    f("on_error", "what a sample's error does: its reject row, or raise to fail the run")
    p.add_argument("--address", help="Ray address (default: start a local Ray for this job)")
    p.add_argument(
        "--quiet", "-q", action="store_true", help="no progress: the summary and errors only"
    )


def add_commands(sub: Any) -> None:
    for name, text in (
        ("embed", "embed shards with a trained model into a new Parquet version"),
        ("refresh", "the nightly job: embed only what is new since latest"),
    ):
        p = sub.add_parser(name, help=text)
        # Both forms in both commands: SHARDS, as features takes it, or --shards, as the jobs do.
        p.add_argument("shards_arg", nargs="?", metavar="SHARDS", help=SHARDS_HELP)
        p.add_argument("--shards", help="the same as SHARDS")
        _common(p)
        p.set_defaults(func=_cmd_embed, kind=name)

    p = sub.add_parser("search", help="top-k keys for a text, image or audio query")
    p.add_argument("store", help="an embeddings store written by embed/refresh")
    p.add_argument("--text", help="a text query")
    p.add_argument("--image", help="an image file or URL")
    p.add_argument("--audio", help="an audio file or URL")
    p.add_argument("-k", type=positive_int, default=10, help="hits to print (default 10)")
    p.add_argument(
        "--column",
        default="fused",
        choices=["fused", "image", "text", "audio", "all"],
        help="which embeddings to search (default fused)",
    )
    p.add_argument("--model", help="default: the model that embedded the store")
    p.add_argument("--exact", action="store_true", help="ignore an ANN index")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser(
        "zero-shot",
        help="a run around a paired model (CLIP, SigLIP, CLAP): embed and search, no training",
    )
    p.add_argument("model", help="the paired model: a folder, an fsspec URL, a hub id (hf)")
    p.add_argument("--output", "-o", required=True, help="the run folder to write")
    p.add_argument(
        "--library",
        choices=["hf", "open_clip"],
        default="hf",
        help="transformers (hf) or open_clip; open_clip also takes ARCH:TAG (default hf)",
    )
    p.set_defaults(func=_cmd_zero_shot)

    p = sub.add_parser("index", help="build an HNSW index (usearch) for the latest version")
    p.add_argument("store")
    p.add_argument(
        "--column",
        action="append",
        choices=["fused", "image", "text", "audio"],
        help="an embedding column to index; repeat for several (default: all present)",
    )
    p.add_argument(
        "--dtype",
        default="f16",
        choices=["f32", "f16", "i8"],
        help="the index's vector type (default f16)",
    )
    p.set_defaults(func=_cmd_index)


def _cmd_embed(args: argparse.Namespace) -> int:
    from pipeline.registry import run_from_args

    if args.shards_arg and args.shards and args.shards_arg != args.shards:
        raise UserError("give SHARDS or --shards, not both")
    args.shards = args.shards or args.shards_arg
    run_from_args(args.kind, args)
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    from pipeline.config import options
    from pipeline.embed.search import search

    names = ("model", "text", "image", "audio", "k", "column", "exact")
    res = search(args.store, **options(args, names))
    if args.json:
        print(json.dumps(res, indent=1))
        return 0
    print(f"{res['version']} ({res['method']}):")
    for rank, hit in enumerate(res["hits"], 1):
        fields = {"label": hit.get("label"), **hit.get("meta", {})}
        extra = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        caption = f" {json.dumps(hit['caption'][:80])}" if hit.get("caption") else ""
        source = f"  ({hit['source']})" if hit.get("source") else ""
        line = f"{rank:3d}  {hit['score']:.4f}  {hit['column']:<6} {hit['key']}  {extra}"
        print(f"{line.rstrip()}{caption}{source}")
    return 0


def _cmd_index(args: argparse.Namespace) -> int:
    from pipeline.embed.search import build_index

    res = build_index(args.store, args.column, args.dtype)
    cols = ", ".join(f"{c} ({n} rows)" for c, n in res["columns"].items())
    print(f"index: {res['version']}: {cols} -> {args.store}/index/", file=sys.stderr)
    return 0


def _cmd_zero_shot(args: argparse.Namespace) -> int:
    from pipeline.zeroshot import write_zero_shot_run

    write_zero_shot_run(args.model, args.output, args.library)
    return 0
