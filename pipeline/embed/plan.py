"""What a run must do: compare the shards' index and the model with the store's latest version.

Each shard gets one action: ``carry`` (unchanged: its file is linked into the new version),
``merge`` (some samples new or changed: embed those, keep the rest from the old file) or
``embed`` (everything: a new shard, a new model, or shards without an index). Only shards whose
digest changed are read row by row. A build records each shard's digest in
``shards.parquet``, so planning reads O(shards) rows plus the changed shards' index row groups;
builds without it cost one pass over the index.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.fingerprint import DIGEST_MOD, digest_text, row_hash, short_hash
from pipeline.io.fs import exists, get_fs, join
from pipeline.io.parquet import iter_row_groups, iter_tables, read_table
from pipeline.io.shards import (
    IndexSpan,
    build_marker,
    index_files,
    index_span,
    resolve_shards,
    shard_stem,
)


@dataclass
class ShardInput:
    url: str
    digest: str
    count: int | None  # samples in the index; None without one
    span: IndexSpan | None = None  # where the index holds its rows; None without one


@dataclass
class ShardPlan:
    shard: str
    url: str
    digest: str
    action: str  # carry | merge | embed
    # The base version's entry for this shard (manifest "files" item), when it had one.
    prev: dict[str, Any] | None = None
    skip: frozenset[str] = frozenset()  # keys not to embed: kept from the base, or staged
    kept: int = 0
    span: IndexSpan | None = None


@dataclass
class Plan:
    shards: list[ShardPlan]
    indexed: bool  # the input is a build: its index names every sample's content hash
    base: str | None
    reason: str  # first | incremental | new_model | new_layout | full
    deleted: dict[str, int]  # base shards gone from the input -> their rows
    target: str = ""

    @property
    def noop(self) -> bool:
        return (
            bool(self.base) and not self.deleted and all(s.action == "carry" for s in self.shards)
        )


def scan_input(spec: str) -> tuple[bool, dict[str, ShardInput]]:
    """The input's shards with a digest each. A build's digest covers every (key,
    content_hash) of the shard (``fingerprint.row_hash``): read from ``shards.parquet``, or
    summed in one pass over an older build's index. Bare tars are compared by size and
    modification time or ETag."""
    urls = resolve_shards(spec)
    by_stem = {shard_stem(u): u for u in urls}
    index = index_files(spec)
    if build_marker(spec) and index:
        digests = join(spec, "shards.parquet")
        found = shard_digests(spec) if exists(digests) else index_digests(index[0])
        out = {}
        for stem, url in by_stem.items():  # a shard the index never names holds no samples
            si = found.get(stem) or ShardInput(url, digest_text(0, 0), 0)
            out[stem] = ShardInput(url, si.digest, si.count, si.span)
        return True, out
    out = {}
    for stem, url in by_stem.items():
        fs, path = get_fs(url)
        info = fs.info(path)
        stamp = (
            info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified")
        )
        out[stem] = ShardInput(url, f"file:{info.get('size')}:{stamp}", None)
    return False, out


def shard_digests(build: str) -> dict[str, ShardInput]:
    """stem -> digest, samples and index span, as the build recorded them."""
    out = {}
    cols = ["shard", "samples", "digest", "index_file", "index_row_groups"]
    for t in iter_tables([join(build, "shards.parquet")], cols):
        for row in t.to_pylist():
            out[shard_stem(row["shard"])] = ShardInput(
                row["shard"], row["digest"], int(row["samples"]), index_span(build, row)
            )
    return out


def index_digests(index_url: str) -> dict[str, ShardInput]:
    """The same digests summed over the index, for builds without ``shards.parquet`` (one
    index file then)."""
    sums: dict[str, int] = {}
    counts: dict[str, int] = {}
    groups: dict[str, list[int]] = {}
    for rg, table in iter_row_groups(index_url, ["key", "shard", "content_hash"]):
        keys = table.column("key").to_pylist()
        hashes = table.column("content_hash").to_pylist()
        for k, h, s in zip(keys, hashes, table.column("shard").to_pylist()):
            stem = shard_stem(s)
            sums[stem] = (sums.get(stem, 0) + row_hash(k, h)) % DIGEST_MOD
            counts[stem] = counts.get(stem, 0) + 1
            if not groups.setdefault(stem, []) or groups[stem][-1] != rg:
                groups[stem].append(rg)
    return {
        stem: ShardInput(
            stem, digest_text(sums[stem], counts[stem]), counts[stem], (index_url, groups[stem])
        )
        for stem in sums
    }


def index_hashes(span: IndexSpan, stem: str) -> dict[str, str]:
    """key -> content_hash of one shard, read from only the index row groups that hold it."""
    out: dict[str, str] = {}
    url, groups = span
    for _, t in iter_row_groups(url, ["key", "shard", "content_hash"], groups):
        for k, h, s in zip(
            t.column("key").to_pylist(),
            t.column("content_hash").to_pylist(),
            t.column("shard").to_pylist(),
        ):
            if shard_stem(s) == stem:
                out[k] = h
    return out


def read_keys(url: str) -> dict[str, str | None]:
    """key -> content_hash of an embeddings or rejects file."""
    t = read_table(url, columns=["key", "content_hash"])
    return dict(zip(t.column("key").to_pylist(), t.column("content_hash").to_pylist()))


def previous_keys(vdir: str, prev: dict[str, Any]) -> dict[str, str | None]:
    """key -> content_hash of a base version's shard: its rows and its rejects."""
    found = read_keys(join(vdir, prev["path"])) if prev["rows"] else {}
    if prev["rejected"]:
        found.update(read_keys(join(vdir, rejects_path(prev["shard"]))))
    return found


def rejects_path(stem: str) -> str:
    return f"rejects/{stem}.parquet"


def make_plan(
    shards: dict[str, ShardInput],
    indexed: bool,
    base: str | None,
    base_manifest: dict[str, Any] | None,
    vdir: str | None,
    model_version: str,
    layout: str,
    incremental: bool,
) -> Plan:
    """Decide each shard's action against the base version (None: the first version)."""
    old = {f["shard"]: f for f in (base_manifest or {}).get("files", [])}
    bm = base_manifest or {}
    same_model = bm.get("model_version") == model_version
    same = same_model and bm.get("layout") == layout
    if base_manifest is None:
        reason = "first"
    elif not same_model:
        reason = "new_model"
    elif not same:
        reason = "new_layout"
    else:
        reason = "incremental" if incremental else "full"
    plans = []
    for stem, si in sorted(shards.items()):
        prev = old.get(stem)
        sp = ShardPlan(stem, si.url, si.digest, "embed", prev=prev, span=si.span)
        if prev is not None and same:
            if prev["digest"] == si.digest:
                sp.action = "carry"  # the same (key, content) multiset: the old file is exact
            elif incremental and indexed and si.span is not None and vdir is not None:
                sp.action = "merge"
                now = index_hashes(si.span, stem)
                old_keys = previous_keys(vdir, prev)
                sp.skip = frozenset(
                    k for k, h in old_keys.items() if h is not None and now.get(k) == h
                )
                sp.kept = len(sp.skip)
        plans.append(sp)
    deleted = {s: int(f["rows"]) + int(f["rejected"]) for s, f in old.items() if s not in shards}
    blob = "|".join([model_version, layout, base or "", *(f"{p.shard}={p.digest}" for p in plans)])
    return Plan(plans, indexed, base, reason, deleted, short_hash(blob.encode()))
