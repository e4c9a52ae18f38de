"""Exact dedup: the partitioned passes decide exactly what the sequential rule decides.

The passes run here without Ray, over partitions made the same way the job makes them, so
hypothesis can try thousands of inputs: rows whose hashes and keys collide in every way
(copies, re-keyed copies, reused keys, chains linked by both). The job's path on Ray is
tested against the one-task path, byte for byte, in ``test_distributed_finalize_*``.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.build import dedup

ROWS = st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), min_size=1, max_size=80)


def claims(rows):
    pos = np.array([dedup.position(i // 7, np.array([i % 7]))[0] for i in range(len(rows))])
    return dedup.new_claims(
        pos, pa.array([f"k{k}" for _, k in rows]), pa.array([f"h{h}" for h, _ in rows])
    )


def rejected(table):
    t = table.filter(pc.equal(table.column("state"), dedup.REJECTED))
    return t.sort_by("pos").select(["pos", "reason", "message"])


def passes(table, parts, partition_rows):
    """What ``distributed.decide`` does, in-process: returns the rejects and the passes
    after which no row was undecided."""
    found, n, decided = [], 0, None
    while table.num_rows:
        if table.num_rows <= partition_rows:
            found.append(rejected(dedup.sequential(table)))
            break
        side = ("key", "hash")[n % 2]
        part = dedup.partition(table, side, parts).to_numpy()
        done = [dedup.resolve(table.filter(pa.array(part == p)), side) for p in range(parts)]
        table = pa.concat_tables([d for d in done if d.num_rows])
        found.append(rejected(table))
        table = dedup.still_needed(table)
        n += 1
        if decided is None and not pc.any(pc.equal(table.column("state"), 0)).as_py():
            decided = n
        assert n < 200
    return pa.concat_tables(found).sort_by("pos") if found else None, decided


@settings(max_examples=400, deadline=None)
@given(ROWS, st.integers(1, 4), st.sampled_from([0, 0, 3]))
def test_passes_decide_what_the_sequential_rule_decides(rows, parts, partition_rows):
    table = claims(rows)
    want = rejected(dedup.sequential(table))
    got, _ = passes(table, parts, partition_rows)
    assert (got if got is not None else want.slice(0, 0)).equals(want)


@settings(max_examples=300, deadline=None)
@given(ROWS)
def test_the_columnar_rule_decides_what_the_walk_decides(rows):
    """Where rows that share a key share a hash, ``sequential`` decides in columns; it must
    decide every row as the walk does (reasons and messages too), and leave the rest to it."""
    table = claims(rows)
    fast = dedup._by_hash_alone(table)
    saved = dedup._by_hash_alone
    try:
        dedup._by_hash_alone = lambda t: None
        walk = dedup.sequential(table)
    finally:
        dedup._by_hash_alone = saved
    keyed = {}
    for h, k in rows:
        keyed.setdefault(k, h)
    assert (fast is not None) == all(keyed[k] == h for h, k in rows)
    if fast is not None:
        assert fast.equals(walk)
    assert dedup.sequential(table).equals(walk)


def test_common_cases_take_two_or_three_passes():
    copies = [(i, i) for i in range(20)] + [(i, i) for i in range(0, 20, 3)]  # a file read twice
    rekeyed = [(i, i) for i in range(20)] + [(i, 100 + i) for i in range(0, 20, 3)]
    reused = [(i, i % 5) for i in range(20)]  # another content under a written key
    for rows, most in ((copies, 2), (rekeyed, 2), (reused, 3)):
        table = claims(rows)
        got, n = passes(table, parts=3, partition_rows=0)
        assert got.equals(rejected(dedup.sequential(table))) and n is not None and n <= most


def test_rejected_rows_claim_nothing():
    # b repeats a's key (duplicate_key), so c, b's content under a new key, is written.
    table = claims([(0, 0), (1, 0), (1, 1)])
    out = dedup.sequential(table).to_pylist()
    assert [r["state"] for r in out] == [dedup.WRITTEN, dedup.REJECTED, dedup.WRITTEN]
    assert (
        out[1]["reason"] == "duplicate_key" and out[1]["message"] == "key 'k0' was already written"
    )
    got, _ = passes(table, parts=2, partition_rows=0)
    assert got.equals(rejected(dedup.sequential(table)))


def _text_manifest(path, n=240, seed=3):
    rng = np.random.default_rng(seed)
    lines = [
        {"key": f"s{int(rng.integers(0, 200))}", "text": f"caption {int(rng.integers(0, 150))}"}
        for _ in range(n)
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def _same_build(a, b):
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for f in files:
        if f.name != "build.json":
            assert (a / f).read_bytes() == (b / f).read_bytes(), f


def _build_paths(tmp_path, monkeypatch, paths):
    """Build the same manifest (text rows in 12 chunks with copies, re-keyed copies and
    reused keys across chunks) along each path; check the outputs are byte-identical."""
    import pipeline.build.distributed as d
    from pipeline.build.job import run_build
    from pipeline.config import BuildConfig

    manifest = _text_manifest(tmp_path / "m.jsonl")
    reports = {}
    for name, one_task, rows in paths:
        monkeypatch.setattr(d, "ONE_TASK_ROWS", one_task)
        cfg = BuildConfig(
            input=str(manifest), output=str(tmp_path / name), shard_samples=20,
            dedup_partition_rows=rows,
        )  # fmt: skip
        reports[name] = run_build(cfg, quiet=True)
    first = paths[0][0]
    counts = reports[first]["counts"]
    assert counts["written"] + counts["rejected"] == 240
    assert set(reports[first]["rejects_by_reason"]) == {"duplicate", "duplicate_key"}
    for name, *_ in paths[1:]:
        assert reports[name]["counts"] == counts
        _same_build(tmp_path / first, tmp_path / name)


@pytest.mark.usefixtures("ray_local")
def test_placing_chunks_in_parallel_writes_what_one_task_writes(tmp_path, monkeypatch):
    _build_paths(tmp_path, monkeypatch, [("one", 20_000, 1_000_000), ("place", 0, 1_000_000)])


@pytest.mark.slow  # three shuffles on Ray: ~2 min on 2 CPUs, mostly fixed per-pass cost
@pytest.mark.usefixtures("ray_local")
def test_dedup_over_hash_partitions_writes_what_one_task_writes(tmp_path, monkeypatch):
    """Dedup as passes over 4 hash partitions of at most 60 rows each."""
    _build_paths(tmp_path, monkeypatch, [("one", 20_000, 1_000_000), ("parts", 0, 60)])


def test_the_shuffle_map_input_is_capped_for_every_job():
    """Ray's default lets one shuffle map task join 1 GiB of claims, so the task grew with
    the build up to ~10M rows (docs/benchmarks.md); every job's data context caps it."""
    from ray.data import DataContext

    from pipeline.session import SHUFFLE_INPUT_BYTES, configure_data_context

    ctx = DataContext.get_current()
    saved = ctx.shuffle_input_batch_bytes
    try:
        ctx.shuffle_input_batch_bytes = 1 << 30
        configure_data_context(quiet=True)
        assert ctx.shuffle_input_batch_bytes == SHUFFLE_INPUT_BYTES == 128 * 2**20
    finally:
        ctx.shuffle_input_batch_bytes = saved


@pytest.mark.usefixtures("ray_local")
def test_task_stages_are_capped_and_fuse_with_a_read_that_carries_the_cap(tmp_path):
    """Without the reservation, an uncapped operator cost the driver ~58 KB a task for good
    (docs/benchmarks.md); the cap must not cost the fusion of read and stage."""
    import warnings

    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray.data

    from pipeline.runner import map_stages, task_concurrency
    from pipeline.session import configure_data_context
    from pipeline.train.standardize import FeatureMoments

    configure_data_context(quiet=True, small=True)
    table = pa.table(
        {
            "image_emb": pa.array([[1.0, 2.0]] * 40, pa.list_(pa.float32(), 2)),
            "has_image": [True] * 40,
        }
    )
    for i in range(3):
        pq.write_table(table, tmp_path / f"{i}.parquet")
    cap = task_concurrency(1.0)
    assert cap == 8  # twice the tasks the fixture's 4 CPUs run
    assert task_concurrency(0.5) == 16

    ds = ray.data.read_parquet(str(tmp_path), concurrency=cap)
    ds = map_stages(ds, [FeatureMoments({"image": 2})], columns=["image_emb", "has_image"])
    assert ds._logical_plan.dag.compute.size == cap
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        configure_data_context(quiet=True, small=True)  # its filter, after the reset above
        done = ds.materialize()
    assert done.sum("n_image") == 120
    ops = [line for line in done.stats().splitlines() if line.startswith("Operator")]
    assert any("ReadFilesParquet" in op and "->MapBatches" in op for op in ops), ops
    assert not [w for w in caught if "concurrent tasks" in str(w.message)]


def test_large_clusters_keep_rays_own_budget(monkeypatch):
    monkeypatch.setenv("MMPIPE_OP_RESERVATION", "1")
    from pipeline.runner import task_concurrency

    assert task_concurrency(1.0) is None


@pytest.mark.usefixtures("ray_local")
def test_a_finalize_stopped_at_any_step_reruns_to_the_same_bytes(tmp_path, monkeypatch):
    """Finalize stopped after dedup, part way through placing (whole tars renamed, filtered
    ones copied), before the merge and after the index files, then run again, writes what one uninterrupted run
    writes, byte for byte: each step is derived again from the staged chunks."""
    import shutil

    import pipeline.build.finalize as fin
    import pipeline.build.job as job
    from pipeline.build.job import run_build
    from pipeline.config import BuildConfig

    staged = tmp_path / "staged"
    real = job.finalize_distributed

    def keep(work, *args):
        shutil.copytree(work, staged)
        return real(work, *args)

    monkeypatch.setattr(job, "finalize_distributed", keep)
    manifest = _text_manifest(tmp_path / "m.jsonl")
    cfg = BuildConfig(input=str(manifest), output=str(tmp_path / "b"), shard_samples=20)
    run_build(cfg, quiet=True)
    ids = sorted(p.stem for p in (staged / "chunks").glob("*.parquet"))

    def finalize(name, stop=None):
        out = tmp_path / name
        shutil.copytree(staged, out / "_work")
        (out / "shards").mkdir()
        if stop is not None:
            point, after = stop
            calls = []
            original = getattr(fin, point)

            def stopping(*a, **k):
                if len(calls) >= after:
                    raise KeyboardInterrupt(point)  # as a killed driver stops: no cleanup
                calls.append(1)
                return original(*a, **k)

            with monkeypatch.context() as m:
                m.setattr(fin, point, stopping)
                with pytest.raises(KeyboardInterrupt):
                    fin.finalize(str(out / "_work"), str(out), ids)
        fin.finalize(str(out / "_work"), str(out), ids)
        fin.publish(str(out / "_work"), str(out))
        shutil.rmtree(out / "_work")
        return out

    clean = finalize("clean")
    assert len(list((clean / "shards").glob("*.tar"))) > 1
    stops = [("place_chunk", 0), ("place_chunk", len(ids) // 2), ("merge", 0)]
    for stop in [*stops, ("write_loader_files", 0)]:  # the index written, loader files not
        _same_build(clean, finalize(f"{stop[0]}{stop[1]}", stop))
