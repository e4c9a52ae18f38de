"""Schemas of curate's working files (measurements, semantic duplicates) and curate.json."""

from __future__ import annotations

import pyarrow as pa

CURATE_SCHEMA_VERSION = 1

# One row per input index row of a shard, in index order: what every filter measured.
MEASURE_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("shard", pa.string(), nullable=False),
        # The row's place in the build's input order: shard rank << 32 | position in shard.
        pa.field("order", pa.int64(), nullable=False),
        pa.field("image_width", pa.int32()),
        pa.field("image_height", pa.int32()),
        pa.field("audio_duration", pa.float64()),
        pa.field("caption_words", pa.int32()),
        pa.field("caption_chars", pa.int32()),
        pa.field("language", pa.string()),
        pa.field("language_score", pa.float32()),
        pa.field("similarity", pa.float32()),
        pa.field("silent_fraction", pa.float32()),
        pa.field("snr_db", pa.float32()),
        pa.field("predicate_keep", pa.bool_()),
        pa.field("predicate_reason", pa.string()),
        # SemDeDup's vector (L2-normalised), null without one: kept rows' copy, read once.
        pa.field("vector", pa.list_(pa.float32())),
    ]
)

# One row per semantic duplicate: which kept sample it repeats, and how close it is.
SEMDUP_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("shard", pa.string(), nullable=False),
        pa.field("kept_key", pa.string(), nullable=False),
        pa.field("similarity", pa.float32(), nullable=False),
    ]
)
