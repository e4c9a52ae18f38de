"""Arrow schemas for every file mmpipe writes: the single source of truth."""

from schemas.build import (
    BUILD_REPORT_SCHEMA,
    BUILD_SCHEMA_VERSION,
    INDEX_SCHEMA,
    REJECTS_SCHEMA,
    SCHEMA_KEY,
    SCHEMA_VERSION_KEY,
    STAGED_SCHEMA,
    with_schema_metadata,
)
from schemas.features import FEATURE_REJECTS_SCHEMA, FEATURES_SCHEMA_VERSION, features_schema

__all__ = [
    "BUILD_REPORT_SCHEMA",
    "BUILD_SCHEMA_VERSION",
    "FEATURES_SCHEMA_VERSION",
    "FEATURE_REJECTS_SCHEMA",
    "INDEX_SCHEMA",
    "REJECTS_SCHEMA",
    "SCHEMA_KEY",
    "SCHEMA_VERSION_KEY",
    "STAGED_SCHEMA",
    "features_schema",
    "with_schema_metadata",
]
