"""Schemas of the features stage's outputs: per-modality embedding columns, mask, rejects."""

from __future__ import annotations

import pyarrow as pa

FEATURES_SCHEMA_VERSION = 1


def features_schema(dims: dict[str, int]) -> pa.Schema:
    """``key``, ``shard``, one ``fixed_size_list<float32>[D]`` per modality, and the mask.

    Plain Arrow types only (never Ray's tensor extension), so any Parquet reader can load it.
    A modality absent from a sample is a null embedding and a False mask bit.
    """
    fields = [
        pa.field("key", pa.string(), nullable=False),
        pa.field("shard", pa.string(), nullable=False),
    ]
    for modality in ("image", "text", "audio"):
        if modality in dims:
            fields.append(pa.field(f"{modality}_emb", pa.list_(pa.float32(), dims[modality])))
    fields += [pa.field(f"has_{m}", pa.bool_(), nullable=False) for m in ("image", "text", "audio")]
    return pa.schema(fields)


FEATURE_REJECTS_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("shard", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("message", pa.string(), nullable=False),
    ]
)
