"""The dataset card (README.md) that makes a build folder a Hugging Face dataset as it stands."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import yaml

from pipeline.io.fs import join, write_bytes_atomic

CARD = "README.md"
# How HF datasets' WebDataset loader types a member, by its extension (its own lists): a member
# type the card names is a column, null where a sample lacks it; one it does not name is dropped.
IMAGE = {"jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff", "ppm", "pgm", "pbm", "pnm"}
AUDIO = {"flac", "wav", "mp3", "ogg", "opus", "aiff", "au", "m4a", "aac", "caf", "w64"}
TEXT = {"txt", "text", "transcript"}
JSON = {"json", "jsn"}
INT = {"cls", "cls2", "index", "inx", "id"}


def member_types(members: pa.ChunkedArray | pa.Array) -> set[str]:
    """The member extensions (``jpg``, ``txt``, …) in a ``members`` column of staged rows.

    Keys hold no dots (``validate.keys``), so a member's type is everything after its first.
    """
    if len(members) == 0:
        return set()
    names = pc.struct_field(pc.list_flatten(members), "name")
    exts = pc.extract_regex(names, r"^[^.]*\.(?P<ext>.+)$")
    return {str(e) for e in pc.unique(pc.struct_field(exts, "ext")).to_pylist() if e}


def feature(ext: str) -> dict[str, str]:
    """The card's feature entry for one member type, as ``datasets`` writes it."""
    kinds = ((IMAGE, "image"), (AUDIO, "audio"), (TEXT, "string"), (JSON, "json"), (INT, "int64"))
    kind = next((k for exts, k in kinds if ext.lower() in exts), "binary")  # bytes, as stored
    return {"name": ext, "dtype": kind}


def card_text(
    *, title: str, types: Iterable[str], counts: dict[str, Any], reasons: dict[str, int], how: str
) -> str:
    """README.md: a YAML header that ``datasets`` and the Hub read, then a short summary."""
    features = [feature(t) for t in sorted(types)]
    features += [{"name": "__key__", "dtype": "string"}, {"name": "__url__", "dtype": "string"}]
    header = {
        "configs": [
            {
                "config_name": "default",
                "data_files": [{"split": "train", "path": "shards/*.tar"}],
                "default": True,
            },
            # No parquet configs beside it: datasets loads every config of a folder with the
            # one builder it infers (webdataset here), so the tables load by their own path.
        ],
        # Typed here, the loader infers nothing from the first few samples: mixed image
        # formats and samples without a modality load with nulls, none dropped (docs/build.md).
        "dataset_info": [{"config_name": "default", "features": features}],
        "tags": ["webdataset", "mmpipe"],
    }
    top = ", ".join(f"{r} {n}" for r, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:5])
    body = [
        f"# {title}",
        "",
        f"Written by mmpipe: {how}.",
        "",
        f"- samples: {counts.get('written', 0)} of {counts.get('input_rows', 0)} input rows, "
        f"in {counts.get('shards', 0)} WebDataset shards (`shards/*.tar`)",
        f"- rejected: {counts.get('rejected', 0)}" + (f" ({top})" if top else ""),
        f"- members: {', '.join(f'`.{t}`' for t in sorted(types)) or 'none'}",
        "",
        "```python",
        "from datasets import load_dataset",
        'ds = load_dataset("THIS_FOLDER", split="train")             # typed, nulls where absent',
        'rejects = load_dataset("parquet", data_files="THIS_FOLDER/rejects.parquet", split="train")',
        'index = load_dataset("parquet", data_files="THIS_FOLDER/index/*.parquet", split="train")',
        "```",
        "",
        "`index/*.parquet` has one row per sample (members, offsets, sizes, hashes, source row),",
        "in shard order, a file per ~1M rows;",
        "`rejects.parquet` one row per rejected input row, with its reason and message.",
        "",
    ]
    return "---\n" + yaml.safe_dump(header, sort_keys=False) + "---\n" + "\n".join(body)


def write_card(out: str, report: dict[str, Any], *, title: str, job: str) -> None:
    """Write ``OUT/README.md`` (atomically) from a build's or curate's report."""
    text = card_text(
        title=title,
        types=report.get("member_types") or (),
        counts=report["counts"],
        reasons=report["rejects_by_reason"],
        how=f"`mmpipe {job}` {report['mmpipe_version']}, config fingerprint "
        f"{report['config_fingerprint']}",
    )
    write_bytes_atomic(join(out, CARD), text.encode())
