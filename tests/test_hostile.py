"""A corpus of everything that goes wrong in the wild: each row is written or rejected, as expected."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from pipeline.build.job import run_build
from pipeline.config import BuildConfig
from tests import media
from tests.test_build import check_invariant, check_shards

pytestmark = pytest.mark.usefixtures("ray_local")


def test_hostile_corpus(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    files = {
        "cmyk.jpg": media.jpeg(mode="CMYK"),
        "rot.jpg": media.jpeg(64, 32, exif_orientation=8),
        "p16.png": media.png(mode="I;16"),
        "pal.png": media.png(mode="P"),
        "trunc.jpg": media.jpeg(64, 48)[:400],
        "empty.jpg": b"",
        "text.jpg": b"hello, I am text",
        "bomb.png": media.png_header_only(50000, 50000),
        "画像 ünï.jpg": media.jpeg(40, 40),
        "ulaw.wav": media.wav(0.2, 8000, subtype="ULAW"),
        "u8.wav": media.wav(0.2, 8000, subtype="PCM_U8"),
        "f32.wav": media.wav(0.2, 8000, subtype="FLOAT"),
        "vorbis.ogg": media.wav(0.3, 16000, fmt="OGG", subtype="VORBIS"),
        "trunc.wav": media.wav(1.0)[:9000],
        "noise.flac": b"fLaC" + bytes(200),
        "bad.txt": b"\xff\xfe\xfa not utf8",
    }
    for name, data in files.items():
        (d / name).write_bytes(data)
    (d / "adir.jpg").mkdir()
    rows = [
        ({"key": "cmyk", "image": "cmyk.jpg"}, None),
        ({"key": "rot", "image": "rot.jpg"}, None),
        ({"key": "p16", "image": "p16.png"}, None),
        ({"key": "pal", "image": "pal.png", "text": "palette"}, None),
        ({"key": "trunc", "image": "trunc.jpg"}, "decode_error"),
        ({"key": "empty", "image": "empty.jpg"}, "decode_error"),
        ({"key": "textjpg", "image": "text.jpg"}, "decode_error"),
        ({"key": "bomb", "image": "bomb.png"}, "too_large"),
        ({"key": "unicode", "image": "画像 ünï.jpg", "text": "ünïcödé 名字"}, None),
        ({"key": "ulaw", "audio": "ulaw.wav"}, None),
        ({"key": "u8", "audio": "u8.wav"}, None),
        ({"key": "f32", "audio": "f32.wav"}, None),
        ({"key": "ogg", "audio": "vorbis.ogg"}, None),
        ({"key": "truncwav", "audio": "trunc.wav"}, "decode_error"),
        ({"key": "noise", "audio": "noise.flac"}, "decode_error"),
        ({"key": "badtext", "text": "bad.txt"}, "decode_error"),
        ({"key": "nul", "text": "a\u0000b"}, "decode_error"),
        ({"key": "huge", "text": "x" * 200_000}, "too_long"),
        ({"key": "bidi", "text": "\u202eevil\u202c caption"}, None),
        ({"key": "missing", "image": "nope.jpg"}, "missing"),
        ({"key": "dir", "image": "adir.jpg"}, "fetch_error"),
        ({"key": "ftp", "image": "ftp://example.invalid/x.jpg"}, "disallowed_ref"),
        ({"key": "nothing", "label": 3}, "no_modality"),
        ({"key": "../../etc/passwd", "text": "traversal"}, None),
        ({"key": "/abs/olute", "text": "absolute"}, None),
        ({"key": "a/b", "text": "slash"}, None),
        ({"key": "a_b", "text": "underscore"}, None),
        ({"key": "rot", "text": "same key again"}, "duplicate_key"),
        ({"key": "copy", "image": "cmyk.jpg"}, "duplicate"),
        ({"image": 12345}, "malformed_row"),
    ]
    lines = [json.dumps(r, ensure_ascii=False) for r, _ in rows]
    lines.insert(5, "{not json")
    expected = [exp for _, exp in rows]
    expected.insert(5, "malformed_row")
    (d / "m.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    run_build(
        BuildConfig(input=str(d / "m.jsonl"), output=str(out), max_text_chars=100_000), quiet=True
    )
    index, rejects = check_invariant(out, len(expected))
    got = dict(zip(rejects["source_row"].to_pylist(), rejects["reason"].to_pylist()))
    assert got == {i: e for i, e in enumerate(expected) if e}
    check_shards(out, index)
    by_key = {r["key"]: r for r in index.to_pylist()}
    assert (by_key["rot"]["image_width"], by_key["rot"]["image_height"]) == (32, 64)
    assert by_key["ogg"]["audio_format"] == "flac"
    keys = set(by_key)
    assert "a_b" in keys and sum(k.startswith("a_b") for k in keys) == 2
    assert not any(k.startswith(("/", ".", "_")) for k in keys)
    idx = pq.read_table(out / "index")
    assert "../../etc/passwd" in idx["source_key"].to_pylist()
