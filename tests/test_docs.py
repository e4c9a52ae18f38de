"""The documented reject reasons and config fields match the code."""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.config import BuildConfig
from pipeline.errors import REASON_DOCS, Reason
from schemas.build import BUILD_CONFIG_TYPE

ROOT = Path(__file__).resolve().parents[1]


def test_reason_table_matches_enum():
    text = (ROOT / "docs" / "build.md").read_text() + (ROOT / "docs" / "curate.md").read_text()
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


def _subparsers():
    import argparse

    from pipeline.cli import build_parser

    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return subs.choices


def test_cli_reference_is_the_parsers_help():
    """docs/cli.md is regenerated from the parser, so help and docs cannot drift."""
    from pipeline.cli import help_reference

    assert (ROOT / "docs" / "cli.md").read_text() == help_reference(), (
        "docs/cli.md is stale: python -m pipeline.cli --help-reference > docs/cli.md"
    )


def test_every_option_has_help_and_its_default_is_the_configs():
    from pipeline.config import BuildConfig
    from pipeline.embed.config import EmbedConfig
    from pipeline.features.config import FeaturesConfig
    from pipeline.options import default_of, shown
    from pipeline.train.config import TrainConfig

    models = {
        "build": BuildConfig,
        "features": FeaturesConfig,
        "train": TrainConfig,
        "embed": EmbedConfig,
        "refresh": EmbedConfig,
    }
    for name, sp in _subparsers().items():
        for action in sp._actions:
            if not action.option_strings or action.dest == "help":
                continue
            assert action.help, f"mmpipe {name} {action.option_strings[0]} has no help text"
            model = models.get(name)
            said = re.search(r"\(default:? ([\w.,]+)\)", action.help)
            if model and action.dest in model.model_fields:
                # Options of config fields come from the model (pipeline/options.py): each
                # shows the default the config uses, and the two cannot disagree.
                default = default_of(model, action.dest)
                if default is None:
                    continue
                assert said, f"mmpipe {name} {action.option_strings[0]} shows no default"
                assert said.group(1) == shown(default), (name, action.dest, said.group(1))


def test_readme_and_docs_name_only_real_commands_and_flags():
    subs = _subparsers()
    readme = (ROOT / "README.md").read_text()
    for name in subs:
        assert f"mmpipe {name}" in readme, f"the README never mentions `mmpipe {name}`"
    texts = [readme] + [p.read_text() for p in (ROOT / "docs").glob("*.md") if p.name != "cli.md"]
    checked = 0
    for text in texts:
        for line in text.splitlines():
            for m in re.finditer(r"mmpipe ([a-z-]+)\b([^`|;&#]*)", line):
                sub, rest = m.group(1), m.group(2)
                if sub not in subs:
                    continue
                known = {o for a in subs[sub]._actions for o in a.option_strings}
                for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", rest):
                    assert flag in known, f"docs name `mmpipe {sub} {flag}`, which does not exist"
                    checked += 1
    assert checked >= 20
