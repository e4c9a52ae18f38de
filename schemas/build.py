"""Schemas of the build stage's outputs: index, rejects, staged chunk metadata and build.json."""

from __future__ import annotations

import pyarrow as pa

# Bump when a column is added, removed or changes meaning; readers check it.
BUILD_SCHEMA_VERSION = 3
SCHEMA_KEY = b"mmpipe.schema"
SCHEMA_VERSION_KEY = b"mmpipe.schema_version"

MEMBER_TYPE = pa.struct(
    [
        pa.field("name", pa.string(), nullable=False),
        # Byte offset of the member's data (not its header) in the tar, for random access.
        pa.field("offset", pa.int64(), nullable=False),
        pa.field("size", pa.int64(), nullable=False),
    ]
)

# Columns shared by index rows and staged rows: what validation learnt about a sample.
_SAMPLE_FIELDS = [
    pa.field("key", pa.string(), nullable=False),
    pa.field("members", pa.list_(MEMBER_TYPE), nullable=False),
    pa.field("content_hash", pa.string(), nullable=False),
    pa.field("image_format", pa.string()),
    pa.field("image_width", pa.int32()),
    pa.field("image_height", pa.int32()),
    # 64-bit pHash of the upright image (imagehash's bits, first bit highest); near-dup search.
    pa.field("image_phash", pa.uint64()),
    pa.field("audio_format", pa.string()),
    pa.field("audio_duration", pa.float64()),
    pa.field("audio_sample_rate", pa.int32()),
    pa.field("audio_channels", pa.int32()),
    pa.field("text_length", pa.int32()),
]

_SOURCE_FIELDS = [
    pa.field("source_file", pa.string(), nullable=False),
    pa.field("source_row", pa.int64(), nullable=False),
    pa.field("source_key", pa.string()),
]

INDEX_SCHEMA = pa.schema(
    [
        _SAMPLE_FIELDS[0],
        pa.field("shard", pa.string(), nullable=False),
        *_SAMPLE_FIELDS[1:],
        *_SOURCE_FIELDS,
    ]
)

REJECTS_SCHEMA = pa.schema(
    [
        *_SOURCE_FIELDS,
        # The sanitised key when one was derived before the row failed.
        pa.field("key", pa.string()),
        pa.field("reason", pa.string(), nullable=False),
        # Which modality failed (image, audio, text, row).
        pa.field("modality", pa.string()),
        pa.field("message", pa.string(), nullable=False),
    ]
)

# One row per final shard (OUT/shards.parquet): what refresh planning reads instead of the
# whole index. ``digest`` is fingerprint.digest_text of the shard's (key, content_hash) rows;
# ``index_file`` is the index file that holds its rows (relative to the build; null in
# builds that wrote one index.parquet) and ``index_row_groups`` that file's row groups.
SHARDS_SCHEMA = pa.schema(
    [
        pa.field("shard", pa.string(), nullable=False),
        pa.field("samples", pa.int64(), nullable=False),
        pa.field("digest", pa.string(), nullable=False),
        pa.field("index_row_groups", pa.list_(pa.int32()), nullable=False),
        pa.field("index_file", pa.string()),
    ]
)

# One row per input row of a processed chunk (written or rejected), in input order.
# Internal to a build (kept under OUT/_work), but versioned like the rest so that a
# resumed build never reads chunk metadata written by an incompatible version.
STAGED_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string()),
        pa.field("staged_tar", pa.string()),
        pa.field("members", pa.list_(MEMBER_TYPE)),
        pa.field("content_hash", pa.string()),
        *_SAMPLE_FIELDS[3:],
        *_SOURCE_FIELDS,
        pa.field("reason", pa.string()),
        pa.field("modality", pa.string()),
        pa.field("message", pa.string()),
    ]
)

BUILD_CONFIG_TYPE = pa.struct(
    [
        pa.field("input", pa.string()),
        pa.field("output", pa.string()),
        pa.field("input_format", pa.string()),
        pa.field("image_column", pa.string()),
        pa.field("audio_column", pa.string()),
        pa.field("text_column", pa.string()),
        pa.field("key_column", pa.string()),
        pa.field("text_source", pa.string()),
        pa.field("shard_samples", pa.int64()),
        pa.field("shard_bytes", pa.int64()),
        pa.field("resize", pa.int64()),
        pa.field("resize_mode", pa.string()),
        pa.field("upscale", pa.bool_()),
        pa.field("resize_filter", pa.string()),
        pa.field("image_format", pa.string()),
        pa.field("image_quality", pa.int64()),
        pa.field("min_image_size", pa.int64()),
        pa.field("max_image_size", pa.int64()),
        pa.field("max_image_pixels", pa.int64()),
        pa.field("audio_rate", pa.int64()),
        pa.field("audio_format", pa.string()),
        pa.field("min_audio_seconds", pa.float64()),
        pa.field("max_audio_seconds", pa.float64()),
        pa.field("max_text_chars", pa.int64()),
        pa.field("max_file_bytes", pa.int64()),
        pa.field("sample_timeout_s", pa.float64()),
        pa.field("on_modality_error", pa.string()),
        pa.field("on_error", pa.string()),
        pa.field("allow_local_refs", pa.bool_()),
        pa.field("allow_hosts", pa.list_(pa.string())),
        pa.field("fetch_concurrency", pa.int64()),
        pa.field("num_cpus", pa.float64()),
        pa.field("dedup_partition_rows", pa.int64()),
        pa.field("near_duplicates", pa.bool_()),
        pa.field("near_dup_distance", pa.int64()),
    ]
)

BUILD_REPORT_SCHEMA = pa.schema(
    [
        pa.field("schema_version", pa.int32(), nullable=False),
        pa.field("mmpipe_version", pa.string(), nullable=False),
        pa.field("input_kind", pa.string(), nullable=False),
        pa.field("config", BUILD_CONFIG_TYPE, nullable=False),
        pa.field("config_fingerprint", pa.string(), nullable=False),
        pa.field(
            "counts",
            pa.struct(
                [
                    pa.field("input_rows", pa.int64()),
                    pa.field("written", pa.int64()),
                    pa.field("rejected", pa.int64()),
                    pa.field("shards", pa.int64()),
                    pa.field("bytes_written", pa.int64()),
                ]
            ),
            nullable=False,
        ),
        pa.field(
            "chunks", pa.struct([pa.field("total", pa.int64()), pa.field("resumed", pa.int64())])
        ),
        pa.field("rejects_by_reason", pa.map_(pa.string(), pa.int64()), nullable=False),
        pa.field("timings_s", pa.map_(pa.string(), pa.float64()), nullable=False),
        pa.field("throughput_rows_per_s", pa.float64()),
        # Every member extension a written sample has (jpg, png, flac, txt, json, ...): what
        # the dataset card (README.md) types for HF datasets.
        pa.field("member_types", pa.list_(pa.string())),
        pa.field(
            "files",
            pa.struct(
                [
                    pa.field("index", pa.string()),
                    pa.field("rejects", pa.string()),
                    pa.field("shards", pa.string()),
                ]
            ),
        ),
    ]
)


def with_schema_metadata(schema: pa.Schema, name: str) -> pa.Schema:
    """Return ``schema`` tagged with its name and version, as every Parquet file we write is."""
    meta = dict(schema.metadata or {})
    meta[SCHEMA_KEY] = name.encode()
    meta[SCHEMA_VERSION_KEY] = str(BUILD_SCHEMA_VERSION).encode()
    return schema.with_metadata(meta)
