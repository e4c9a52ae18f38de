"""Schemas of the features stage's outputs: per-modality embedding columns, mask, rejects."""

from __future__ import annotations

import pyarrow as pa

FEATURES_SCHEMA_VERSION = 2  # 2: the sample metadata column


def features_schema(dims: dict[str, int]) -> pa.Schema:
    """``key``, ``shard``, one ``fixed_size_list<float32>[D]`` per modality, and the mask.

    Plain Arrow types only (never Ray's tensor extension), so any Parquet reader can load it.
    A modality absent from a sample is a null embedding and a False mask bit. ``meta`` is the
    sample's JSON metadata from the build (null when it had none).
    """
    fields = [
        pa.field("key", pa.string(), nullable=False),
        pa.field("shard", pa.string(), nullable=False),
    ]
    for modality in ("image", "text", "audio"):
        if modality in dims:
            fields.append(pa.field(f"{modality}_emb", pa.list_(pa.float32(), dims[modality])))
    fields += [pa.field(f"has_{m}", pa.bool_(), nullable=False) for m in ("image", "text", "audio")]
    # The sample's metadata (its .json member in the shard, JSON text): labels and attributes
    # travel with the features, so training needs no join back to the manifest.
    fields.append(pa.field("meta", pa.string()))
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
