"""Errors keep their cause: one line naming the operation and path, the traceback in a log file;
and nothing depends on the working directory once a job has started."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.cli import main
from pipeline.failure import LOG_DIR_ENV, run_guarded
from pipeline.io.fs import remove_tree


def test_remove_tree_works_after_the_working_directory_is_gone(tmp_path):
    """fsspec's local rm calls os.getcwd(); a job whose working_dir was replaced failed there."""
    target = tmp_path / "out" / "_work"
    (target / "chunks").mkdir(parents=True)
    (target / "chunks" / "a.parquet").write_bytes(b"x")
    doomed = tmp_path / "cwd"
    doomed.mkdir()
    here = os.getcwd()
    try:
        os.chdir(doomed)
        doomed.rmdir()
        remove_tree(str(target))
        remove_tree(str(target))  # a retry, or a second process: already gone is fine
    finally:
        os.chdir(here)
    assert not target.exists()


def test_a_storage_error_names_its_path_and_points_to_the_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(LOG_DIR_ENV, str(tmp_path / "logs"))

    def fails() -> None:
        open(tmp_path / "no" / "such" / "file.parquet", "rb")  # noqa: SIM115

    assert run_guarded("mmpipe", fails) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "file.parquet" in err and "check the path" in err, err
    log = Path(err.rsplit("(traceback: ", 1)[1].rstrip(")"))
    assert log.parent == tmp_path / "logs" and "Traceback" in log.read_text()
    assert "in fails" in log.read_text()  # the frame where it happened, for a bug report


def test_debug_prints_the_traceback_too(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(LOG_DIR_ENV, str(tmp_path / "logs"))

    def fails() -> None:
        open(tmp_path / "missing.parquet", "rb")  # noqa: SIM115

    assert run_guarded("mmpipe", fails, debug=True) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("mmpipe: error: ")
    # A user mistake stays one line, with or without --debug, and wherever --debug is put.
    for argv in (
        ["--debug", "search", str(tmp_path), "-k", "0"],
        ["search", str(tmp_path), "-k", "0", "--debug"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "Traceback" not in err and len(err.splitlines()) == 1, err


def test_features_resume_only_parts_of_the_same_config(tmp_path, capsys):
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq
    import pytest

    from pipeline.errors import UserError
    from pipeline.features.job import STARTED
    from pipeline.features.output import OWNED
    from pipeline.io.parts import done_keys
    from pipeline.lifecycle import Output

    def output(root, fp):
        return Output("features", str(root), fp, "features.json", STARTED, OWNED, "_SUCCESS")

    def kept(root):
        return lambda: sum(len(v) for v in done_keys(str(root)).values())

    out = tmp_path / "feats"
    (out / "parts" / "000000").mkdir(parents=True)
    pq.write_table(pa.table({"key": ["a", "b"]}), out / "parts" / "000000" / "p.parquet")
    (out / STARTED).write_text(json.dumps({"fingerprint": "config-a"}))
    with pytest.raises(UserError, match="different config"):
        output(out, "config-b").claim({}, work_done=kept(out))
    said: list[str] = []
    assert output(out, "config-a").claim({}, work_done=kept(out), say=said.append) == 2
    assert "keeping 2 units" in said[0] and done_keys(str(out)) == {"000000": {"a", "b"}}
    # A run of another config that committed nothing is replaced, not refused.
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / STARTED).write_text(json.dumps({"fingerprint": "config-a"}))
    assert output(empty, "config-b").claim({}, work_done=kept(empty)) == 0
    assert json.loads((empty / STARTED).read_text())["fingerprint"] == "config-b"
    # --overwrite removes what the job owns there, and nothing else.
    (out / "notes.txt").write_text("mine")
    assert output(out, "config-b").claim({}, overwrite=True, work_done=kept(out)) == 0
    assert not (out / "parts").exists() and (out / "notes.txt").read_text() == "mine"
