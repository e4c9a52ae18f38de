"""A build is a Hugging Face dataset as it stands, and what it rejected is listed without pandas."""

from __future__ import annotations

import json
import os
from glob import glob
from pathlib import Path

import pytest

from pipeline.build.job import run_build
from pipeline.cli import main
from pipeline.config import BuildConfig
from tests import media
from tests.test_build import check_invariant

FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}


def _audio_decoding() -> None:
    """datasets decodes audio with torchcodec, which needs FFmpeg's libraries (Debian's ffmpeg,
    which .ci/run installs): on CI their absence fails, elsewhere it skips with the fix."""
    try:
        from torchcodec.decoders import AudioDecoder  # noqa: F401
    except Exception as e:  # torchcodec raises RuntimeError when FFmpeg cannot be loaded
        if os.environ.get("CI"):
            raise
        pytest.skip(f"torchcodec cannot load FFmpeg ({type(e).__name__}); apt-get install ffmpeg")


@pytest.fixture(scope="module")
def mixed(ray_local, tmp_path_factory):
    """40 rows mixing JPEG, PNG and WebP, some without image, audio or text, plus 3 rejects."""
    root = tmp_path_factory.mktemp("hf")
    rows = []
    for i in range(40):
        row: dict = {"key": f"s{i:03d}", "label": f"c{i % 3}"}
        if i % 7 != 3:
            ext = list(FORMATS)[i % 3]
            (root / f"{i}.{ext}").write_bytes(media.image_bytes(FORMATS[ext], 40 + i, 30))
            row["image"] = f"{i}.{ext}"
        if i >= 5 and i % 4:  # the first five have none: inference from them would drop it
            (root / f"{i}.wav").write_bytes(media.wav(seconds=0.2 + i / 100))
            row["audio"] = f"{i}.wav"
        if i % 5 != 1:
            row["text"] = f"caption number {i}"
        rows.append(row)
    (root / "bad.jpg").write_bytes(b"not an image")
    rows += [
        {"key": "bad", "image": "bad.jpg", "text": "broken"},
        {"key": "gone", "image": "nothere.png"},
        {"key": "s000", "text": "the same key again"},
    ]
    (root / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = root / "out"
    run_build(BuildConfig(input=str(root / "m.jsonl"), output=str(out)), quiet=True)
    index, _ = check_invariant(out, len(rows))
    return out, index


def _members(index, ext: str) -> int:
    return sum(
        any(m["name"].endswith(f".{ext}") for m in ms) for ms in index["members"].to_pylist()
    )


def test_load_dataset_on_the_folder_gets_every_sample_and_member_typed(mixed, tmp_path):
    import datasets

    _audio_decoding()
    out, index = mixed
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "dataset_info:" in card and "rejected: 3" in card
    cache = str(tmp_path / "cache")
    ds = datasets.load_dataset(str(out), split="train", cache_dir=cache)
    assert ds.num_rows == index.num_rows == 40
    f = ds.features
    assert all(isinstance(f[e], datasets.Image) for e in FORMATS)
    assert isinstance(f["flac"], datasets.Audio) and f["txt"] == datasets.Value("string")
    for col in (*FORMATS, "txt", "json"):  # nothing dropped: nulls only where a sample lacks it
        assert sum(v is not None for v in ds[col]) == _members(index, col), col
    raw = ds.cast_column("flac", datasets.Audio(decode=False))["flac"]
    assert sum(v is not None for v in raw) == _members(index, "flac") == 27
    by_key = {k: i for i, k in enumerate(ds["__key__"])}
    assert ds[by_key["s000"]]["flac"] is None  # no audio: null, and the row is there
    sample = ds[by_key["s006"]]
    assert sample["flac"].metadata.sample_rate == 16000 and sample["png"] is None
    assert sample["jpg"].size == (46, 30) and sample["json"]["label"] == "c0"
    # The same with datasets' own WebDataset loader, given the card's features.
    features = datasets.load_dataset_builder(str(out), cache_dir=cache).info.features
    tars = sorted(glob(str(out / "shards" / "*.tar")))
    wds = datasets.load_dataset(
        "webdataset", data_files={"train": tars}, features=features, split="train", cache_dir=cache
    )
    assert wds.num_rows == 40 and sum(v is not None for v in wds["txt"]) == _members(index, "txt")
    rejects = datasets.load_dataset(
        "parquet", data_files=str(out / "rejects.parquet"), split="train", cache_dir=cache
    )
    assert sorted(rejects["reason"]) == ["decode_error", "duplicate_key", "missing"]


def test_webdataset_and_wids_read_every_member(mixed):
    import webdataset as wds
    import wids

    out, index = mixed
    tars = sorted(glob(str(out / "shards" / "*.tar")))
    got = list(wds.WebDataset(tars, shardshuffle=False))
    assert len(got) == 40
    assert sum("flac" in s for s in got) == _members(index, "flac")
    shard_index = wids.ShardListDataset(str(out / "shards" / "shardindex.json"))
    assert len(shard_index) == 40


def test_rejects_are_listed_with_their_source_and_reason(mixed, capsys):
    out, _ = mixed
    assert main(["rejects", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and "m.jsonl:40 [bad]  decode_error (image): " in lines[0]
    assert "m.jsonl:41 [gone]  missing (image)" in lines[1]
    assert main(["rejects", str(out), "--reason", "missing", "--json"]) == 0
    (row,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert row["key"] == "gone" and row["source_row"] == 41
    assert main(["rejects", str(out), "--reason", "nope"]) == 2
    assert "no reject reason" in capsys.readouterr().err
    assert main(["rejects", str(Path(out).parent)]) == 2


def test_open_clips_own_loader_reads_the_shards_with_sizes_json(mixed):
    """open_clip's data loader: its sample count comes from shards/sizes.json, and it yields
    every sample that has an image and a caption. (Its training path's own tar reader expects
    an older webdataset's 'fname' field and fails on webdataset 1.0 whatever the tars; the
    evaluation path uses webdataset's reader.)"""
    from types import SimpleNamespace

    from open_clip_train.data import get_dataset_size, get_wds_dataset

    out, index = mixed
    shards = str(out / "shards" / "{000000..000000}.tar")
    assert get_dataset_size(shards) == (index.num_rows, 1)
    args = SimpleNamespace(val_data=shards, val_num_samples=None, batch_size=1, workers=0)
    info = get_wds_dataset(args, lambda im: im.size, is_train=False, tokenizer=lambda t: [t])
    got = [text[0] for _size, text in info.dataloader]
    pairs = sum(
        any(m["name"].rsplit(".", 1)[1] in FORMATS for m in ms)
        and any(m["name"].endswith(".txt") for m in ms)
        for ms in index["members"].to_pylist()
    )
    assert len(got) == pairs and all(t.startswith("caption number") for t in got)
