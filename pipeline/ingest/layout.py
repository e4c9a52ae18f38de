"""What a manifest's header says: whether it can be built, and how many rows a chunk holds."""

from __future__ import annotations

from pipeline.config import BuildConfig
from pipeline.errors import UserError
from pipeline.io.fs import get_fs

# A chunk of inline text rows holds this many shards' worth. Such rows cost ~60 us each, so at
# one shard a chunk (1,000 rows) the per-chunk costs (a Ray task, its metadata file, its
# placement and merge) were a third of a build; measured in docs/benchmarks.md ("Rows per
# chunk"). Rows that fetch or decode media keep one shard a chunk: their chunks are where the
# parallelism of a small corpus on a large cluster comes from.
TEXT_SHARDS_PER_CHUNK = 8


def manifest_columns(url: str, kind: str) -> list[str] | None:
    """The manifest's column names, from its header or first row only."""
    fs, path = get_fs(url)
    if kind == "parquet":
        import pyarrow.parquet as pq

        with fs.open(path, "rb") as f:
            return list(pq.read_schema(f).names)
    import csv
    import json

    import fsspec

    with fsspec.open(
        url, "rt", encoding="utf-8", errors="replace", newline="", compression="infer"
    ) as f:
        if kind == "csv":
            return next(csv.reader(f), [])
        for _, line in zip(range(1000), f):
            if line.strip():
                try:
                    first = json.loads(line)
                except ValueError:
                    return None  # a bad first line is a per-row reject, not a layout problem
                return list(first) if isinstance(first, dict) else None
    return []


def check_layout(url: str, kind: str, cfg: BuildConfig) -> list[str] | None:
    """Refuse a manifest with none of the modality columns before any work starts; return
    its columns (None where the input is no manifest or its first row says nothing).

    Raises:
        UserError: a named column is missing, or none of the modality columns is there.
    """
    if kind not in ("jsonl", "csv", "parquet"):
        return None
    try:
        cols = manifest_columns(url, kind)
    except (OSError, ValueError, UnicodeError) as e:
        raise UserError(
            f"cannot read manifest {url}: {type(e).__name__}: {e}".splitlines()[0]
        ) from None
    wanted = [cfg.image_column, cfg.audio_column, cfg.text_column]
    if cols:
        # A column the user named must exist: building without it would drop a modality.
        for name in ("image_column", "audio_column", "text_column", "key_column"):
            value = getattr(cfg, name)
            if name in cfg.model_fields_set and value not in cols:
                flag = "--" + name.replace("_", "-")
                raise UserError(
                    f"manifest {url} has no column {value!r} ({flag}); its columns are "
                    f"{cols[:12]}: name one of them"
                )
    if cols is not None and cols and not set(wanted) & set(cols):
        raise UserError(
            f"manifest {url} has columns {cols[:12]} but none of {wanted}; "
            "name yours with --image-column/--audio-column/--text-column"
        )
    return cols


def rows_per_chunk(cols: list[str] | None, cfg: BuildConfig) -> int:
    """Input rows a chunk holds: several shards' worth where every row is inline text, one
    shard's worth otherwise. The chunk's writer still rolls a tar every ``shard_samples``."""
    names = set(cols or ())
    text_only = (
        cfg.text_column in names
        and not {cfg.image_column, cfg.audio_column} & names
        and cfg.text_source != "path"
    )
    return cfg.shard_samples * (TEXT_SHARDS_PER_CHUNK if text_only else 1)
