"""Staged Parquet parts per shard: named by a hash of their keys, committed atomically, and read
back on resume. The features and embed writers are the two users of ``PartWriter``."""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pyarrow as pa

from pipeline.errors import Reject
from pipeline.fingerprint import keys_hash
from pipeline.io.fs import exists, join, list_files
from pipeline.io.parquet import read_table, to_table, write_table
from pipeline.stage import Batch, Resources, Stage

if TYPE_CHECKING:
    from pipeline.progress import Progress

PART_DIRS = ("parts", "rejects")
SUMMARY = ("shard", "part", "rows", "rejects", "write_s", "reasons")  # reasons: JSON counts


def done_keys(root: str) -> dict[str, frozenset[str]]:
    """Keys already written (or rejected) per shard, read from the committed parts under
    ``root``: what a resumed run skips at read time."""
    found: dict[str, set[str]] = {}
    for kind in PART_DIRS:
        base = join(root, kind)
        if not exists(base):
            continue
        for rel in list_files(base):
            keys = read_table(join(base, rel), columns=["key"]).column("key").to_pylist()
            found.setdefault(rel.split("/", 1)[0], set()).update(keys)
    return {s: frozenset(k) for s, k in found.items()}


class PartWriter(Stage):
    """Write each shard's rows of a batch as one part, ``parts/<shard>/<hash>.parquet``, and its
    rejects as ``rejects/<shard>/<hash>.parquet``; return one summary row per shard.

    A retried batch holds the same keys, so it rewrites the same files: a resumed run neither
    repeats nor loses a sample. Subclasses build the kept rows' table (``rows_table``) and may
    reject more rows than preprocessing did (``rejects_of``).
    """

    reads: ClassVar[tuple[str, ...]] = ("key", "shard", "error")
    adds: ClassVar[tuple[str, ...]] = SUMMARY
    passthrough: ClassVar[bool] = False
    batch_format: ClassVar[str] = "numpy"

    def __init__(
        self, root: str, schema: pa.Schema, name: str, rejects_schema: pa.Schema, rejects_name: str
    ) -> None:
        super().__init__()
        self.root, self.schema, self.schema_name = root, schema, name
        self.rejects_schema, self.rejects_name = rejects_schema, rejects_name

    @property
    def resources(self) -> Resources:
        return Resources(num_cpus=0.25)

    def rejects_of(self, batch: Batch) -> list[Reject | None]:
        """Why each row is not written (None: it is); by default what earlier stages recorded."""
        return [Reject.from_json(e) if e else None for e in batch["error"]]

    def rows_table(self, batch: Batch, ok: list[int], keys: np.ndarray, shard: str) -> pa.Table:
        raise NotImplementedError

    def __call__(self, batch: Batch) -> Batch:
        t0 = time.perf_counter()
        keys = np.asarray(batch["key"]).astype(str)
        shards = np.asarray(batch["shard"]).astype(str)
        rejects = self.rejects_of(batch)
        summary: dict[str, list[Any]] = {name: [] for name in SUMMARY}
        for shard in sorted(set(shards.tolist())):
            idx = np.flatnonzero(shards == shard)
            ok = [int(i) for i in idx if rejects[i] is None]
            bad = [int(i) for i in idx if rejects[i] is not None]
            name = keys_hash(keys[idx].tolist())
            if bad:
                table = self._rejects_table([rejects[i] for i in bad], keys[bad].tolist(), shard)
                url = join(self.root, f"rejects/{shard}/{name}.parquet")
                write_table(url, table, self.rejects_schema, self.rejects_name)
            part = f"parts/{shard}/{name}.parquet"
            table = self.rows_table(batch, ok, keys, shard)
            write_table(join(self.root, part), table, self.schema, self.schema_name)
            reasons = json.dumps(dict(Counter(rejects[i].reason.value for i in bad)))  # type: ignore[union-attr]
            for col, value in zip(SUMMARY, (shard, part, len(ok), len(bad), 0.0, reasons)):
                summary[col].append(value)
        if summary["write_s"]:
            summary["write_s"][0] = time.perf_counter() - t0
        return {k: np.asarray(v) for k, v in summary.items()}

    def _rejects_table(self, rejects: list[Any], keys: list[str], shard: str) -> pa.Table:
        n = len(keys)
        cols: dict[str, list[Any]] = {
            "key": keys,
            "shard": [shard] * n,
            "content_hash": [None] * n,  # filled from the build's index where one is kept
            "stage": [r.stage for r in rejects],
            "reason": [r.reason.value for r in rejects],
            "message": [r.message[:2000] for r in rejects],
        }
        return to_table(cols, self.rejects_schema)  # the columns its schema has


@dataclass
class PartTotals:
    """Running totals of ``PartWriter`` summaries: a job's counts, shown by its reporter."""

    progress: Progress | None = None
    rows: int = 0
    rejected: int = 0
    write_s: float = 0.0
    reasons: Counter[str] = field(default_factory=Counter)  # rejects by reason so far
    # (time, rows done) after each summary: the steady rate leaves start-up out.
    marks: list[tuple[float, int]] = field(default_factory=list)

    def add(self, summary: pa.Table) -> None:
        self.rows += int(summary.column("rows").to_numpy().sum())
        self.rejected += int(summary.column("rejects").to_numpy().sum())
        self.write_s += float(summary.column("write_s").to_numpy().sum())
        found: Counter[str] = Counter()
        for text in summary.column("reasons").to_pylist():
            found.update(json.loads(text))
        self.reasons.update(found)
        self.marks.append((time.perf_counter(), self.rows + self.rejected))
        if self.progress is not None:
            self.progress.update(self.rows, rejected=self.rejected)
            self.progress.reasons.update(found)

    def steady_rate(self) -> float | None:
        """Rows per second from the first summary to the last (None with fewer than two)."""
        if len(self.marks) < 2:
            return None
        (ta, ra), (tb, rb) = self.marks[0], self.marks[-1]
        return (rb - ra) / max(1e-9, tb - ta)
