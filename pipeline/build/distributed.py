"""Finalize on Ray Data: claims read in parallel, dedup over hash partitions, chunks placed in parallel.

No task and not the driver holds per-sample state for the whole build: a dedup pass holds
one partition (at most ``dedup_partition_rows`` rows, by configuration) and its shuffle's
map tasks no more claims than that; a placement task holds one chunk at a time, the merge
one chunk's tables and one index file's footer (at most ``INDEX_FILE_ROW_GROUPS`` shards);
the driver holds one small record per chunk.
"""

from __future__ import annotations

import math
import uuid
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.build import dedup
from pipeline.build.finalize import (
    dedup_one_task,
    finalize,
    first_shards,
    kept_tars,
    merge,
    near_one_task,
    place_chunk,
    read_claims,
    reset,
    write_rejects,
)
from pipeline.faults import maybe_fail
from pipeline.runner import map_groups, map_stages, run_each, run_remote
from pipeline.session import SHUFFLE_INPUT_BYTES
from pipeline.stage import Batch, Resources, Stage

CLAIMS = tuple(dedup.CLAIMS_SCHEMA.names)
# Dedup tasks are light on CPU and heavy on shuffle; place tasks mostly move bytes.
TASK_CPUS = 0.5
# Claims per block read for the dedup passes (~5 MB): what one shuffle map task holds.
CLAIM_BLOCK_ROWS = 50_000
# Up to this many staged rows, finalize runs in one task (``finalize.finalize``): it takes
# ~1 s there, against ~6 s of start-up for the distributed steps on a 2-CPU Ray (measured:
# tests/test_build.py went from 38 s to 90 s when every build took the distributed path).
ONE_TASK_ROWS = 20_000


def _table(batch: Batch) -> pa.Table:
    return batch if isinstance(batch, pa.Table) else pa.Table.from_pydict(batch)


class ReadClaims(Stage):
    """Chunk ids and ranks in, the chunks' valid rows out, as dedup claims."""

    name = "read_claims"
    reads: ClassVar[tuple[str, ...]] = ("chunk_id", "rank")
    adds = CLAIMS
    passthrough: ClassVar[bool] = False

    def __init__(self, work_dir: str) -> None:
        super().__init__()
        self.work_dir = work_dir

    @property
    def resources(self) -> Resources:
        return Resources(num_cpus=TASK_CPUS)

    def __call__(self, batch: Batch) -> Batch:
        t = _table(batch)
        tables = [
            read_claims(self.work_dir, cid, rank)
            for cid, rank in zip(t.column("chunk_id").to_pylist(), t.column("rank").to_pylist())
        ]
        return pa.concat_tables(tables) if tables else dedup.CLAIMS_SCHEMA.empty_table()


class Partition(Stage):
    """Tag each claim with the partition of its group on one side."""

    name = "dedup_partition"
    reads = CLAIMS
    adds: ClassVar[tuple[str, ...]] = ("partition",)

    def __init__(self, side: dedup.Side, partitions: int) -> None:
        super().__init__()
        self.side, self.partitions = side, partitions

    @property
    def resources(self) -> Resources:
        return Resources(num_cpus=TASK_CPUS)

    def __call__(self, batch: Batch) -> Batch:
        t = _table(batch).select(list(CLAIMS))
        return t.append_column("partition", dedup.partition(t, self.side, self.partitions))


class Resolve(Stage):
    """One partition in; its rows decided as far as this side allows, the rejected ones
    written to their chunks' dedup folders; out: the rows a later pass still needs."""

    name = "dedup_resolve"
    reads: ClassVar[tuple[str, ...]] = (*CLAIMS, "partition")
    adds = CLAIMS
    passthrough: ClassVar[bool] = False

    def __init__(self, side: dedup.Side, work_dir: str, ids: list[str]) -> None:
        super().__init__()
        self.side, self.work_dir, self.ids = side, work_dir, ids

    @property
    def resources(self) -> Resources:
        return Resources(num_cpus=TASK_CPUS)

    def __call__(self, batch: Batch) -> Batch:
        maybe_fail("dedup_resolve")  # reliability tests: this worker dies mid-pass
        t = dedup.resolve(_table(batch).select(list(CLAIMS)).cast(dedup.CLAIMS_SCHEMA), self.side)
        found = t.filter(pc.equal(t.column("state"), dedup.REJECTED))
        if found.num_rows:  # a file of its own per call: a chunk's rejects come from many
            write_rejects(self.work_dir, self.ids, found, f"{self.side}-{uuid.uuid4().hex}")
        return dedup.still_needed(t)


# Chunks per task of the per-chunk steps: ~20 ms of work each, so a task is ~0.2 s.
CHUNKS_PER_TASK = 8


def _count(work_dir: str, ids: list[str]) -> list[tuple[str, int]]:
    return [(cid, kept_tars(work_dir, cid)) for cid in ids]


def _place(work_dir: str, out_dir: str, items: list[tuple[str, int]]) -> list[dict[str, Any]]:
    maybe_fail("place_chunk")  # reliability tests: this worker dies mid-placement
    return [place_chunk(work_dir, out_dir, cid, base) for cid, base in items]


def _groups(items: list[Any]) -> list[list[Any]]:
    return [items[i : i + CHUNKS_PER_TASK] for i in range(0, len(items), CHUNKS_PER_TASK)]


def _finish(work_dir: str, ids: list[str], refs: list[Any]) -> int:
    """The claims left after the passes, in one task: decide them by the sequential rule."""
    import ray

    left = pa.concat_tables([t.select(list(CLAIMS)) for t in ray.get(refs)])
    decided = dedup.sequential(left.cast(dedup.CLAIMS_SCHEMA))
    rejected = decided.filter(pc.equal(decided.column("state"), dedup.REJECTED))
    write_rejects(work_dir, ids, rejected, "last")
    return rejected.num_rows


def decide(work_dir: str, ids: list[str], claims: Any, n: int, partition_rows: int) -> None:
    """Run dedup passes over hash partitions until the claims still in play fit in one
    task, then finish them there. Rejects are written per chunk as they are found.

    Passes alternate key and hash. Each decides at least the earliest undecided row, and
    in practice all rows but chains linked by both hash and key: two passes for copies and
    re-keyed copies, three for reused keys (tests/test_dedup.py). Written rows leave play
    once no undecided row shares a group with them, so ``n`` falls to zero."""
    import ray

    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    # A map task joins no more claims than a partition holds: with the session's cap alone
    # (128 MiB, ~1M claims) a map task held every claim of a 1M-row build whatever the
    # partition bound, and was the largest task (docs/benchmarks.md, issue 40).
    per_claim = max(1, (claims.size_bytes() or 0) // max(1, n))
    map_bytes = min(SHUFFLE_INPUT_BYTES, partition_rows * per_claim)
    passes = 0
    while n > partition_rows:
        side: dedup.Side = ("key", "hash")[passes % 2]
        n_partitions = max(math.ceil(n / partition_rows), cpus)
        ds = map_stages(claims, [Partition(side, n_partitions)], columns=list(CLAIMS))
        resolve = Resolve(side, work_dir, ids)
        claims = map_groups(
            ds,
            "partition",
            resolve,
            columns=[*CLAIMS, "partition"],
            partitions=n_partitions,
            map_input_bytes=map_bytes,
        ).materialize()
        n, passes = claims.count(), passes + 1
    if n:
        run_remote(_finish, work_dir, ids, claims.to_arrow_refs())


def finalize_distributed(
    work_dir: str,
    out_dir: str,
    chunk_ids: list[str],
    staged: int,
    partition_rows: int,
    near_distance: int | None = None,
) -> dict[str, Any]:
    """Finalize on the running Ray: returns the build's counts, as ``finalize`` does.

    ``staged``: the rows that passed validation, which dedup will hold. ``near_distance``:
    also reject near-duplicate images (pHash within that many bits); None leaves them."""
    import ray.data

    from pipeline.build.near_ray import near_distributed

    ids = sorted(chunk_ids)
    if staged <= min(partition_rows, ONE_TASK_ROWS):
        return run_remote(finalize, work_dir, out_dir, ids, near_distance)
    reset(work_dir)
    # Claims are read a block of chunks per task: at least 64 blocks for parallelism, more
    # as rows grow so that no block (and no shuffle map task, which takes one) holds more
    # than ~CLAIM_BLOCK_ROWS claims.
    blocks = min(len(ids), max(64, math.ceil(staged / CLAIM_BLOCK_ROWS)))
    jobs = ray.data.from_items(
        [{"chunk_id": cid, "rank": i} for i, cid in enumerate(ids)], override_num_blocks=blocks
    )
    kept: dict[str, int] | None = None
    if staged <= partition_rows:
        kept = run_remote(dedup_one_task, work_dir, ids)
    else:
        claims = map_stages(jobs, [ReadClaims(work_dir)], columns=["chunk_id", "rank"])
        claims = claims.materialize()
        decide(work_dir, ids, claims, claims.count(), partition_rows)
    if near_distance is not None:  # after exact dedup: its rejects take no part
        kept = None  # near rejects change which tars keep a sample
        if staged <= partition_rows:
            run_remote(near_one_task, work_dir, ids, near_distance)
        else:
            near_distributed(work_dir, ids, jobs, near_distance, staged, partition_rows)

    if kept is None:  # the rejects were found across tasks: count per chunk
        counts = run_each(_count, ((work_dir, g) for g in _groups(ids)), num_cpus=TASK_CPUS)
        kept = dict(pair for part in counts for pair in part)
    bases = first_shards(kept)
    places = ((work_dir, out_dir, [(c, bases[c]) for c in g]) for g in _groups(ids))
    placed = {p["chunk_id"]: p for part in run_each(_place, places, num_cpus=1.0) for p in part}
    return run_remote(merge, work_dir, [placed[cid] for cid in ids])
