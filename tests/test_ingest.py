"""Manifest readers: malformed rows become rejects, references resolve and are policed."""

from __future__ import annotations

import pytest

from pipeline.config import BuildConfig
from pipeline.errors import SampleError
from pipeline.ingest.readers import read_jsonl
from pipeline.ingest.rows import ManifestLayout, resolve_ref
from pipeline.ingest.sources import plan_input


def layout(url, **kw):
    return ManifestLayout.for_manifest(url, BuildConfig(input=url, output="o", **kw))


def test_jsonl_bad_lines_are_rows_with_reasons(tmp_path):
    m = tmp_path / "m.jsonl"
    m.write_text(
        '{"text": "ok"}\n\nnot json\n[1, 2]\n{"image": 42}\n{"text": "a.txt"}\n{"text": "two words.txt"}\n'
    )
    rows = list(read_jsonl(str(m), layout(str(m))))
    assert [r.source_row for r in rows] == [0, 1, 2, 3, 4, 5]
    assert [r.error_reason for r in rows] == [
        None,
        "malformed_row",
        "malformed_row",
        "malformed_row",
        None,
        None,
    ]
    assert "int" in rows[3].error_message  # a number where a path belongs
    assert rows[4].members[0]["ref"].endswith("a.txt")  # single token ending .txt: a path
    assert rows[5].members[0]["data"] == b"two words.txt"  # a caption, kept inline
    assert rows[0].members[0]["data"] == b"ok"


def test_wrong_type_cell_is_malformed(tmp_path):
    from pipeline.ingest.rows import row_from_record

    r = row_from_record({"image": 42}, layout(str(tmp_path / "m.jsonl")), "m", 0)
    assert r.error_reason == "malformed_row" and "int" in r.error_message


def test_refs_resolve_and_remote_manifests_cannot_reach_local_files():
    assert (
        resolve_ref("a/b.jpg", base_dir="/data", remote_base=False, allow_local=False)
        == "/data/a/b.jpg"
    )
    assert (
        resolve_ref("a/b.jpg", base_dir="s3://bkt/dir", remote_base=True, allow_local=False)
        == "s3://bkt/dir/a/b.jpg"
    )
    assert (
        resolve_ref("https://h/x.jpg", base_dir="/d", remote_base=False, allow_local=False)
        == "https://h/x.jpg"
    )
    for bad in ("/etc/passwd", "file:///etc/passwd"):
        with pytest.raises(SampleError) as e:
            resolve_ref(bad, base_dir="s3://bkt/dir", remote_base=True, allow_local=False)
        assert e.value.reason.value == "disallowed_ref"
    assert (
        resolve_ref("/etc/hosts", base_dir="s3://b", remote_base=True, allow_local=True)
        == "/etc/hosts"
    )
    with pytest.raises(SampleError):
        resolve_ref("ftp://host/x.jpg", base_dir="/d", remote_base=False, allow_local=False)


def test_sidecar_planning_lists_once_and_never_stats_files(tmp_path, monkeypatch):
    import os

    root = tmp_path / "many"
    root.mkdir()
    for i in range(3000):
        (root / f"{i:05d}.txt").write_text("x")
    calls = {"n": 0}
    real_stat = os.stat

    def counting_stat(*a, **k):
        calls["n"] += 1
        return real_stat(*a, **k)

    monkeypatch.setattr(os, "stat", counting_stat)
    plan = plan_input(BuildConfig(input=str(root), output=str(tmp_path / "o"), shard_samples=1000))
    assert plan.kind == "sidecar" and len(plan.units) == 3
    assert sum(len(u.groups) for u in plan.units) == 3000
    assert calls["n"] < 50  # a listing, not a stat per file


def test_inline_text_chunks_hold_several_shards_and_media_chunks_one(tmp_path):
    import json

    from pipeline.ingest.layout import TEXT_SHARDS_PER_CHUNK
    from pipeline.ingest.scan import scan_jsonl

    def manifest(name: str, row: dict) -> str:
        path = tmp_path / name
        path.write_text("".join(json.dumps({**row, "key": f"k{i}"}) + "\n" for i in range(200)))
        return str(path)

    def counts(path: str, **cfg: object) -> list[int]:
        plan = plan_input(BuildConfig(input=path, output=str(tmp_path / "o"), **cfg))
        return [u.span.count for u in plan.units]

    per = 5 * TEXT_SHARDS_PER_CHUNK
    text = manifest("text.jsonl", {"text": "a caption"})
    assert counts(text, shard_samples=5) == [per] * (200 // per) + (
        [200 % per] if 200 % per else []
    )
    # Rows that fetch media, or text read from files, keep a shard's worth a chunk.
    assert (
        counts(manifest("img.jsonl", {"image": "x.png", "text": "c"}), shard_samples=5) == [5] * 40
    )
    assert counts(text, shard_samples=5, text_source="path") == [5] * 40
    # A chunk of long lines is cut by bytes before it reaches its rows.
    spans = scan_jsonl(text, 1000, max_bytes=200)
    assert len(spans) > 1 and sum(s.count for s in spans) == 200
    assert all(s.count * 30 < 400 for s in spans)  # lines are ~30 bytes
