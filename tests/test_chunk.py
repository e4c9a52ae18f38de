"""ChunkWriter: staged tars roll at shard_samples and shard_bytes; metadata is written last."""

from __future__ import annotations

import pyarrow.parquet as pq

from pipeline.build.chunk import ChunkWriter, chunk_meta_url


def _row(i: int, size: int = 10) -> dict:
    return {
        "source_file": "m",
        "source_row": i,
        "source_key": None,
        "key": f"k{i}",
        "text": "t" * size,
        "content_hash": f"h{i}",
        "meta": {},
        "extras": [],
    }


def test_rolls_by_samples_and_keeps_rejects(tmp_path):
    w = ChunkWriter(str(tmp_path), "000000-000000", shard_samples=2, shard_bytes=10**9)
    for i in range(5):
        w.add(_row(i))
    w.add(
        {
            "source_file": "m",
            "source_row": 5,
            "source_key": None,
            "key": "k5",
            "reason": "no_modality",
        }
    )
    table = w.commit()
    staged = [r["staged_tar"] for r in table.to_pylist()]
    assert staged == ["000000-000000-000.tar"] * 2 + ["000000-000000-001.tar"] * 2 + [
        "000000-000000-002.tar",
        None,
    ]
    assert pq.read_table(chunk_meta_url(str(tmp_path), "000000-000000")).num_rows == 6


def test_rolls_by_bytes_but_never_leaves_a_tar_empty(tmp_path):
    w = ChunkWriter(str(tmp_path), "c", shard_samples=100, shard_bytes=6000)
    w.add(_row(0, 5000))  # larger than the target on its own: still written, alone
    w.add(_row(1, 10))
    w.add(_row(2, 10))
    tars = [r["staged_tar"] for r in w.commit().to_pylist()]
    assert tars == ["c-000.tar", "c-001.tar", "c-001.tar"]
