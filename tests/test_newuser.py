"""What a new user trips over: hangs, a poisoned output folder, silent acceptance, late errors."""

from __future__ import annotations

import io
import json
import socket
import tarfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from pipeline.errors import UserError, storage_line
from pipeline.session import probe_address


def run(capsys, *argv):
    t0 = time.monotonic()
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err.strip(), time.monotonic() - t0


def one_line(result, *needles):
    rc, err, _ = result
    assert rc == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err
    return err


def _dead_port() -> int:
    with socket.socket() as s:  # bound then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _manifest(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# -- hangs: every address form gives up in bounded time --------------------------------------


def test_every_address_form_gives_up_quickly(capsys, tmp_path):
    port = _dead_port()
    m = _manifest(tmp_path / "m.jsonl", [{"text": "a caption"}])
    feats, run_dir = tmp_path / "feats", tmp_path / "run"
    feats.mkdir()
    for argv in (
        ("build", m, "-o", tmp_path / "out", "--address", f"127.0.0.1:{port}"),
        ("features", tmp_path, "-o", feats / "o", "--address", f"127.0.0.1:{port}"),
        ("train", feats, "-o", run_dir, "--address", f"ray://127.0.0.1:{port}"),
        (
            "embed",
            tmp_path,
            "--model",
            run_dir,
            "-o",
            tmp_path / "e",
            "--address",
            f"127.0.0.1:{port}",
        ),
    ):
        result = run(capsys, *argv)
        one_line(result, "no Ray at", "ray start --head")
        assert result[2] < 10, f"{argv[0]} took {result[2]:.1f}s to give up"
    assert not (tmp_path / "out").exists()  # a wrong address leaves no output behind
    for bad in ("nohost", "http://127.0.0.1:8265", "127.0.0.1:notaport"):
        with pytest.raises(UserError):
            probe_address(bad, timeout_s=1)


# -- a failed run never poisons its output folder --------------------------------------------


def test_a_failed_build_leaves_nothing_that_blocks_the_next(capsys, tmp_path):
    out = tmp_path / "out"
    one_line(run(capsys, "build", tmp_path / "missing.jsonl", "-o", out), "input not found")
    no_media = _manifest(tmp_path / "nomedia.jsonl", [{"caption": "x", "id": 1}])
    one_line(run(capsys, "build", no_media, "-o", out), "none of")
    assert not out.exists()


def test_a_named_column_that_is_missing_is_refused(capsys, tmp_path):
    m = _manifest(tmp_path / "m.jsonl", [{"text": "a caption", "image": "a.jpg"}])
    err = one_line(
        run(capsys, "build", m, "-o", tmp_path / "out", "--image-column", "picture"),
        "'picture'",
        "--image-column",
    )
    assert "['text', 'image']" in err and not (tmp_path / "out").exists()


def test_an_empty_input_is_refused(capsys, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    one_line(run(capsys, "build", empty, "-o", tmp_path / "o1"), "holds no samples")
    header = tmp_path / "header.csv"
    header.write_text("image,text\n")
    one_line(run(capsys, "build", header, "-o", tmp_path / "o2"), "holds no samples")
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


# -- outputs are checked before any work, with advice that fits ----------------------------


def test_an_output_that_is_a_file_fails_at_once(capsys, tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    m = _manifest(tmp_path / "m.jsonl", [{"text": "a"}])
    for argv in (
        ("build", m, "-o", blocker),
        ("features", tmp_path, "-o", blocker),
        ("embed", tmp_path, "--model", tmp_path, "-o", blocker),
        ("train", tmp_path, "-o", blocker / "sub"),
    ):
        result = run(capsys, *argv)
        err = one_line(result, "--output", "give a folder path")
        assert "rerun to resume" not in err and result[2] < 5, (argv[0], result[2])


def test_local_path_errors_get_path_advice_not_store_advice():
    line = storage_line(FileNotFoundError(2, "No such file or directory", "/data/x.jpg"))
    assert "/data/x.jpg" in line and "check the path" in line and "resume" not in line
    line = storage_line(IsADirectoryError(21, "Is a directory", "/data"))
    assert "a file was expected" in line
    assert "rerun to resume" in storage_line(ConnectionResetError(104, "reset by peer"))


def test_search_and_index_arguments_are_checked(capsys, tmp_path):
    one_line(run(capsys, "search", tmp_path, "--text", "x", "-k", "0"), "-k", "below 1")
    one_line(run(capsys, "search", tmp_path, "--text", "x", "-k", "-3"), "-k")
    one_line(run(capsys, "index", tmp_path, "--column", "pixels"), "--column", "fused")
    one_line(
        run(capsys, "search", tmp_path, "--image", tmp_path / "missing.jpg"),
        "missing.jpg: no such file",
    )


def test_messages_are_not_garbled(capsys, tmp_path):
    err = one_line(run(capsys, "embed", tmp_path, "-o", tmp_path / "e"), "model is required")
    assert "{" not in err  # never the whole config mapping


# -- help, version and choices --------------------------------------------------------------


def test_version_and_enum_choices(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("mmpipe ")
    one_line(run(capsys, "train", "x", "-o", "y", "--fusion", "sideways"), "early", "bilinear")
    one_line(run(capsys, "features", "x", "-o", "y", "--device", "tpu"), "cuda")
    from pipeline.cli import help_reference

    ref = help_reference()
    assert "finetune" in ref and "http://127.0.0.1:8265" in ref


def test_embed_and_refresh_take_shards_in_both_forms():
    from pipeline.cli import build_parser

    p = build_parser()
    for sub in ("embed", "refresh"):
        for argv in (
            [sub, "B", "--model", "R", "-o", "E"],
            [sub, "--shards", "B", "--model", "R", "-o", "E"],
        ):
            args = p.parse_args(argv)
            assert (args.shards_arg or args.shards) == "B"


def test_dry_run_reports_in_seconds_and_writes_nothing(capsys, tmp_path):
    from pipeline.sample_corpus import write_corpus

    info = write_corpus(str(tmp_path / "c"), n=60, seed=3)
    out = tmp_path / "out"
    rc, err, secs = run(capsys, "build", info["manifest"], "-o", out, "--dry-run")
    assert rc == 0 and not out.exists(), err
    assert f"{info['rows']} rows" in err and "would be written" in err and "estimated output" in err
    assert "decode_error" in err and "image:path" in err and secs < 30


# -- on a local Ray ---------------------------------------------------------------------------


def _text_tar(path: Path, start: int, n: int) -> None:
    with tarfile.open(path, "w") as tf:
        for i in range(start, start + n):
            data = f"caption {i}".encode()
            info = tarfile.TarInfo(f"s{i:05d}.txt")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


@pytest.mark.usefixtures("ray_local")
def test_tar_input_is_rerolled_and_loader_files_are_written(capsys, tmp_path):
    from pipeline.io.shards import resolve_shards

    for i in range(4):
        _text_tar(tmp_path / f"in-{i}.tar", i * 50, 50)
    out = tmp_path / "out"
    # A stale unfinished build that finished nothing does not block this one.
    (out / "_work" / "chunks").mkdir(parents=True)
    (out / "_work" / "config.json").write_text(json.dumps({"fingerprint": "another config"}))
    rc, err, _ = run(capsys, "build", str(tmp_path / "in-*.tar"), "-o", out, "--shard-samples", 100)
    assert rc == 0, err
    report = json.loads((out / "build.json").read_text())
    assert report["counts"]["shards"] == 2 and report["counts"]["written"] == 200
    sizes = json.loads((out / "shards" / "sizes.json").read_text())
    assert sizes == {"000000.tar": 100, "000001.tar": 100}
    wids = json.loads((out / "shards" / "shardindex.json").read_text())
    assert [s["nsamples"] for s in wids["shardlist"]] == [100, 100]
    assert not (out / "_work").exists()
    # The folder that holds the tars is as good as the build folder.
    assert resolve_shards(str(out / "shards")) == resolve_shards(str(out))


@pytest.mark.usefixtures("ray_local")
def test_an_interrupted_commit_leaves_no_index_without_build_json(monkeypatch, capsys, tmp_path):
    import pipeline.build.job as job
    from pipeline.io.shards import resolve_shards

    m = _manifest(tmp_path / "m.jsonl", [{"text": f"caption {i}"} for i in range(30)])
    out = tmp_path / "out"

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(job, "make_report", interrupted)
    assert run(capsys, "build", m, "-o", out)[0] == 130
    assert not (out / "index").exists() and not (out / "rejects.parquet").exists()
    assert not (out / "build.json").exists()
    with pytest.raises(UserError, match="unfinished build"):
        resolve_shards(str(out))
    monkeypatch.undo()
    rc, err, _ = run(capsys, "build", m, "-o", out)
    assert (
        rc == 0 and "resuming the unfinished build" in err and "keeping 1 finished chunk," in err
    ), err
    assert pq.read_table(out / "index").num_rows == 30


@pytest.mark.usefixtures("ray_local")
def test_a_mixed_wav_and_flac_corpus_builds_one_audio_type(capsys, tmp_path):
    """HF datasets' WebDataset loader refuses samples whose member types differ."""
    import webdataset as wds

    from tests import media

    rows = []
    for i in range(6):
        fmt = "WAV" if i % 2 else "FLAC"
        name = f"a{i}.{fmt.lower()}"
        (tmp_path / name).write_bytes(media.wav(0.2, 16000, fmt=fmt))
        rows.append({"key": f"k{i}", "audio": name, "text": f"clip {i}"})
    m = _manifest(tmp_path / "m.jsonl", rows)
    rc, err, _ = run(capsys, "build", m, "-o", tmp_path / "out")
    assert rc == 0, err
    tars = sorted(str(p) for p in (tmp_path / "out" / "shards").glob("*.tar"))
    kinds = {
        frozenset(k for k in s if not k.startswith("__"))
        for s in wds.WebDataset(tars, shardshuffle=False)
    }
    assert kinds == {frozenset({"flac", "txt", "json"})}, kinds
