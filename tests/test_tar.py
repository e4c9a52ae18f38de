"""Deterministic tar writing, and refusal of hostile tar members without extracting anything."""

import io
import random
import string
import tarfile

from pipeline.io.tar import (
    FIXED_MTIME,
    TarShardWriter,
    _tarinfo_header,
    iter_tar_samples,
    member_header,
    split_member_name,
    tar_bytes,
)
from pipeline.io.tarcopy import copy_samples
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


def test_member_headers_are_tarfiles_own_bytes():
    """The header built from a template equals tarfile's, for names ustar holds and for the
    ones that need PAX (long, non-ASCII, NUL) and sizes past 11 octal digits."""
    rng = random.Random(0)
    names = ["", "a", "x" * 99, "x" * 100, "x" * 101, "d/k.txt", "ключ.txt", "a\x00b", "é" * 50]
    names += ["".join(rng.choices(string.printable, k=rng.randint(1, 110))) for _ in range(500)]
    for name in names:
        for size in (0, 1, 511, 512, rng.randint(0, 10**9), 8**11 - 1, 8**11):
            assert member_header(name, size) == _tarinfo_header(name, size), (name, size)


def _rewrite(src: bytes, rows: list[dict]) -> bytes:
    """A filtered copy made member by member: what copy_samples must equal."""
    buf = io.BytesIO()
    w = TarShardWriter(buf)
    for row in rows:
        for m in row["members"]:
            w.add(m["name"], src[m["offset"] : m["offset"] + m["size"]])
    w.close()
    return buf.getvalue()


def test_copy_samples_equals_a_member_by_member_rewrite(tmp_path):
    rng = random.Random(1)
    buf = io.BytesIO()
    w = TarShardWriter(buf)
    rows = []
    for i in range(300):
        key = f"s{i:04d}" if i % 7 else "长" * 40 + str(i)  # some need PAX headers
        parts = [(f"{key}.txt", rng.randbytes(rng.randint(0, 1500)))]
        if i % 3:
            parts.append((f"{key}.json", b"{}"))
        members = [{"name": n, "offset": o, "size": s} for n, d in parts for o, s in [w.add(n, d)]]
        rows.append({"key": key, "members": members})
    w.close()
    src = buf.getvalue()
    (tmp_path / "src.tar").write_bytes(src)
    kept = [r for r in rows if rng.random() < 0.8]
    # A row whose members are not back to back (listed in another order) is copied member
    # by member: the same bytes either way.
    kept[5] = {**kept[5], "members": kept[5]["members"][::-1]}
    want = _rewrite(src, kept)
    copy = [{**r, "members": [dict(m) for m in r["members"]]} for r in kept]
    copy_samples(str(tmp_path / "src.tar"), str(tmp_path / "dst.tar"), copy)
    got = (tmp_path / "dst.tar").read_bytes()
    assert got == want
    for old, new in zip(kept, copy):  # the offsets name the same bodies in the copy
        for a, b in zip(old["members"], new["members"]):
            assert (
                got[b["offset"] : b["offset"] + b["size"]]
                == src[a["offset"] : a["offset"] + a["size"]]
            )


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
