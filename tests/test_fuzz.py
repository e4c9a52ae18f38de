"""Property-based fuzzing of the ingest layer (hypothesis): whatever a manifest, row, byte string
or tar member holds, the build never crashes and accounts for every input row.

The build runs without Ray here, through the same plan, chunk stage and finalize step the
job uses, so that each example costs milliseconds. MMPIPE_FUZZ_EXAMPLES sets the budget
(CI: 25 per property; run with 2000 locally for a deep search).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.build.chunk import BuildChunkStage
from pipeline.build.finalize import finalize, publish
from pipeline.config import BuildConfig
from pipeline.errors import UserError
from pipeline.ingest.sources import iter_chunks, plan_input
from pipeline.io.fs import join
from tests import media

BUDGET = settings(
    max_examples=int(os.environ.get("MMPIPE_FUZZ_EXAMPLES", "25")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)

# A pool of files every manifest may point at: good, broken and hostile media.
POOL = {
    "ok.jpg": media.jpeg(32, 24),
    "ok.png": media.png(20, 20),
    "trunc.jpg": media.jpeg(64, 48)[:300],
    "bomb.png": media.png_header_only(60000, 60000),
    "text.jpg": b"not an image at all",
    "empty.jpg": b"",
    "ok.wav": media.wav(0.2),
    "trunc.wav": media.wav(0.5)[:200],
    "caption.txt": b"a caption from a file",
    "nul.txt": b"bad\x00text",
    "latin1.txt": "caf\xe9".encode("latin-1"),
}
REFS = st.sampled_from(
    [
        *POOL,
        "missing.jpg",
        "../outside.jpg",
        "/etc/passwd",
        "file:///etc/shadow",
        "ftp://x/y.jpg",
        "data:image/png;base64,AAAA",
        "http://127.0.0.1:9/refused.jpg",
        "",
        "sub/../ok.jpg",
    ]
)
TEXT = st.one_of(
    st.text(max_size=200),
    st.sampled_from(["\u202eevil\u202c", "nul\x00inside", "\ud800", "x" * 300_000, "   "]),
)
VALUE = st.one_of(
    st.none(),
    st.integers(),
    st.floats(allow_nan=True),
    st.booleans(),
    TEXT,
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
RECORD = st.fixed_dictionaries(
    {},
    optional={
        "image": st.one_of(REFS, VALUE),
        "audio": st.one_of(REFS, VALUE),
        "text": TEXT,
        "key": st.one_of(TEXT, st.sampled_from(["../k", "a/b", "", "dup", "dup"])),
        "label": VALUE,
    },
)
LINE = st.one_of(
    RECORD.map(lambda r: json.dumps(r)),
    st.text(max_size=80).map(lambda s: s.replace("\n", " ")),
    st.sampled_from(["[1, 2]", '{"image": ', "null", '"just a string"', "{}", "\t"]),
)


def build_local(cfg: BuildConfig) -> dict | None:
    """The job's code path without Ray: plan, one chunk stage call per chunk, finalize.

    None when the whole input is refused up front (a layout with no media column): that is
    one clear UserError before any work, which the job reports as such."""
    try:
        plan = plan_input(cfg)
    except UserError as e:
        assert "\n" not in str(e) and str(e)
        return None
    work = join(cfg.output, "_work")
    stage = BuildChunkStage(cfg, work)
    ids: list[str] = []
    for unit in plan.units:
        for table in iter_chunks(unit, cfg):
            ids += stage(table).column("chunk_id").to_pylist()
    counts = finalize(work, cfg.output, ids)
    publish(work, cfg.output)
    return counts


def _workspace() -> Path:
    root = Path(tempfile.mkdtemp(prefix="fuzz-"))
    for name, data in POOL.items():
        (root / name).write_bytes(data)
    return root


def _check(out: Path, counts: dict | None, expected_rows: int | None) -> None:
    if counts is None:
        assert not (out / "index").exists()
        return
    index = pq.read_table(out / "index")
    rejects = pq.read_table(out / "rejects.parquet")
    assert index.num_rows + rejects.num_rows == counts["input_rows"]
    if expected_rows is not None:
        assert counts["input_rows"] == expected_rows  # not one row lost
    keys = index["key"].to_pylist()
    assert len(keys) == len(set(keys))
    for k in keys:  # keys are safe file names inside a tar
        assert k and "/" not in k and not k.startswith(".") and "\x00" not in k


def _cfg(inp: Path, out: Path, **kw) -> BuildConfig:
    return BuildConfig(
        input=str(inp),
        output=str(out),
        shard_samples=4,
        max_text_chars=1000,
        max_image_pixels=10_000_000,
        sample_timeout_s=10,
        fetch_concurrency=2,
        **kw,
    )


@BUDGET
@given(lines=st.lists(LINE, max_size=10), blank=st.booleans())
def test_any_jsonl_manifest_is_written_or_rejected_row_by_row(lines, blank):
    root = _workspace()
    try:
        body = "\n".join(lines) + ("\n\n" if blank else "")
        (root / "m.jsonl").write_bytes(body.encode("utf-8", "surrogatepass"))
        counts = build_local(_cfg(root / "m.jsonl", root / "out"))
        raw = body.encode("utf-8", "surrogatepass").split(b"\n")
        expected = sum(1 for b in raw if b.decode("utf-8", "surrogateescape").strip())
        _check(root / "out", counts, expected)
    finally:
        shutil.rmtree(root)


@BUDGET
@given(
    rows=st.lists(st.lists(st.one_of(TEXT, REFS), min_size=0, max_size=4), max_size=8),
    stray_quote=st.booleans(),
)
def test_any_csv_manifest_is_written_or_rejected_row_by_row(rows, stray_quote):
    root = _workspace()
    try:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["image", "text", "audio", "key"])
        for r in rows:
            w.writerow([c.replace("\x00", "") for c in r])
        text = buf.getvalue() + ('"unterminated, quote\n' if stray_quote else "")
        (root / "m.csv").write_text(text, encoding="utf-8", errors="surrogatepass")
        counts = build_local(_cfg(root / "m.csv", root / "out"))
        _check(root / "out", counts, None)
    finally:
        shutil.rmtree(root)


MEMBER = st.tuples(
    st.sampled_from(["s1", "s2", "s3", "../up", "/abs", "a/b/s4", "s1", ".hidden", "s5"]),
    st.sampled_from(["jpg", "png", "txt", "wav", "json", "cls", "", "JPG"]),
    st.sampled_from(["reg", "reg", "reg", "sym", "lnk", "chr", "dir"]),
    st.sampled_from([*POOL.values(), b"{}", b"[", b"\xff\xfe"]),
)


@BUDGET
@given(members=st.lists(MEMBER, max_size=10), cut=st.integers(min_value=0, max_value=2000))
def test_any_tar_is_read_member_by_member(members, cut):
    root = _workspace()
    try:
        data = media.tar_with([(f"{n}.{e}" if e else n, d, k) for n, e, k, d in members])
        if cut:  # truncated downloads: a tar cut anywhere
            data = data[: max(0, len(data) - cut)]
        (root / "in").mkdir()
        (root / "in" / "000000.tar").write_bytes(data)
        counts = build_local(_cfg(root / "in" / "*.tar", root / "out"))
        _check(root / "out", counts, None)
    finally:
        shutil.rmtree(root)


def test_parquet_manifests_with_the_wrong_types_are_malformed_rows_not_crashes(tmp_path):
    for name, table in {
        "ints.parquet": pa.table({"image": [1, 2], "text": [3, 4]}),
        "lists.parquet": pa.table({"image": [[1], [2, 3]], "text": [["a"], []]}),
        "structs.parquet": pa.table({"text": [{"a": 1}, None]}),
    }.items():
        pq.write_table(table, tmp_path / name)
        try:
            counts = build_local(_cfg(tmp_path / name, tmp_path / f"out-{name}"))
        except Exception as e:  # a whole-file mismatch must be one clear UserError
            assert isinstance(e, UserError), repr(e)
            continue
        _check(tmp_path / f"out-{name}", counts, table.num_rows)


@pytest.mark.parametrize("n", [1])
def test_budget_is_bounded_in_ci(n):
    assert BUDGET.max_examples <= 2000 * n
