"""End-to-end builds on a local Ray: every input form, the invariant, determinism and read-back."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.build.job import run_build
from pipeline.config import BuildConfig
from pipeline.sample_corpus import write_corpus
from schemas import BUILD_SCHEMA_VERSION, INDEX_SCHEMA, REJECTS_SCHEMA, SHARDS_SCHEMA

pytestmark = pytest.mark.usefixtures("ray_local")


ARGS = dict(shard_samples=10, resize=32, image_format="jpg", image_quality=90)


def build(inp, out, **kw):
    return run_build(BuildConfig(input=str(inp), output=str(out), **kw), quiet=True)


def tables(out):
    return pq.read_table(Path(out) / "index"), pq.read_table(Path(out) / "rejects.parquet")


def check_invariant(out, input_rows):
    index, rejects = tables(out)
    assert index.num_rows + rejects.num_rows == input_rows
    refs = list(zip(index["source_file"].to_pylist(), index["source_row"].to_pylist()))
    refs += list(zip(rejects["source_file"].to_pylist(), rejects["source_row"].to_pylist()))
    assert len(set(refs)) == len(refs) == input_rows  # every input row exactly once
    return index, rejects


def check_shards(out, index):
    """Members contiguous per sample, offsets right, names safe, and readers agree."""
    out = Path(out)
    rows = index.to_pylist()
    by_shard: dict[str, list[dict]] = {}
    for r in rows:
        by_shard.setdefault(r["shard"], []).append(r)
    for shard, srows in by_shard.items():
        data = (out / shard).read_bytes()
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            names = [m.name for m in tf.getmembers()]
        expected = [m["name"] for r in srows for m in r["members"]]
        assert names == expected  # contiguous, in index order
        for r in srows:
            for m in r["members"]:
                assert m["name"].startswith(r["key"] + ".") and "/" not in m["name"]
                assert len(data[m["offset"] : m["offset"] + m["size"]]) == m["size"]
    return by_shard


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    info = write_corpus(str(root), n=40, seed=1)
    return root, info


@pytest.fixture(scope="module")
def built(corpus, tmp_path_factory):
    root, info = corpus
    out = tmp_path_factory.mktemp("out") / "b"
    report = build(root / "manifest.jsonl", out, **ARGS)
    return out, report, info


def test_invariant_and_expected_rejects(built, corpus):
    out, report, info = built
    assert report["input_kind"] == "jsonl"
    index, rejects = check_invariant(out, info["rows"])
    manifest = [
        json.loads(line) for line in (corpus[0] / "manifest.jsonl").read_text().splitlines()
    ]
    expected = {i: r["expected_reason"] for i, r in enumerate(manifest) if "expected_reason" in r}
    got = dict(zip(rejects["source_row"].to_pylist(), rejects["reason"].to_pylist()))
    assert got == expected
    assert report["counts"]["written"] == index.num_rows == info["rows"] - len(expected)
    assert report["counts"]["rejected"] == rejects.num_rows
    assert sum(report["rejects_by_reason"].values()) == rejects.num_rows
    assert (
        min(
            min(w, h)
            for w, h in zip(index["image_width"].to_pylist(), index["image_height"].to_pylist())
        )
        == 32
    )


def test_files_carry_schema_and_version(built):
    out, _, _ = built
    for name, path, schema in (
        ("index", "index/part-00000.parquet", INDEX_SCHEMA),
        ("rejects", "rejects.parquet", REJECTS_SCHEMA),
        ("shards", "shards.parquet", SHARDS_SCHEMA),
    ):
        s = pq.read_schema(Path(out) / path)
        assert s.metadata[b"mmpipe.schema"] == name.encode()
        assert s.metadata[b"mmpipe.schema_version"] == str(BUILD_SCHEMA_VERSION).encode()
        assert s.remove_metadata().equals(schema.remove_metadata())
    disk = json.loads((Path(out) / "build.json").read_text())
    assert disk["schema_version"] == BUILD_SCHEMA_VERSION and disk["config"]["resize"] == 32
    assert set(disk["timings_s"]) >= {"startup", "process", "finalize", "total"}
    assert not (Path(out) / "_work").exists()


def test_shards_parquet_holds_each_shards_digest_and_index_row_groups(built):
    from pipeline.embed.plan import index_digests, shard_digests
    from pipeline.io.parquet import iter_row_groups

    out, report, _ = built
    table = pq.read_table(Path(out) / "shards.parquet")
    assert table.num_rows == report["counts"]["shards"]
    assert sum(table["samples"].to_pylist()) == report["counts"]["written"]
    recorded = shard_digests(str(out))
    summed = index_digests(str(Path(out) / "index" / "part-00000.parquet"))
    assert {s: (v.digest, v.count, v.span) for s, v in recorded.items()} == {
        s: (v.digest, v.count, v.span) for s, v in summed.items()
    }
    # The row groups named hold exactly that shard's rows.
    stem, si = sorted(recorded.items())[1]
    assert si.span is not None
    rows = [
        s
        for _, t in iter_row_groups(si.span[0], ["shard"], si.span[1])
        for s in t.column("shard").to_pylist()
    ]
    assert len(rows) == si.count and {r.rsplit("/", 1)[-1].split(".")[0] for r in rows} == {stem}


def test_shards_read_back_with_every_reader(built):
    import ray.data
    import webdataset as wds

    out, _, _ = built
    index, _ = tables(out)
    by_shard = check_shards(out, index)
    assert all(len(v) <= 10 for v in by_shard.values())
    urls = sorted(str(Path(out) / s) for s in by_shard)
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    assert [s["__key__"] for s in samples] == index["key"].to_pylist()
    first = samples[0]
    assert {".jpg", ".txt", ".json"} <= {"." + k for k in first if not k.startswith("__")}
    meta = json.loads(first["json"])
    assert meta["key"] == first["__key__"] and "label" in meta
    # The folder also holds sizes.json and shardindex.json for other loaders: name the tars.
    ds = ray.data.read_webdataset(str(Path(out) / "shards"), decoder=None, file_extensions=["tar"])
    assert ds.count() == index.num_rows


def test_same_input_gives_byte_identical_shards_and_noop_rerun(built, corpus, tmp_path):
    out, report, _ = built
    root, _ = corpus
    again = tmp_path / "again"
    build(root / "manifest.jsonl", again, **ARGS)
    shards = sorted(p.name for p in (Path(out) / "shards").iterdir())
    assert shards == sorted(p.name for p in (again / "shards").iterdir())
    for name in shards:
        assert (Path(out) / "shards" / name).read_bytes() == (again / "shards" / name).read_bytes()
    assert tables(out)[0].equals(
        tables(again)[0].replace_schema_metadata(tables(out)[0].schema.metadata)
    )
    before = {p.name: p.stat().st_mtime_ns for p in (again / "shards").iterdir()}
    rep = build(root / "manifest.jsonl", again, **ARGS)
    assert rep["counts"] == report["counts"]
    assert before == {p.name: p.stat().st_mtime_ns for p in (again / "shards").iterdir()}


def test_chunks_built_on_the_driver_while_ray_starts_change_no_byte(
    built, corpus, tmp_path, monkeypatch
):
    """A local build builds chunks on the driver while its Ray starts (the first, then from
    the end until Ray's tasks claim one): the same shards, index and rejects, byte for byte,
    each chunk built once, and counted as built, not resumed."""
    import pipeline.build.early as early
    import pipeline.build.job as job

    out, report, _ = built
    root, _ = corpus
    ran: list[str] = []

    class Watched(early.DriverChunks):
        def _run(self) -> None:
            ran.append("started")
            super()._run()

    # The session's Ray is already up here: pretend this command starts its own.
    monkeypatch.setattr(job, "starts_local_ray", lambda address: True)
    monkeypatch.setattr(job, "DriverChunks", Watched)
    again = tmp_path / "early"
    rep = build(root / "manifest.jsonl", again, **ARGS)
    assert ran == ["started"]
    assert rep["chunks"] == {"total": report["chunks"]["total"], "resumed": 0}
    assert rep["counts"] == report["counts"]
    for name in ("shards.parquet", "rejects.parquet", "index"):
        assert pq.read_table(Path(out) / name).equals(pq.read_table(again / name)), name
    shards = sorted(p.name for p in (Path(out) / "shards").iterdir())
    assert shards == sorted(p.name for p in (again / "shards").iterdir())
    for name in shards:
        assert (Path(out) / "shards" / name).read_bytes() == (again / "shards" / name).read_bytes()


def test_the_driver_takes_chunks_from_the_end_until_a_task_claims_one(corpus, tmp_path):
    """Without Ray's tasks the driver builds every chunk, the first and then from the end;
    once a task has claimed a chunk it takes no new one; a claimed chunk is skipped."""
    from pipeline.build.chunk import BuildChunkStage, claim
    from pipeline.build.early import DriverChunks
    from pipeline.ingest.sources import plan_input, read_unit

    root, _ = corpus
    cfg = BuildConfig(input=str(root / "manifest.jsonl"), output=str(tmp_path / "o"), **ARGS)
    units = plan_input(cfg).units
    assert len(units) >= 4
    ids = [next(read_unit(u, cfg)).column("chunk_id")[0].as_py() for u in units]
    work = str(tmp_path / "work")
    (tmp_path / "work" / "chunks").mkdir(parents=True)
    landed: list[str] = []
    alone = DriverChunks(units, cfg, work, lambda s: landed.extend(s["chunk_id"].to_pylist()))
    assert [s["chunk_id"][0].as_py() for s in alone.result()] == landed
    assert landed == [ids[0], *ids[:0:-1]]
    alone.close()
    assert not Path(alone.claims).exists()

    # A task's claim on the second chunk, before the driver starts: it builds the first only.
    work2 = str(tmp_path / "work2")
    (tmp_path / "work2" / "chunks").mkdir(parents=True)
    claims = str(tmp_path / "claims")
    Path(claims).mkdir()
    assert claim(claims, ids[1], "tasks") and not claim(claims, ids[1], "driver")
    driver = DriverChunks(units, cfg, work2, lambda s: None, claims=claims)
    assert [s["chunk_id"][0].as_py() for s in driver.result()] == [ids[0]]
    tasks = BuildChunkStage(cfg, work2, claims=claims)
    # A task skips a chunk the driver claimed: no summary row, nothing staged.
    assert tasks(next(read_unit(units[0], cfg))).num_rows == 0
    assert not (tmp_path / "work2" / "chunks" / f"{ids[1]}.parquet").exists()
    # A task Ray retries after its worker died (its claim stands) builds its chunk.
    assert tasks(next(read_unit(units[1], cfg))).num_rows == 1
    assert (tmp_path / "work2" / "chunks" / f"{ids[1]}.parquet").exists()
    driver.close()


def test_a_command_starts_its_own_ray_only_without_an_address_or_a_joined_ray(monkeypatch):
    from pipeline.session import starts_local_ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert not starts_local_ray(None)  # this session's Ray is up (ray_local)
    assert not starts_local_ray("127.0.0.1:6379")
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert not starts_local_ray(None)


def test_sidecar_folder(tmp_path):
    from tests import media

    src = tmp_path / "side"
    (src / "sub").mkdir(parents=True)
    (src / "0001.jpg").write_bytes(media.jpeg())
    (src / "0001.txt").write_text("a red thing")
    (src / "0001.json").write_text('{"label": 3}')
    (src / "0001.flac").write_bytes(media.wav(0.2, fmt="FLAC"))
    (src / "0002.png").write_bytes(media.png())
    (src / "0002.cls").write_text("7")
    (src / "0003.txt").write_text("only a caption")
    (src / "0004.json").write_text('{"lonely": true}')
    (src / "画像.jpg").write_bytes(media.jpeg(50, 50))
    (src / "sub" / "0001.txt").write_text("same stem, other folder")
    (src / ".hidden.txt").write_text("ignored")
    out = tmp_path / "out"
    rep = build(src, out)
    index, rejects = check_invariant(out, 6)
    assert rep["input_kind"] == "sidecar"
    assert rejects["reason"].to_pylist() == ["no_modality"]
    keys = set(index["key"].to_pylist())
    assert {"0001", "0002", "0003", "画像"} <= keys and len(keys) == 5
    row = next(r for r in index.to_pylist() if r["key"] == "0002")
    assert [m["name"] for m in row["members"]] == ["0002.png", "0002.json", "0002.cls"]
    one = next(r for r in index.to_pylist() if r["key"] == "0001")
    assert (
        one["audio_format"] == "flac" and one["image_format"] == "jpg" and one["text_length"] == 11
    )
    check_shards(out, index)


def test_tars_are_revalidated_and_resharded(built, tmp_path):
    from tests import media

    out, _, _ = built
    index, _ = tables(out)
    pattern = str(Path(out) / "shards" / "{000000..000001}.tar")
    n_in = sum(
        1 for s in index["shard"].to_pylist() if s in ("shards/000000.tar", "shards/000001.tar")
    )
    resharded = tmp_path / "re"
    rep = build(pattern, resharded, shard_samples=7)
    new_index, rejects = check_invariant(resharded, n_in)
    # Each tar gives full chunks of 7 and a tail of 3; tails are packed with what follows
    # only while the chunk stays within 7 samples, so here every span is a shard.
    per_file = [
        sum(1 for s in index["shard"].to_pylist() if s == f"shards/00000{i}.tar") for i in (0, 1)
    ]
    assert rejects.num_rows == 0 and rep["counts"]["shards"] == sum(-(-n // 7) for n in per_file)
    # The original bytes pass through untouched, so content hashes survive re-sharding.
    old = dict(zip(index["key"].to_pylist(), index["content_hash"].to_pylist()))
    assert all(
        old[k] == h
        for k, h in zip(new_index["key"].to_pylist(), new_index["content_hash"].to_pylist())
    )
    hostile = tmp_path / "hostile.tar"
    hostile.write_bytes(
        media.tar_with(
            [
                ("../../escape.txt", b"out", "reg"),
                ("/abs/x.txt", b"abs", "reg"),
                ("link.jpg", None, "sym"),
                ("dup.txt", b"one", "reg"),
                ("dup.txt", b"two", "reg"),
                ("ok.jpg", media.jpeg(), "reg"),
                ("ok.cls", b"3", "reg"),
            ]
        )
    )
    hout = tmp_path / "hout"
    build(hostile, hout)
    hidx, hrej = check_invariant(hout, 6)
    assert sorted(hrej["reason"].to_pylist()) == ["duplicate_key", "unsafe_member"]
    check_shards(hout, hidx)
    assert all(not k.startswith((".", "/", "_")) for k in hidx["key"].to_pylist())


def test_parquet_with_embedded_bytes_and_csv(tmp_path):
    import pyarrow as pa

    from tests import media

    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.jpg").write_bytes(media.jpeg())
    table = pa.table(
        {
            "image": pa.array(
                [
                    {"bytes": media.png(), "path": None},
                    {"bytes": None, "path": "img/a.jpg"},
                    None,
                    {"bytes": b"xx", "path": None},
                ],
                pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
            ),
            "text": ["one", "two", "three", None],
            "score": [0.5, 0.6, 0.7, 0.8],
        }
    )
    pq.write_table(table, tmp_path / "m.parquet")
    out = tmp_path / "pout"
    build(tmp_path / "m.parquet", out)
    index, rejects = check_invariant(out, 4)
    assert rejects["reason"].to_pylist() == ["decode_error"] and rejects[
        "source_row"
    ].to_pylist() == [3]
    assert index["image_format"].to_pylist() == ["png", "jpg", None]
    (tmp_path / "m.csv").write_text(
        "image,text,key\n"
        'img/a.jpg,"a caption, with comma",k1\nimg/a.jpg,"multi\nline",k2\nonly,two,fields,extra\n,,k4\n'
    )
    cout = tmp_path / "cout"
    build(tmp_path / "m.csv", cout)
    index, rejects = check_invariant(cout, 4)
    assert dict(zip(rejects["source_row"].to_pylist(), rejects["reason"].to_pylist())) == {
        2: "malformed_row",
        3: "no_modality",
    }
    assert index["text_length"].to_pylist() == [len("a caption, with comma"), len("multi\nline")]


def test_shard_bytes_target_splits_shards(corpus, tmp_path):
    root, info = corpus
    out = tmp_path / "small"
    rep = build(root / "manifest.jsonl", out, shard_samples=100, shard_bytes="120KB")
    index, _ = check_invariant(out, info["rows"])
    sizes = [p.stat().st_size for p in (out / "shards").glob("*.tar")]
    assert rep["counts"]["shards"] == len(sizes) > 2
    assert max(sizes) <= 120_000 + 80_000  # one sample may overshoot an empty shard only
    check_shards(out, index)


def test_a_build_that_writes_nothing_fails_and_what_follows_says_it_is_empty(tmp_path, capsys):
    from pipeline.cli import main

    rows = [{"key": f"k{i}", "image": f"missing{i}.jpg"} for i in range(4)]
    rows += [{"key": "t", "image": "bad.jpg"}]
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    assert main(["build", str(tmp_path / "m.jsonl"), "--output", str(out), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"mmpipe: error: {out} holds no sample: all 5 input rows were rejected "
        f"(missing 4, decode_error 1); mmpipe rejects {out} lists them"
    ]
    check_invariant(out, 5)  # committed all the same: the rejects are the record
    assert main(["build", str(tmp_path / "m.jsonl"), "--output", str(out), "-q"]) == 2  # rerun
    capsys.readouterr()
    assert main(["features", str(out), "--output", str(tmp_path / "f"), "-q"]) == 2
    assert "holds no sample: all 5 input rows were rejected" in capsys.readouterr().err


def test_the_index_rolls_into_bounded_files_that_every_reader_follows(tmp_path, monkeypatch):
    """Seven shards, at most two row groups (shards) an index file: four files, read in
    order by pyarrow and DuckDB as one table; each shard's span holds exactly its rows;
    the loader files list every shard once, in order."""
    import duckdb

    import pipeline.build.finalize as fin
    from pipeline.io.shards import index_files, index_span, shard_index_rows

    monkeypatch.setattr(fin, "INDEX_FILE_ROW_GROUPS", 2)
    work = str(tmp_path)
    shards = [f"shards/{i:06d}.tar" for i in range(7)]
    with fin.final_tables(work) as out:
        for i, shard in enumerate(shards):
            keys = [f"k{i}-{j}" for j in range(i + 1)]  # shard i holds i + 1 rows
            rows = pa.Table.from_pylist(
                [
                    {
                        "key": k,
                        "shard": shard,
                        "members": [{"name": f"{k}.txt", "offset": 512, "size": 3}],
                        "content_hash": "0" * 64,
                        "source_file": "m.jsonl",
                        "source_row": j,
                    }
                    for j, k in enumerate(keys)
                ],
                schema=INDEX_SCHEMA,
            )
            out.shard({"shard": shard, "samples": len(keys), "digest": "d"}, rows)
    files = index_files(work)
    assert [f.rsplit("/", 1)[-1] for f in files] == [f"part-0000{i}.parquet" for i in range(4)]
    keys = [f"k{i}-{j}" for i in range(7) for j in range(i + 1)]
    assert pq.read_table(tmp_path / "index")["key"].to_pylist() == keys
    glob = str(tmp_path / "index" / "*.parquet")
    assert [r[0] for r in duckdb.sql(f"SELECT key FROM '{glob}'").fetchall()] == keys
    table = pq.read_table(tmp_path / "shards.parquet")
    for row in table.to_pylist():
        got = shard_index_rows(index_span(work, row), row["shard"], ["key"])
        assert got.num_rows == row["samples"] and len(row["index_row_groups"]) == 1
    sizes = json.loads((tmp_path / "sizes.json").read_text())
    assert list(sizes.items()) == [(s.rsplit("/", 1)[-1], i + 1) for i, s in enumerate(shards)]
    wids = json.loads((tmp_path / "shardindex.json").read_text())["shardlist"]
    assert [(d["url"], d["nsamples"]) for d in wids] == list(sizes.items())


def test_a_build_with_one_index_file_is_still_read(built, tmp_path):
    """Builds before the index was split wrote one index.parquet and no index_file column:
    curate and refresh planning find each shard's rows there."""
    import shutil

    from pipeline.curate.job import input_shards
    from pipeline.embed.plan import scan_input
    from pipeline.io.shards import shard_index_rows

    out = Path(built[0])
    old = tmp_path / "old"
    shutil.copytree(out, old)
    (old / "index" / "part-00000.parquet").rename(old / "index.parquet")
    (old / "index").rmdir()
    shards = pq.read_table(old / "shards.parquet")
    pq.write_table(shards.drop_columns(["index_file"]), old / "shards.parquet")
    now, before = input_shards(str(out)), input_shards(str(old))
    assert [s for s, _ in before] == [s for s, _ in now]
    for (shard, span), (_, new_span) in zip(before, now):
        assert span[0] == str(old / "index.parquet") and span[1] == new_span[1]
        assert shard_index_rows(span, shard, ["key"]).equals(
            shard_index_rows(new_span, shard, ["key"])
        )
    assert {s: v.digest for s, v in scan_input(str(old))[1].items()} == {
        s: v.digest for s, v in scan_input(str(out))[1].items()
    }
