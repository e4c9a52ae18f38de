"""User mistakes exit 2 with one line that names the problem and the fix; no traceback."""

from __future__ import annotations

import pytest

from pipeline.cli import main


def run(capsys, *argv):
    rc = main(list(argv))
    err = capsys.readouterr().err.strip()
    return rc, err


def one_line(rc, err, *needles):
    assert rc == 2
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err


def test_missing_input(capsys, tmp_path):
    one_line(
        *run(capsys, "build", str(tmp_path / "nope.jsonl"), "--output", str(tmp_path / "o")),
        "input not found",
    )


def test_bad_option_value(capsys, tmp_path):
    one_line(
        *run(capsys, "build", "x.jsonl", "--output", str(tmp_path), "--resize-mode", "squash"),
        "--resize-mode",
        "keep_ratio",
    )
    one_line(
        *run(capsys, "build", "x.jsonl", "--output", str(tmp_path), "--shard-samples", "0"),
        "shard_samples",
    )
    one_line(
        *run(capsys, "build", "x.jsonl", "--output", str(tmp_path), "--resize", "big"), "--resize"
    )


def test_unknown_flag_and_missing_output(capsys):
    one_line(
        *run(capsys, "build", "x.jsonl", "--output", "o", "--shard-sampels", "3"), "--shard-sampels"
    )
    one_line(*run(capsys, "build", "x.jsonl"), "--output")


def test_unknown_layout(capsys, tmp_path):
    m = tmp_path / "m.jsonl"
    m.write_text('{"url": "a.jpg", "caption": "x"}\n')
    one_line(
        *run(capsys, "build", str(m), "--output", str(tmp_path / "o")), "--image-column", "url"
    )


def test_unknown_format(capsys, tmp_path):
    m = tmp_path / "m.xlsx"
    m.write_text("x")
    one_line(*run(capsys, "build", str(m), "--output", str(tmp_path / "o")), "--input-format")


def test_unwritable_output(capsys, tmp_path):
    m = tmp_path / "m.jsonl"
    m.write_text('{"text": "hello"}\n')
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    one_line(*run(capsys, "build", str(m), "--output", str(blocker / "out")), "is under the file")


def test_glob_matching_nothing(capsys, tmp_path):
    one_line(
        *run(capsys, "build", str(tmp_path / "*.tar"), "--output", str(tmp_path / "o")),
        "matches no files",
    )


@pytest.mark.usefixtures("ray_local")
def test_changed_config_on_finished_output_is_refused(capsys, tmp_path):
    m = tmp_path / "m.jsonl"
    m.write_text('{"text": "hello"}\n{"text": "world"}\n')
    out = str(tmp_path / "o")
    assert main(["build", str(m), "--output", out, "-q"]) == 0
    capsys.readouterr()
    one_line(*run(capsys, "build", str(m), "--output", out, "--shard-samples", "5"), "--overwrite")
    assert (
        main(["build", str(m), "--output", out, "--shard-samples", "5", "--overwrite", "-q"]) == 0
    )
