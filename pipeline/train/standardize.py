"""Per-feature mean and scale of the training split, streamed: what the projectors standardise by."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from pipeline.io.parquet import fsl_to_numpy
from pipeline.stage import Stage

# A dimension whose spread is below this is constant in training: it is centred, not scaled,
# so that a value it never showed in training is not blown up (StandardScaler does the same).
MIN_STD = 1e-6
Stats = dict[str, tuple[list[float], list[float]]]  # modality -> (mean, 1 / std)


class FeatureMoments(Stage):
    """A batch of feature rows -> one row: per modality, the count, sum and sum of squares of
    the rows where it is present. Summed on the driver, O(dims) per batch, never O(rows)."""

    name = "feature_moments"
    reads: ClassVar[tuple[str, ...]] = ()
    passthrough: ClassVar[bool] = False  # one summary row out, not the batch
    batch_format: ClassVar[str] = "pyarrow"

    def __init__(self, dims: dict[str, int]) -> None:
        super().__init__()
        self.dims = dict(dims)

    def inputs(self) -> tuple[str, ...]:
        return tuple(c for m in self.dims for c in (f"{m}_emb", f"has_{m}"))

    def outputs(self) -> tuple[str, ...]:
        return tuple(f"{k}_{m}" for m in self.dims for k in ("n", "sum", "sumsq"))

    def drops(self) -> tuple[str, ...]:
        return self.inputs()

    def __call__(self, batch: Any) -> Any:  # a pyarrow Table in, one row out
        out = {}
        for m, d in self.dims.items():
            x, valid = fsl_to_numpy(batch.column(f"{m}_emb"), d)
            has = np.asarray(batch.column(f"has_{m}").to_numpy(zero_copy_only=False), dtype=bool)
            x = x[valid & has].astype(np.float64)
            out[f"n_{m}"] = [len(x)]
            out[f"sum_{m}"] = [x.sum(axis=0).tolist()]
            out[f"sumsq_{m}"] = [np.square(x).sum(axis=0).tolist()]
        return pa.table(out)


def combine(rows: Iterable[pa.Table], dims: dict[str, int]) -> Stats:
    """Sum the per-batch moments (streamed) into each modality's mean and 1 / std."""
    n = dict.fromkeys(dims, 0)
    s = {m: np.zeros(d) for m, d in dims.items()}
    sq = {m: np.zeros(d) for m, d in dims.items()}
    for t in rows:
        for i in range(t.num_rows):
            for m in dims:
                n[m] += int(t.column(f"n_{m}")[i].as_py())
                s[m] += np.asarray(t.column(f"sum_{m}")[i].as_py())
                sq[m] += np.asarray(t.column(f"sumsq_{m}")[i].as_py())
    out: Stats = {}
    for m in dims:
        k = max(n[m], 1)
        mean = s[m] / k
        std = np.sqrt(np.maximum(sq[m] / k - np.square(mean), 0.0))
        inv = np.where(std > MIN_STD, 1.0 / np.maximum(std, MIN_STD), 1.0)
        out[m] = (mean.astype(np.float32).tolist(), inv.astype(np.float32).tolist())
    return out


def local_stats(table: pa.Table, dims: dict[str, int]) -> Stats:
    """The same figures from an in-memory split (tests, in-process training)."""
    return combine([FeatureMoments(dims)(table)], dims)


def ray_stats(ds: Any, dims: dict[str, int]) -> Stats:
    """The same figures from a Ray Dataset: one small row per block reaches the driver."""
    from pipeline.runner import map_stages

    rows = map_stages(ds, [FeatureMoments(dims)], columns=list(FeatureMoments(dims).inputs()))
    return combine(rows.iter_batches(batch_size=None, batch_format="pyarrow"), dims)
