"""Near-duplicate search on Ray Data: bands shuffled into buckets, links reduced, roots jumped.

The steps of ``neardup.one_task``, each over hash partitions so that no task holds more than
one partition of rows: (1) every image once per band, grouped by bucket; (2) the links found
in buckets, grouped by image, keep the earliest; (3) pointer jumping, one groupby a round,
until every link names its root; (4) rejects written per chunk.
"""

from __future__ import annotations

import uuid
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.build import neardup
from pipeline.build.finalize import read_near, write_rejects
from pipeline.runner import map_groups, map_stages
from pipeline.stage import Batch, Resources, Stage

LINKS = tuple(neardup.LINK_SCHEMA.names)
# Light on CPU, heavy on shuffle: half a core each, as the exact-dedup tasks.
LIGHT = Resources(num_cpus=0.5)
MAX_ROUNDS = 64  # each round doubles how far a link jumps: 2**64 covers any chain


def partition_of(values: Any, partitions: int) -> pa.Array:
    """A partition per int64 value: a multiplicative hash, so that nearby values spread."""
    v = np.asarray(values).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    return pa.array(((v >> np.uint64(32)) % np.uint64(partitions)).astype(np.int64))


def _table(batch: Batch) -> pa.Table:
    return batch if isinstance(batch, pa.Table) else pa.Table.from_pydict(batch)


class ReadBands(Stage):
    """Chunk ids and ranks in; each image of theirs still written, once per band, out."""

    resources = LIGHT
    passthrough: ClassVar[bool] = False

    name = "near_read"
    reads: ClassVar[tuple[str, ...]] = ("chunk_id", "rank")
    adds: ClassVar[tuple[str, ...]] = (*neardup.NEAR_SCHEMA.names, "bucket", "partition")

    def __init__(self, work_dir: str, distance: int, partitions: int) -> None:
        super().__init__()
        self.work_dir, self.distance, self.partitions = work_dir, distance, partitions

    def __call__(self, batch: Batch) -> Batch:
        t = _table(batch)
        near = [
            read_near(self.work_dir, cid, rank)
            for cid, rank in zip(t.column("chunk_id").to_pylist(), t.column("rank").to_pylist())
        ]
        rows = neardup.explode(
            pa.concat_tables(near) if near else neardup.NEAR_SCHEMA.empty_table(), self.distance
        )
        return rows.append_column(
            "partition", partition_of(rows.column("bucket").to_numpy(), self.partitions)
        )


class BucketLinks(Stage):
    """Whole buckets in; the links found in them out, tagged by the image's partition."""

    resources = LIGHT
    passthrough: ClassVar[bool] = False

    name = "near_buckets"
    reads: ClassVar[tuple[str, ...]] = (*neardup.NEAR_SCHEMA.names, "bucket", "partition")
    adds: ClassVar[tuple[str, ...]] = (*LINKS, "partition")

    def __init__(self, distance: int, partitions: int) -> None:
        super().__init__()
        self.distance, self.partitions = distance, partitions

    def __call__(self, batch: Batch) -> Batch:
        t = _table(batch).select(["pos", "key", "phash", "bucket"])
        found = neardup.links(t.cast(_BUCKET_SCHEMA), self.distance)
        return found.append_column(
            "partition", partition_of(found.column("pos").to_numpy(), self.partitions)
        )


_BUCKET_SCHEMA = pa.schema([*neardup.NEAR_SCHEMA, pa.field("bucket", pa.int64())])


class Earliest(Stage):
    """All links of some images in; one per image out, to its earliest neighbour."""

    resources = LIGHT
    passthrough: ClassVar[bool] = False

    name = "near_earliest"
    reads: ClassVar[tuple[str, ...]] = (*LINKS, "partition")
    adds = LINKS

    def __call__(self, batch: Batch) -> Batch:
        return neardup.earliest_link(_table(batch).select(list(LINKS)).cast(neardup.LINK_SCHEMA))


class Ask(Stage):
    """Links in; each twice out: as a request to its target's partition (kind 0), and as
    the answer for its own image (kind 1)."""

    resources = LIGHT
    passthrough: ClassVar[bool] = False

    name = "near_ask"
    reads = LINKS
    adds: ClassVar[tuple[str, ...]] = (*LINKS, "kind", "partition")

    def __init__(self, partitions: int) -> None:
        super().__init__()
        self.partitions = partitions

    def __call__(self, batch: Batch) -> Batch:
        t = _table(batch).select(list(LINKS))
        asks = []
        for kind, by in ((0, "to_pos"), (1, "pos")):
            tagged = t.append_column("kind", pa.array(np.full(t.num_rows, kind, np.int8)))
            asks.append(
                tagged.append_column(
                    "partition", partition_of(t.column(by).to_numpy(), self.partitions)
                )
            )
        return pa.concat_tables(asks)


class Jump(Stage):
    """One partition of requests and answers in; the requests out, moved one jump."""

    resources = LIGHT
    passthrough: ClassVar[bool] = False

    name = "near_jump"
    reads: ClassVar[tuple[str, ...]] = (*LINKS, "kind", "partition")
    adds: ClassVar[tuple[str, ...]] = (*LINKS, "moved")

    def __call__(self, batch: Batch) -> Batch:
        t = _table(batch)
        kind = t.column("kind")
        side = [
            t.filter(pc.equal(kind, k)).select(list(LINKS)).cast(neardup.LINK_SCHEMA)
            for k in (0, 1)
        ]
        moved_before = side[0].column("to_pos").to_numpy()
        out, _ = neardup.jump(side[0], side[1])
        moved = out.column("to_pos").to_numpy() != moved_before
        return out.append_column("moved", pa.array(moved.astype(np.int64)))


class WriteNear(Stage):
    """Links at their roots in; their rejects written to their chunks' dedup folders."""

    resources = LIGHT
    passthrough: ClassVar[bool] = False

    name = "near_write"
    reads = LINKS
    adds: ClassVar[tuple[str, ...]] = ("written",)

    def __init__(self, work_dir: str, ids: list[str], distance: int) -> None:
        super().__init__()
        self.work_dir, self.ids, self.distance = work_dir, ids, distance

    def __call__(self, batch: Batch) -> Batch:
        t = _table(batch).select(list(LINKS)).cast(neardup.LINK_SCHEMA)
        if t.num_rows:
            found = neardup.messages(t, self.distance)
            write_rejects(self.work_dir, self.ids, found, f"near-{uuid.uuid4().hex}")
        return pa.table({"written": [t.num_rows]})


def near_distributed(
    work_dir: str, ids: list[str], jobs: Any, distance: int, rows: int, partition_rows: int
) -> int:
    """Run the search over ``jobs`` (chunk ids and ranks); ``rows`` bounds the images.
    Returns how many near duplicates were rejected."""
    import math

    import ray

    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    n_partitions = max(math.ceil(rows * (distance + 1) / partition_rows), cpus)
    ds = map_stages(
        jobs, [ReadBands(work_dir, distance, n_partitions)], columns=["chunk_id", "rank"]
    )
    cols = [*neardup.NEAR_SCHEMA.names, "bucket", "partition"]
    ds = map_groups(
        ds, "partition", BucketLinks(distance, n_partitions), columns=cols, partitions=n_partitions
    )
    links = map_groups(
        ds, "partition", Earliest(), columns=[*LINKS, "partition"], partitions=n_partitions
    )
    links = links.materialize()
    if not links.count():
        return 0
    for _ in range(MAX_ROUNDS):
        asks = map_stages(links, [Ask(n_partitions)], columns=list(LINKS))
        links = map_groups(
            asks,
            "partition",
            Jump(),
            columns=[*LINKS, "kind", "partition"],
            partitions=n_partitions,
        ).materialize()
        if not links.sum("moved"):
            break
    else:
        raise RuntimeError("near-duplicate chains did not resolve")  # unreachable
    done = map_stages(links, [WriteNear(work_dir, ids, distance)], columns=list(LINKS))
    return int(done.sum("written") or 0)
