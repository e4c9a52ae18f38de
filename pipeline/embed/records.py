"""Typed records of one embed run: the version's manifest and its ledger line (schemas/embeddings)."""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from pipeline.fusion.artifact import RunArtifact
from schemas.embeddings import EMBED_SCHEMA_VERSION

FILE_FIELDS = ("path", "shard", "rows", "rejected", "bytes", "digest")
# What each merged shard reports about the diff against the base version (MergeShard).
DIFF_FIELDS = ("added", "changed", "removed", "unchanged", "embedded")


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Manifest:
    """``versions/vN/manifest.json``: what the version holds and which model made it."""

    version: str
    model_id: str
    model_version: str
    model_path: str  # search encodes queries with the same model
    layout: str
    dim: int
    storage: str
    preprocessing: str
    rows: int
    rejected: int
    files: list[dict[str, Any]]
    created_at: str = field(default_factory=now_utc)
    normalization: str = "l2"
    schema_version: int = EMBED_SCHEMA_VERSION

    @classmethod
    def of(
        cls, version: str, ref: RunArtifact, layout: str, storage: str, entries: list[dict]
    ) -> Manifest:
        """The manifest of ``entries``, the merged shards' manifest entries."""
        return cls(
            version=version,
            model_id=ref.model_id,
            model_version=ref.version,
            model_path=ref.weights_url,
            layout=layout,
            dim=ref.dim,
            storage=storage,
            preprocessing=ref.preprocessing,
            rows=sum(e["rows"] for e in entries),
            rejected=sum(e["rejected"] for e in entries),
            files=[
                {k: e[k] for k in FILE_FIELDS} for e in sorted(entries, key=lambda e: e["shard"])
            ],
        )

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RunRecord:
    """One ``ledger/*.json`` line: what a run that wrote a version did."""

    kind: str  # embed | refresh
    started_at: str
    seconds: float
    version: str
    base_version: str | None
    model_version: str
    reason: str
    added: int
    changed: int
    removed: int
    unchanged: int
    embedded: int
    rejected: int
    resumed: int
    shards_carried: int
    shards_rewritten: int
    rows: int
    write_seconds: float
    rejects_by_reason: dict[str, int] = field(default_factory=dict)  # this run's
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    @classmethod
    def of(cls, manifest: Manifest, entries: list[dict], deleted: int, **run: Any) -> RunRecord:
        """Totals over the merged shards, plus ``deleted`` rows of shards gone from the input."""
        diff = {k: sum(e[k] for e in entries) for k in DIFF_FIELDS}
        diff["removed"] += deleted
        return cls(rows=manifest.rows, rejected=manifest.rejected, **diff, **run)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
