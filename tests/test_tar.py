"""Deterministic tar writing, and refusal of hostile tar members without extracting anything."""

import io
import tarfile

from pipeline.io.tar import (
    FIXED_MTIME,
    TarShardWriter,
    iter_tar_samples,
    split_member_name,
    tar_bytes,
)
from tests.media import tar_with


def test_writer_is_deterministic_and_offsets_point_at_data():
    members = [("a.jpg", b"x" * 700), ("a.txt", "héllo".encode()), ("长名字" * 30 + ".json", b"{}")]
    one, two = tar_bytes(members), tar_bytes(members)
    assert one == two and len(one) % 10240 == 0
    buf = io.BytesIO()
    w = TarShardWriter(buf)
    offsets = [w.add(n, d) for n, d in members]
    w.close()
    data = buf.getvalue()
    for (_name, payload), (off, size) in zip(members, offsets):
        assert data[off : off + size] == payload
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        infos = tf.getmembers()
        assert [i.name for i in infos] == [n for n, _ in members]
        assert all(i.mtime == FIXED_MTIME and i.uid == 0 and i.mode == 0o444 for i in infos)


def test_split_member_name_follows_webdataset():
    assert split_member_name("dir/0001.seg.png") == ("dir/0001", "seg.png")
    assert split_member_name("0001.JPG") == ("0001", "jpg")


def test_hostile_members_are_reported_not_followed():
    data = tar_with(
        [
            ("../evil.txt", b"escape", "reg"),
            ("/abs/path.txt", b"absolute", "reg"),
            ("link.jpg", None, "sym"),
            ("hard.jpg", None, "lnk"),
            ("dev.jpg", None, "chr"),
            ("dup.txt", b"one", "reg"),
            ("dup.txt", b"two", "reg"),
        ]
    )
    samples = list(iter_tar_samples(io.BytesIO(data), max_member_bytes=1 << 20))
    keys = [s.key for s in samples]
    assert keys == ["../evil", "/abs/path", "link", "hard", "dev", "dup", "dup"]
    errors = {s.key: s.members[0].error for s in samples}
    assert errors["link"] == errors["hard"] == errors["dev"] == "unsafe_member"
    assert samples[0].members[0].data == b"escape"  # read, never written to disk


def test_huge_declared_size_is_skipped_unread():
    data = tar_with([("big.bin", b"z" * 5000, "reg"), ("ok.txt", b"fine", "reg")])
    samples = list(iter_tar_samples(io.BytesIO(data), max_member_bytes=1000))
    assert samples[0].members[0].error == "too_large"
    assert samples[1].members[0].data == b"fine"


def test_truncated_tar_rejects_the_broken_sample():
    data = tar_with([("a.txt", b"a" * 600, "reg"), ("b.txt", b"b" * 3000, "reg")])
    samples = list(iter_tar_samples(io.BytesIO(data[:1600]), max_member_bytes=1 << 20))
    assert samples[0].key == "a" and samples[0].error is None
    assert samples[-1].error == "decode_error"
