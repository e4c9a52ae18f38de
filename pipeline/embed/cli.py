"""The `mmpipe embed|refresh|search|index` subcommands."""

from __future__ import annotations

import argparse
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
    from pipeline.config import add_choice
    from pipeline.embed.config import EmbedConfig

    p.add_argument(
        "--model",
        help="a run directory of mmpipe train, or its export (RUN/export/model.onnx runs in "
        "onnxruntime; RUN/export/model.torchscript.pt)",
    )
    p.add_argument("--output", "-o", help="the embeddings store (local or URL)")
    p.add_argument("--config", help="YAML file with embed fields (CLI options override it)")
    p.add_argument("--batch-size", type=int, help="samples per model batch")
    p.add_argument("--actors", help="encoder+model actors, or 'auto' to follow free resources")
    add_choice(p, "--device", EmbedConfig, "where the model runs")
    add_choice(p, "--storage", EmbedConfig, "the float type stored")
    p.add_argument("--keep-versions", type=int, help="complete versions kept (default 3)")
    p.add_argument("--address", help="Ray address (default: start a local Ray for this job)")
    p.add_argument("--quiet", "-q", action="store_true", help="print only errors")


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
    from pipeline.config import options
    from pipeline.embed.config import load_embed_config
    from pipeline.embed.job import run_embed

    if args.shards_arg and args.shards and args.shards_arg != args.shards:
        raise UserError("give SHARDS or --shards, not both")
    args.shards = args.shards or args.shards_arg
    names = ("shards", "model", "output", "batch_size", "device", "storage", "keep_versions")
    overrides = options(args, names)
    overrides["actors"] = args.actors if args.actors in (None, "auto") else _int(args.actors)
    if args.kind == "refresh" and not args.config and args.output:
        # A refresh continues the store as it was configured (storage, metadata fields, model
        # id): without this, a bare `mmpipe refresh` would see a new layout and re-embed all.
        overrides = {
            **_store_config(args.output),
            **{k: v for k, v in overrides.items() if v is not None},
        }
    cfg = load_embed_config(overrides, args.config)
    run_embed(
        cfg,
        incremental=args.kind == "refresh",
        kind=args.kind,
        address=args.address,
        quiet=args.quiet,
    )
    return 0


def _store_config(out: str) -> dict[str, Any]:
    from pipeline.embed.store import read_latest, version_dir
    from pipeline.io.fs import exists, join, read_bytes

    latest = read_latest(out)
    url = join(version_dir(out, latest), "config.json") if latest else None
    if not url or not exists(url):
        return {}
    keep = ("storage", "metadata_fields", "model_id", "row_group_mb", "keep_versions")
    return {k: v for k, v in json.loads(read_bytes(url)).items() if k in keep}


def _int(v: str) -> Any:
    return int(v) if v.isdigit() else v  # a bad value is named by the config validation


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
