"""Schemas of embed/refresh outputs: the embeddings Parquet, its rejects, the manifest and ledger."""

from __future__ import annotations

import pyarrow as pa

# 1: key, shard, content_hash, model, mask, one L2-normalised column per modality + fused.
EMBED_SCHEMA_VERSION = 1
STORAGE_TYPES = {"float32": pa.float32(), "float16": pa.float16()}
MODALITIES = ("image", "text", "audio")
# Column names a metadata field may not take (they would shadow ours).
RESERVED = frozenset(
    {"key", "shard", "content_hash", "model_id", "model_version", "created_at", "fused_emb"}
    | {f"{m}_emb" for m in MODALITIES}
    | {f"has_{m}" for m in MODALITIES}
)


def embeddings_schema(
    dim: int, modalities: list[str], storage: str = "float32", meta_fields: tuple[str, ...] = ()
) -> pa.Schema:
    """One row per sample: its identity, the model, the modality mask and the embeddings.

    Every embedding column is ``fixed_size_list<float32|float16>[dim]``, L2-normalised, null
    where the sample lacks that modality; ``fused_emb`` is never null. Plain Arrow types only
    (no Ray tensor extension), so pyarrow, pandas, polars and DuckDB all read it. Metadata
    fields selected by the config follow as strings (JSON text for non-string values).
    """
    value = STORAGE_TYPES[storage]
    fields = [
        pa.field("key", pa.string(), nullable=False),
        pa.field("shard", pa.string(), nullable=False),
        # The build index's hash of the sample's content: what refresh compares. Null when the
        # shards came without an index (then a shard is compared as a whole).
        pa.field("content_hash", pa.string()),
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        *(pa.field(f"has_{m}", pa.bool_(), nullable=False) for m in MODALITIES),
        *(pa.field(f"{m}_emb", pa.list_(value, dim)) for m in modalities),
        pa.field("fused_emb", pa.list_(value, dim), nullable=False),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
        *(pa.field(name, pa.string()) for name in meta_fields),
    ]
    return pa.schema(fields)


EMBED_REJECTS_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("shard", pa.string(), nullable=False),
        pa.field("content_hash", pa.string()),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("message", pa.string(), nullable=False),
    ]
)

# manifest.json of a version directory (validated against this before it is written).
MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("schema_version", pa.int32(), nullable=False),
        pa.field("version", pa.string(), nullable=False),
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        # Where the model was loaded from: search encodes queries with the same one.
        pa.field("model_path", pa.string(), nullable=False),
        pa.field("layout", pa.string(), nullable=False),  # storage, dims and fields: a hash
        pa.field("dim", pa.int32(), nullable=False),
        pa.field("storage", pa.string(), nullable=False),
        pa.field("normalization", pa.string(), nullable=False),
        pa.field("preprocessing", pa.string(), nullable=False),
        pa.field("created_at", pa.string(), nullable=False),
        pa.field("rows", pa.int64(), nullable=False),
        pa.field("rejected", pa.int64(), nullable=False),
        pa.field(
            "files",
            pa.list_(
                pa.struct(
                    [
                        pa.field("path", pa.string(), nullable=False),
                        pa.field("shard", pa.string(), nullable=False),
                        pa.field("rows", pa.int64(), nullable=False),
                        pa.field("rejected", pa.int64(), nullable=False),
                        pa.field("bytes", pa.int64(), nullable=False),
                        # sha256 over the shard's sorted (key, content_hash) pairs in the input.
                        pa.field("digest", pa.string(), nullable=False),
                    ]
                )
            ),
            nullable=False,
        ),
    ]
)

# One JSON file per run under OUT/ledger/.
LEDGER_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),  # embed | refresh
        pa.field("started_at", pa.string(), nullable=False),
        pa.field("seconds", pa.float64(), nullable=False),
        pa.field("version", pa.string(), nullable=False),
        pa.field("base_version", pa.string()),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),  # first | incremental | new_model | ...
        pa.field("added", pa.int64(), nullable=False),
        pa.field("changed", pa.int64(), nullable=False),
        pa.field("removed", pa.int64(), nullable=False),
        pa.field("unchanged", pa.int64(), nullable=False),
        pa.field("embedded", pa.int64(), nullable=False),
        pa.field("rejected", pa.int64(), nullable=False),
        pa.field("resumed", pa.int64(), nullable=False),
        pa.field("shards_carried", pa.int64(), nullable=False),
        pa.field("shards_rewritten", pa.int64(), nullable=False),
        pa.field("rows", pa.int64(), nullable=False),
        pa.field("write_seconds", pa.float64(), nullable=False),  # Parquet writing, all workers
        # This run's rejects (the samples it embedded) by reason; ``rejected`` counts the
        # version's, carried ones included.
        pa.field("rejects_by_reason", pa.map_(pa.string(), pa.int64())),
    ]
)


def check_record(record: dict, schema: pa.Schema) -> dict:
    """Validate one JSON record against its Arrow schema (raises on a missing or mistyped field)."""
    pa.Table.from_pylist([record], schema=schema)
    extra = set(record) - set(schema.names)
    if extra:
        raise ValueError(f"fields not in the {schema} schema: {sorted(extra)}")
    return record
