"""SemDeDup on Ray Data: k-means fitted on a sample, clusters assigned in parallel, then
pairwise cosine within each cluster (one task per cluster), duplicates written per shard."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from pipeline.curate.config import CurateConfig
from pipeline.curate.filters import verdicts
from pipeline.curate.measure import measure_url
from pipeline.fingerprint import row_hash
from pipeline.io.fs import join, write_bytes_atomic
from pipeline.io.parquet import read_table, to_table, write_table
from pipeline.io.shards import shard_stem
from pipeline.stage import Batch, Resources, Stage
from schemas import MEASURE_SCHEMA, SEMDUP_SCHEMA

KEPT = ("key", "shard", "order", "vector")
BLOCK = 512  # candidates compared at once against the kept rows of their cluster


def _table(batch: Batch) -> pa.Table:
    return batch if isinstance(batch, pa.Table) else pa.Table.from_pydict(batch)


def _matrix(col: Any) -> np.ndarray:
    """A list<float32> column of equal-length, non-null vectors as an [N, D] array."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if len(arr) == 0:
        return np.zeros((0, 0), np.float32)
    flat = arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return flat.reshape(len(arr), -1)


class Survivors(Stage):
    """Shard names in; the measured rows that every filter keeps and that have a vector out."""

    name = "curate_survivors"
    reads: ClassVar[tuple[str, ...]] = ("shard",)
    adds = KEPT
    passthrough: ClassVar[bool] = False

    def __init__(self, cfg: CurateConfig, work_dir: str, threshold: float | None) -> None:
        super().__init__()
        self.cfg, self.work_dir, self.threshold = cfg, work_dir, threshold

    @property
    def resources(self) -> Resources:
        return Resources(num_cpus=self.cfg.num_cpus)

    def __call__(self, batch: Batch) -> Batch:
        out = []
        for shard in _table(batch).column("shard").to_pylist():
            t = read_table(measure_url(self.work_dir, shard, "parquet"))
            keep = [v is None for v in verdicts(t, self.cfg, self.threshold)]
            mask = np.array(keep, dtype=bool) & ~np.asarray(t.column("vector").is_null(), bool)
            out.append(t.filter(pa.array(mask, type=pa.bool_())).select(list(KEPT)))
        return pa.concat_tables(out) if out else MEASURE_SCHEMA.empty_table().select(list(KEPT))


class Sampled(Stage):
    """A deterministic sample: rows whose key hash (with the seed) falls under ``fraction``."""

    name = "curate_sample"
    reads = KEPT
    adds = KEPT

    def __init__(self, seed: int, fraction: float) -> None:
        super().__init__()
        self.seed, self.cut = seed, int(min(1.0, fraction) * (1 << 128))

    def __call__(self, batch: Batch) -> Batch:
        t = _table(batch)
        keys = t.column("key").to_pylist()
        keep = [row_hash(k, f"semdedup:{self.seed}") < self.cut for k in keys]
        return t.filter(pa.array(keep, type=pa.bool_()))


def fit_centroids(sample: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means (scikit-learn, k-means++ seeded) on L2-normalised vectors; unit centroids."""
    from sklearn.cluster import KMeans

    k = max(1, min(k, len(sample)))
    if k == 1:
        c = sample.mean(axis=0, keepdims=True)
    else:
        c = KMeans(n_clusters=k, random_state=seed, n_init=1).fit(sample).cluster_centers_
    norm = np.linalg.norm(c, axis=1, keepdims=True)
    return (c / np.where(norm > 0, norm, 1.0)).astype(np.float32)


def cluster_count(cfg: CurateConfig, rows: int) -> int:
    return cfg.semdedup.clusters or max(1, math.ceil(rows / cfg.semdedup.cluster_rows))


class Assign(Stage):
    """Each row's nearest centroid (cosine) and its similarity to it."""

    name = "curate_assign"
    reads = KEPT
    adds: ClassVar[tuple[str, ...]] = ("cluster", "centroid_sim")

    def __init__(self, centroids: np.ndarray, num_cpus: float) -> None:
        super().__init__()
        self.centroids, self.cpus = centroids, num_cpus

    @property
    def resources(self) -> Resources:
        return Resources(num_cpus=self.cpus)

    def __call__(self, batch: Batch) -> Batch:
        t = _table(batch)
        x = _matrix(t.column("vector"))
        if not len(x):
            return t.append_column("cluster", pa.array([], pa.int64())).append_column(
                "centroid_sim", pa.array([], pa.float32())
            )
        sims = x @ self.centroids.T
        best = sims.argmax(axis=1)
        return t.append_column("cluster", pa.array(best.astype(np.int64))).append_column(
            "centroid_sim", pa.array(sims[np.arange(len(x)), best].astype(np.float32))
        )


def dedup_cluster(
    keys: list[str],
    order: np.ndarray,
    x: np.ndarray,
    centroid_sim: np.ndarray,
    eps: float,
    keep: str,
) -> list[tuple[int, int, float]]:
    """Greedy SemDeDup in one cluster: rows visited in keep-policy order (input order; or
    nearest to / farthest from the centroid first, ties by input order) are kept unless
    their cosine to an already kept row is >= 1 - eps. Returns (duplicate, kept, cosine)
    row positions. Each duplicate names a row that is kept, so no chain loses all copies."""
    if keep == "first":
        visit = np.argsort(order, kind="stable")
    else:
        sign = -1.0 if keep == "nearest" else 1.0
        visit = np.lexsort((order, sign * centroid_sim))
    cut = 1.0 - eps
    kept: list[int] = []
    kept_x = np.zeros((0, x.shape[1]), dtype=np.float32)
    dups: list[tuple[int, int, float]] = []
    for start in range(0, len(visit), BLOCK):
        block = visit[start : start + BLOCK]
        vs_kept = x[block] @ kept_x.T  # against rows kept before this block
        inner = x[block] @ x[block].T
        new: list[int] = []  # positions within the block kept so far
        for j, row in enumerate(block):
            best, arg = -2.0, -1
            if vs_kept.shape[1]:
                a = int(vs_kept[j].argmax())
                best, arg = float(vs_kept[j, a]), kept[a]
            if new:
                b = int(np.argmax(inner[j, new]))
                if inner[j, new[b]] > best:
                    best, arg = float(inner[j, new[b]]), int(block[new[b]])
            if best >= cut:
                dups.append((int(row), arg, best))
            else:
                new.append(j)
        kept += [int(block[j]) for j in new]
        kept_x = np.concatenate([kept_x, x[block[new]]]) if new else kept_x
    return dups


class ClusterDedup(Stage):
    """One whole cluster in (Ray Data groupby), its semantic duplicates out."""

    name = "curate_cluster_dedup"
    reads: ClassVar[tuple[str, ...]] = (*KEPT, "cluster", "centroid_sim")
    adds = tuple(SEMDUP_SCHEMA.names)
    passthrough: ClassVar[bool] = False

    def __init__(self, eps: float, keep: str) -> None:
        super().__init__()
        self.eps, self.keep = eps, keep

    def __call__(self, batch: Batch) -> Batch:
        t = _table(batch)
        keys = t.column("key").to_pylist()
        shards = t.column("shard").to_pylist()
        dups = dedup_cluster(
            keys,
            np.asarray(t.column("order").to_pylist(), dtype=np.int64),
            _matrix(t.column("vector")),
            np.asarray(t.column("centroid_sim").to_pylist(), dtype=np.float32),
            self.eps,
            self.keep,
        )
        rows = [
            {"key": keys[d], "shard": shards[d], "kept_key": keys[k], "similarity": s}
            for d, k, s in dups
        ]
        return to_table(rows, SEMDUP_SCHEMA)


def semdup_url(work_dir: str, shard: str) -> str:
    return join(work_dir, "semdup", f"{shard_stem(shard)}.parquet")


class WriteDups(Stage):
    """One shard's duplicates in (Ray Data groupby), written as ``_work/semdup/<shard>``."""

    name = "curate_write_dups"
    reads = tuple(SEMDUP_SCHEMA.names)
    adds: ClassVar[tuple[str, ...]] = ("shard", "rows")
    passthrough: ClassVar[bool] = False

    def __init__(self, work_dir: str) -> None:
        super().__init__()
        self.work_dir = work_dir

    def __call__(self, batch: Batch) -> Batch:
        t = _table(batch).sort_by("key")
        if not t.num_rows:
            return {"shard": [], "rows": []}
        shard = t.column("shard")[0].as_py()
        write_table(semdup_url(self.work_dir, shard), t, SEMDUP_SCHEMA, "semdup")
        return {"shard": [shard], "rows": [t.num_rows]}


def mark_done(work_dir: str, count: int) -> None:
    write_bytes_atomic(join(work_dir, "semdup", "_SUCCESS"), str(count).encode())
