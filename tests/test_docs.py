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


def _expanded(text: str) -> str:
    """The text with ``a/{b,c}.py`` written out as ``a/b.py a/c.py``."""
    return re.sub(
        r"([\w/]*)\{([\w,]+)\}(\.py)",
        lambda m: " ".join(f"{m.group(1)}{p}{m.group(3)}" for p in m.group(2).split(",")),
        text,
    )


def test_every_module_is_on_the_architecture_map():
    text = _expanded((ROOT / "docs" / "architecture.md").read_text())
    missing = []
    for top in ("pipeline", "schemas", "jobs"):
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT / top).as_posix()
            if rel.endswith("/__init__.py"):
                continue  # a subpackage's marker: its modules are mapped
            names = [f"{top}/{rel}"] + ([rel] if top == "pipeline" else [])
            if not any(re.search(rf"(?<![\w/]){re.escape(n)}\b", text) for n in names):
                missing.append(f"{top}/{rel}")
    assert not missing, f"docs/architecture.md does not map {missing}"


def test_every_stage_is_one_hop_from_the_readme():
    stages = set()
    for path in (ROOT / "pipeline").rglob("*.py"):
        stages |= set(re.findall(r"^class (\w+)\((?:Stage|PartWriter)\)", path.read_text(), re.M))
    assert len(stages) >= 15
    arch = (ROOT / "docs" / "architecture.md").read_text()
    readme = (ROOT / "README.md").read_text()
    for name in sorted(stages):
        assert f"`{name}`" in arch, f"{name} is missing from the stage table"
        assert re.search(rf"\[`{name}`\]\(pipeline/[\w/]+\.py\)", readme), f"README: {name}"
