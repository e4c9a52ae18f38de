"""Training data from `mmpipe features` output: splits by key hash, labels from metadata, tensors."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from pipeline.errors import UserError
from pipeline.features.output import is_finished, part_files, read_report
from pipeline.io.parquet import fsl_to_numpy, iter_tables
from pipeline.stage import Stage


def is_val(key: str, fraction: float) -> bool:
    """Deterministic split: a key is in validation iff its hash falls under ``fraction``.
    Stable across runs, machines and corpus growth (a key never changes side)."""
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    return h / 2**64 < fraction


@dataclass(frozen=True)
class FeatureSet:
    """What a features directory holds: its files, dims, lineage and the label vocabulary."""

    root: str
    files: list[str]
    dims: dict[str, int]
    fingerprint: str
    manifest_sha256: str
    preprocessing: dict[str, Any]
    classes: list[str]


def open_features(
    root: str, modalities: Sequence[str] | None, label_field: str | None
) -> FeatureSet:
    """Check a features directory and read what training needs to know, streaming one column."""
    if not is_finished(root):
        raise UserError(
            f"train: {root} is not a finished `mmpipe features` output (no _SUCCESS); "
            "run mmpipe features first, or point DATA at its --output"
        )
    raw, report = read_report(root)
    dims = {m: int(v["dim"]) for m, v in report["encoders"].items()}
    if modalities:
        missing = [m for m in modalities if m not in dims]
        if missing:
            raise UserError(
                f"train config: modalities {missing} are not in {root} (it has {sorted(dims)})"
            )
        dims = {m: dims[m] for m in modalities}
    files = part_files(root, report)
    if not files:
        raise UserError(f"train: {root} holds no feature rows")
    classes = label_vocabulary(iter_tables(files, ["meta"]), label_field)
    return FeatureSet(
        root=root,
        files=files,
        dims=dims,
        fingerprint=str(report.get("fingerprint")),
        manifest_sha256=hashlib.sha256(raw).hexdigest(),
        preprocessing={"config": report.get("config"), "encoders": report.get("encoders")},
        classes=sorted(classes),
    )


def label_vocabulary(tables: Iterator[pa.Table], field: str | None) -> set[str]:
    """Every label value in the ``meta`` column of the tables (one streaming pass)."""
    found: set[str] = set()
    if field:
        for t in tables:
            found.update(x for x in (label_of(m, field) for m in t.column("meta").to_pylist()) if x)
    return found


def label_of(meta: str | None, field: str) -> str | None:
    if not meta:
        return None
    try:
        value = json.loads(meta).get(field)
    except (ValueError, AttributeError):
        return None
    return None if value is None else str(value)


class SplitLabel(Stage):
    """Keep one split's rows and add ``label`` (class index, -1 when unknown) from metadata."""

    name = "split_label"
    reads: ClassVar[tuple[str, ...]] = ("key", "meta")
    adds: ClassVar[tuple[str, ...]] = ("label",)
    batch_format: ClassVar[str] = "pyarrow"

    def __init__(
        self, split: str, fraction: float, classes: list[str], label_field: str | None
    ) -> None:
        super().__init__()
        self.split, self.fraction, self.label_field = split, fraction, label_field
        self.index = {c: i for i, c in enumerate(classes)}

    def keep(self, keys: list[str]) -> np.ndarray:
        """The rows of this split."""
        want = self.split == "val"
        return np.array([is_val(str(k), self.fraction) == want for k in keys], dtype=bool)

    def labels(self, metas: list[str | None]) -> list[int]:
        if not self.label_field:
            return [-1] * len(metas)
        return [self.index.get(label_of(m, self.label_field) or "", -1) for m in metas]

    def __call__(self, batch: Any) -> Any:  # a pyarrow Table in, a pyarrow Table out
        table = batch.filter(pa.array(self.keep(batch.column("key").to_pylist())))
        labels = self.labels(table.column("meta").to_pylist())
        return table.append_column("label", pa.array(labels, pa.int64()))


def to_tensors(table: pa.Table, dims: dict[str, int], device: Any) -> tuple[dict, dict, Any]:
    """An Arrow batch -> (features, masks, labels) tensors on ``device``."""
    import torch

    feats, masks = {}, {}
    for m, d in dims.items():
        x, valid = fsl_to_numpy(table.column(f"{m}_emb"), d)
        has = (
            np.asarray(table.column(f"has_{m}").to_numpy(zero_copy_only=False), dtype=bool) & valid
        )
        feats[m] = _to(torch.from_numpy(x), device)
        masks[m] = _to(torch.from_numpy(has), device)
    labels = torch.from_numpy(
        np.array(table.column("label").to_numpy(zero_copy_only=False), dtype=np.int64)
    ).to(device)
    return feats, masks, labels


def _to(t: Any, device: Any) -> Any:
    """Host to device without blocking the Python thread: pinned memory, async copy."""
    if str(device).startswith("cuda"):
        return t.pin_memory().to(device, non_blocking=True)
    return t


def local_split(fs_: FeatureSet, split: str, fraction: float, label_field: str | None) -> pa.Table:
    """One split as one in-memory table, for plain-torch runs (tests, the bare-loop benchmark)
    and for evaluation, where the validation split is what is scored."""
    stage = SplitLabel(split, fraction, fs_.classes, label_field)
    cols = ["key", "meta", *(f"{m}_emb" for m in fs_.dims), *(f"has_{m}" for m in fs_.dims)]
    parts = [stage(t) for t in iter_tables(fs_.files, cols)]
    return pa.concat_tables(parts) if parts else pa.table({})


def split_batches(
    fs_: FeatureSet,
    split: str,
    fraction: float,
    label_field: str | None,
    classes: list[str] | None = None,
) -> Iterator[tuple[Any, ...]]:
    """(keys, metas, features, masks, labels) of one split, streamed 1,024 rows at a time:
    what the baselines and the search for matching classes read, with bounded memory."""
    stage = SplitLabel(split, fraction, fs_.classes if classes is None else classes, label_field)
    cols = ["key", "meta", *(f"{m}_emb" for m in fs_.dims), *(f"has_{m}" for m in fs_.dims)]
    for table in iter_tables(fs_.files, cols, rows=1024):
        t: Any = stage(table)
        if t.num_rows:
            yield (
                t.column("key").to_pylist(),
                t.column("meta").to_pylist(),
                *to_tensors(t, fs_.dims, "cpu"),
            )


def ray_split(fs_: FeatureSet, split: str, fraction: float, label_field: str | None) -> Any:
    """One split as a Ray Dataset, for ``get_dataset_shard`` in the workers."""
    import ray.data

    from pipeline.runner import map_stages, task_concurrency

    cols = ["key", "meta", *(f"{m}_emb" for m in fs_.dims), *(f"has_{m}" for m in fs_.dims)]
    # The stage's cap, so the read and the stage fuse.
    ds = ray.data.read_parquet(fs_.files, columns=cols, concurrency=task_concurrency(1.0))
    return map_stages(ds, [SplitLabel(split, fraction, fs_.classes, label_field)], columns=cols)
