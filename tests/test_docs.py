"""The documented reject reasons and config fields match the code."""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.config import BuildConfig
from pipeline.errors import REASON_DOCS, Reason
from schemas.build import BUILD_CONFIG_TYPE

ROOT = Path(__file__).resolve().parents[1]


def test_reason_table_matches_enum():
    text = (ROOT / "docs" / "build.md").read_text()
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", text, flags=re.MULTILINE))
    assert documented == {r.value for r in Reason} == {r.value for r in REASON_DOCS}


def test_report_schema_covers_every_config_field():
    assert {f.name for f in BUILD_CONFIG_TYPE} == set(BuildConfig.model_fields)
