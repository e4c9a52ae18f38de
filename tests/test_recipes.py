"""The docs' recipes for reading mmpipe's outputs run as written, with the real client libraries."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from pipeline.cli import main
from tests.test_embed import store  # noqa: F401  (a fixture: an embeddings store)
from tests.test_hf import _audio_decoding, mixed  # noqa: F401  (a fixture: a mixed build)

ROOT = Path(__file__).resolve().parents[1]


def recipes(doc: str, lang: str, section: str) -> list[str]:
    """The ``lang`` code blocks under the heading ``section`` of docs/``doc``."""
    lines, body, inside, code = (ROOT / "docs" / doc).read_text().splitlines(), [], False, False
    for line in lines:
        code ^= line.startswith("```")
        if not code and re.match(r"#+ ", line):  # a heading, not a comment in a code block
            inside = line.lstrip("#").strip() == section
        elif inside:
            body.append(line)
    body = "\n".join(body) + "\n"
    assert body.strip(), f"docs/{doc} has no section {section!r}"
    found = re.findall(rf"```{lang}\n(.*?)```", body, flags=re.DOTALL)
    assert found, f"docs/{doc} '{section}' has no {lang} recipe"
    return found


def at(code: str, out: Path) -> str:
    return re.sub(r"\bOUT\b", str(out), code)


def test_the_build_recipes_run(mixed, tmp_path, monkeypatch, capsys):  # noqa: F811
    import datasets

    _audio_decoding()
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))
    out, index = mixed
    for code in recipes("build.md", "python", "Reading a build elsewhere"):
        scope: dict = {}
        exec(compile(at(code, out), "docs/build.md", "exec"), scope)
        if "ds" in scope and hasattr(scope["ds"], "num_rows"):
            assert scope["ds"].num_rows == index.num_rows  # every sample, by every loader
    for code in recipes("build.md", "bash", "Reading a build elsewhere"):
        for line in at(code, out).splitlines():
            argv = shlex.split(line.split("#", 1)[0])
            assert argv[0] == "mmpipe" and main(argv[1:]) == 0, line
    assert "decode_error" in capsys.readouterr().out


def test_the_embeddings_recipes_run(store, tmp_path, monkeypatch):  # noqa: F811
    import datasets
    import duckdb

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))
    out, report = store
    (code,) = recipes("embed.md", "python", "Reading")
    scope: dict = {}
    exec(compile(at(code, out), "docs/embed.md", "exec"), scope)
    n = report["rows"]
    assert scope["table"].num_rows == len(scope["df"]) == scope["frame"].height == n
    assert scope["dataset"].count_rows() == scope["hf"].num_rows == n
    (sql,) = recipes("embed.md", "sql", "Reading")
    rows = duckdb.sql(at(sql, out).strip().rstrip(";")).fetchall()
    assert len(rows) == 10 and rows[0][2] == pytest.approx(1.0, abs=1e-4)


def test_the_features_recipes_run(world, tmp_path, monkeypatch):
    import datasets
    import duckdb

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))
    out = world / "f"
    (code,) = recipes("features.md", "python", "Reading the output")
    scope: dict = {}
    exec(compile(at(code, out), "docs/features.md", "exec"), scope)
    assert scope["t"].num_rows == len(scope["df"]) == scope["frame"].height == 60
    assert scope["hf"].num_rows == 60 and "text_emb" in scope["t"].column_names
    (sql,) = recipes("features.md", "sql", "Reading the output")
    assert len(duckdb.sql(at(sql, out).strip().rstrip(";")).fetchall()) == 60
