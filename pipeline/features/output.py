"""A features output on disk: its names, and how it is read (train, curate) and listed (the job).

``OUT/parts/<shard>/<hash>.parquet`` (one row per sample: ``key``, ``meta``, ``<m>_emb``,
``has_<m>``), ``OUT/rejects/<shard>/``, ``features.json`` (the summary, with the encoders and
the parts) and ``_SUCCESS``, written last. ``io/parts.PartWriter`` writes the parts.
"""

from __future__ import annotations

import json
from typing import Any

from pipeline.io.fs import exists, join, list_files, read_bytes

REPORT = "features.json"
SUCCESS = "_SUCCESS"
PARTS = "parts"
OWNED = (PARTS, "rejects", "manifest.json")  # what --overwrite removes besides the markers


def is_finished(root: str) -> bool:
    """Whether ``root`` holds a finished features run (its marker and summary)."""
    return exists(join(root, SUCCESS)) and exists(join(root, REPORT))


def has_parts(root: str) -> bool:
    """Whether ``root`` holds committed parts (``_SUCCESS`` and ``parts/``): all that readers
    of the vectors alone need (curate)."""
    return exists(join(root, SUCCESS)) and exists(join(root, PARTS))


def read_report(root: str) -> tuple[bytes, dict[str, Any]]:
    """``features.json`` as written (its hash is the data's identity) and as a mapping."""
    raw = read_bytes(join(root, REPORT))
    return raw, dict(json.loads(raw))


def listed_parts(root: str) -> list[str]:
    """The part files under ``root``, relative to it (``parts/<shard>/<file>``), sorted."""
    base = join(root, PARTS)
    return sorted(f"{PARTS}/{p}" for p in list_files(base)) if exists(base) else []


def part_files(root: str, report: dict[str, Any]) -> list[str]:
    """Every part of a finished run, as URLs: those its summary lists (else a listing)."""
    return [join(root, f) for f in report.get("parts") or listed_parts(root)]


def parts_by_shard(root: str) -> dict[str, list[str]]:
    """Shard stem -> the part files holding its rows."""
    out: dict[str, list[str]] = {}
    for rel in listed_parts(root):
        out.setdefault(rel.split("/")[1], []).append(join(root, rel))
    return out
