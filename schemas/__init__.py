"""Arrow schemas for every file mmpipe writes: the single source of truth."""

from schemas.build import (
    BUILD_REPORT_SCHEMA,
    BUILD_SCHEMA_VERSION,
    INDEX_SCHEMA,
    REJECTS_SCHEMA,
    SCHEMA_KEY,
    SCHEMA_VERSION_KEY,
    SHARDS_SCHEMA,
    STAGED_SCHEMA,
    with_schema_metadata,
)
from schemas.curate import CURATE_SCHEMA_VERSION, MEASURE_SCHEMA, SEMDUP_SCHEMA
from schemas.embeddings import (
    EMBED_REJECTS_SCHEMA,
    EMBED_SCHEMA_VERSION,
    LEDGER_SCHEMA,
    MANIFEST_SCHEMA,
    check_record,
    embeddings_schema,
)
from schemas.features import FEATURE_REJECTS_SCHEMA, FEATURES_SCHEMA_VERSION, features_schema

__all__ = [
    "BUILD_REPORT_SCHEMA",
    "BUILD_SCHEMA_VERSION",
    "CURATE_SCHEMA_VERSION",
    "EMBED_REJECTS_SCHEMA",
    "EMBED_SCHEMA_VERSION",
    "FEATURES_SCHEMA_VERSION",
    "FEATURE_REJECTS_SCHEMA",
    "INDEX_SCHEMA",
    "LEDGER_SCHEMA",
    "MANIFEST_SCHEMA",
    "MEASURE_SCHEMA",
    "REJECTS_SCHEMA",
    "SCHEMA_KEY",
    "SCHEMA_VERSION_KEY",
    "SEMDUP_SCHEMA",
    "SHARDS_SCHEMA",
    "STAGED_SCHEMA",
    "check_record",
    "embeddings_schema",
    "features_schema",
    "with_schema_metadata",
]
