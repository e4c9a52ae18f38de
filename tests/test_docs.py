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


def test_every_test_named_in_the_reliability_doc_exists():
    text = (ROOT / "docs" / "reliability.md").read_text()
    refs = set(re.findall(r"`(test_\w+\.py)(?:::(test_\w+?))?(?:\.\.\.)?`", text))
    assert len(refs) >= 10
    for module, name in refs:
        source = (ROOT / "tests" / module).read_text()
        if name:
            assert f"def {name}" in source, f"{module}::{name} is cited but does not exist"
