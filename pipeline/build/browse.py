"""A finished build read for people: its rejected rows, and samples by key (source, caption, label)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import Reason, UserError
from pipeline.io.fs import exists, get_fs, join
from pipeline.io.parquet import iter_tables
from pipeline.io.shards import build_marker, index_files
from pipeline.redact import redact

LABEL_FIELD = "label"  # the metadata key a sample's class is read from, as train's default


def _finished(build: str) -> None:
    if not build_marker(build):
        raise UserError(
            f"{build} is not a finished build (no build.json or curate.json); give the "
            "--output folder of mmpipe build or mmpipe curate"
        )


def iter_rejects(
    build: str, *, reason: str | None = None, limit: int | None = None
) -> Iterator[dict[str, Any]]:
    """The rejected rows of a build or curated build, in input order, streamed.

    Raises:
        UserError: not a finished build, or a reason that is no reject reason.
    """
    _finished(build)
    known = {r.value for r in Reason}
    if reason is not None and reason not in known:
        raise UserError(
            f"--reason {reason!r} is no reject reason; known: {', '.join(sorted(known))}"
        )
    url = join(build, "rejects.parquet")
    shown = 0
    cols = ["source_file", "source_row", "key", "reason", "modality", "message"]
    for table in iter_tables([url], cols) if exists(url) else ():
        if reason is not None:
            table = table.filter(pc.equal(table.column("reason"), reason))
        for row in table.to_pylist():
            if limit is not None and shown >= limit:
                return
            shown += 1
            yield row


def reject_line(row: dict[str, Any]) -> str:
    """One reject for the terminal: where it came from, why, and the message."""
    where = f"{redact(row['source_file'])}:{row['source_row']}"
    key = f" [{row['key']}]" if row.get("key") else ""
    what = f"{row['reason']}" + (f" ({row['modality']})" if row.get("modality") else "")
    return f"{where}{key}  {what}: {redact(row['message'])}"


def samples(build: str, keys: set[str]) -> dict[str, dict[str, Any]]:
    """For each of ``keys`` found in the build: its source, caption and label.

    Streams the index (a few columns) and reads only the caption and metadata members of
    the matches, by their offsets: a handful of keys cost one pass over the index.
    """
    _finished(build)
    if not keys:
        return {}
    wanted = pa.array(sorted(keys), pa.string())
    cols = ["key", "shard", "members", "source_file", "source_row"]
    found: dict[str, dict[str, Any]] = {}
    for table in iter_tables(index_files(build), cols):
        for row in table.filter(pc.is_in(table.column("key"), wanted)).to_pylist():
            found[row["key"]] = row
    out = {}
    for key, row in found.items():
        members = {m["name"].split(".", 1)[1]: m for m in row["members"]}
        tar = join(build, row["shard"])
        text = _member(tar, members.get("txt"))
        meta = _member(tar, members.get("json"))
        label = json.loads(meta).get(LABEL_FIELD) if meta else None
        out[key] = {
            "source": f"{redact(row['source_file'])}:{row['source_row']}",
            "caption": text,
            "label": None if label is None else str(label),
        }
    return out


def _member(tar: str, m: dict[str, Any] | None) -> str | None:
    if m is None:
        return None
    fs, path = get_fs(tar)
    data = fs.cat_file(path, start=m["offset"], end=m["offset"] + m["size"])
    return bytes(data).decode("utf-8", errors="replace")
