"""Near-duplicate images by multi-index hashing of 64-bit pHashes: bands, candidates, roots.

The rule (SemDeDup's, for pHashes): an image is a near duplicate when an earlier image, in
input order, has a pHash within ``distance`` bits of its own. It names the first image of
its chain (its *root*, which is kept): following "earliest earlier neighbour" links always
ends at an image with no earlier neighbour. Rows that exact dedup rejected take no part.

Two hashes within ``distance`` bits agree exactly on at least one of ``distance + 1``
disjoint bands (pigeonhole), so only rows that share a band value are compared. A band
bucket is one task's work, and holds ~rows / 2**(64 / (distance + 1)) rows of uniform
hashes: the reason the distance is kept small at scale (docs/build.md).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.work import LINK_SCHEMA, NEAR_SCHEMA

MAX_DISTANCE = 16
_BAND_BITS = 56  # below the 8 bits that number the band, in a bucket id


def band_edges(distance: int) -> list[tuple[int, int]]:
    """(shift, width) of the ``distance + 1`` bands that split 64 bits as evenly as possible."""
    n = distance + 1
    widths = [64 // n + (1 if i < 64 % n else 0) for i in range(n)]
    shifts = [64 - sum(widths[: i + 1]) for i in range(n)]
    return list(zip(shifts, widths))


def buckets(phash: np.ndarray, distance: int) -> np.ndarray:
    """(bands, rows) int64 bucket ids: band number and band value. With one band (distance
    0) the bucket is the whole hash."""
    h = phash.astype(np.uint64)
    if distance == 0:
        return h.view(np.int64)[None, :]
    out = np.empty((distance + 1, len(h)), np.uint64)
    for b, (shift, width) in enumerate(band_edges(distance)):
        value = (h >> np.uint64(shift)) & np.uint64((1 << width) - 1)
        out[b] = (np.uint64(b) << np.uint64(_BAND_BITS)) | value
    return out.view(np.int64)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.bitwise_count(np.bitwise_xor(a.astype(np.uint64), b.astype(np.uint64)))


def explode(table: pa.Table, distance: int) -> pa.Table:
    """Each candidate row once per band, with its ``bucket`` (band number and value)."""
    t = table.select(NEAR_SCHEMA.names)
    ids = buckets(t.column("phash").to_numpy(), distance)
    idx = np.tile(np.arange(t.num_rows), len(ids))
    return t.take(pa.array(idx)).append_column("bucket", pa.array(ids.ravel()))


def links(table: pa.Table, distance: int) -> pa.Table:
    """Rows with ``bucket`` (whole buckets) in; out, each row that has an earlier row within
    ``distance`` bits in a bucket it shares, linked to the earliest such row (LINK_SCHEMA).

    Identical hashes in a bucket are compared once. The distinct ones are sorted by bucket
    and first position, then each is compared with the one k places before it, for k = 1,
    2, ... while any pair k apart still shares a bucket: a bucket of n distinct hashes costs
    n^2 / 2 comparisons, all vectorised."""
    if not table.num_rows:
        return LINK_SCHEMA.empty_table()
    pos = table.column("pos").to_numpy()
    h = table.column("phash").to_numpy().astype(np.uint64)
    b = table.column("bucket").to_numpy()
    o = np.lexsort((pos, h, b))
    bs, hs, ps = b[o], h[o], pos[o]
    start = np.ones(len(o), bool)
    start[1:] = (bs[1:] != bs[:-1]) | (hs[1:] != hs[:-1])
    run = np.cumsum(start) - 1  # each sorted row's distinct (bucket, hash)
    db, dh, dp = bs[start], hs[start], ps[start]
    o2 = np.lexsort((dp, db))  # distinct hashes by bucket, then by first position
    db, dh, dp = db[o2], dh[o2], dp[o2]
    best = dp.copy()
    active = np.arange(1, len(db))
    k = 1
    while len(active):
        active = active[db[active - k] == db[active]]
        near = active[hamming(dh[active], dh[active - k]) <= distance]
        np.minimum.at(best, near, dp[near - k])
        active = active[active - k - 1 >= 0]
        k += 1
    rank = np.empty(len(o2), np.int64)
    rank[o2] = np.arange(len(o2))
    to = best[rank[run]]  # per sorted row: the earliest position within reach of its hash
    dup = to < ps
    if not dup.any():
        return LINK_SCHEMA.empty_table()
    by_pos = np.argsort(pos)
    at = by_pos[np.searchsorted(pos, to[dup], sorter=by_pos)]
    me = o[dup]
    keys = table.column("key").take(pa.array(at))
    return pa.table(
        {
            "pos": pa.array(pos[me]),
            "key": table.column("key").take(pa.array(me)),
            "phash": pa.array(h[me], pa.uint64()),
            "to_pos": pa.array(pos[at]),
            "to_key": keys,
            "to_phash": pa.array(h[at], pa.uint64()),
            "via_key": keys,
            "via_distance": pa.array(hamming(h[me], h[at]).astype(np.int32)),
        },
        schema=LINK_SCHEMA,
    )


def one_task(table: pa.Table, distance: int) -> pa.Table:
    """The whole search in this process: dedup rejects (pos, reason, message)."""
    found = roots(earliest_link(links(explode(table, distance), distance)))
    return messages(found, distance)


def earliest_link(links: pa.Table) -> pa.Table:
    """One link per row: the earliest target over the links found in different buckets."""
    if not links.num_rows:
        return LINK_SCHEMA.empty_table()
    t = links.sort_by([("pos", "ascending"), ("to_pos", "ascending")])
    pos = t.column("pos").to_numpy()
    keep = np.ones(len(pos), bool)
    keep[1:] = pos[1:] != pos[:-1]
    return t.filter(pa.array(keep))


def jump(requests: pa.Table, answers: pa.Table) -> tuple[pa.Table, int]:
    """One pointer-jumping step: every request whose target has a link of its own (an
    answer, keyed by its ``pos``) now points at that link's target. Returns the requests
    and how many moved; when none move, each points at its root."""
    if not requests.num_rows or not answers.num_rows:
        return requests, 0
    apos = answers.column("pos").to_numpy()
    order = np.argsort(apos)
    tgt = requests.column("to_pos").to_numpy()
    at = np.searchsorted(apos, tgt, sorter=order).clip(0, len(apos) - 1)
    hit = apos[order[at]] == tgt
    if not hit.any():
        return requests, 0
    src = answers.take(pa.array(order[at]))
    for name in ("to_pos", "to_key", "to_phash"):
        col = pc.if_else(pa.array(hit), src.column(name), requests.column(name))
        requests = requests.set_column(requests.schema.get_field_index(name), name, col)
    return requests, int(hit.sum())


def roots(links: pa.Table, max_steps: int = 64) -> pa.Table:
    """Every link pointed at its root, in one task (steps double the reach: 2**64 bound)."""
    for _ in range(max_steps):
        links, moved = jump(links, links)
        if not moved:
            return links
    raise RuntimeError("near-duplicate chains did not resolve")  # unreachable: 2**64 links


def messages(links: pa.Table, distance: int) -> pa.Table:
    """Links at their roots -> dedup rejects: ``pos``, ``reason``, ``message``."""
    root_d = hamming(links.column("phash").to_numpy(), links.column("to_phash").to_numpy())
    msgs = []
    for key, via, vd, rd in zip(
        links.column("to_key").to_pylist(),
        links.column("via_key").to_pylist(),
        links.column("via_distance").to_pylist(),
        root_d.tolist(),
    ):
        text = f"near duplicate of {key}: pHash distance {rd}"
        if via != key:  # a chain: this image is near only to a near duplicate of the root
            text += f", reached through {via} at distance {vd}"
        msgs.append(f"{text} (near_dup_distance {distance})")
    return pa.table(
        {
            "pos": links.column("pos"),
            "reason": pa.array(["near_duplicate"] * links.num_rows, pa.string()),
            "message": pa.array(msgs, pa.string()),
        }
    )


def sequential(table: pa.Table, distance: int) -> pa.Table:
    """The rule by its definition, O(rows^2): each row against every earlier row (tests)."""
    t = table.select(NEAR_SCHEMA.names).sort_by("pos")
    h = t.column("phash").to_numpy().astype(np.uint64)
    keys = t.column("key").to_pylist()
    root: dict[int, int] = {}
    out: list[dict[str, object]] = []
    for j in range(len(h)):
        near = np.nonzero(hamming(h[:j], h[j]) <= distance)[0]
        if len(near):
            i = int(near[0])
            root[j] = root.get(i, i)
            r = root[j]
            text = f"near duplicate of {keys[r]}: pHash distance {int(hamming(h[j], h[r]))}"
            if i != r:
                text += f", reached through {keys[i]} at distance {int(hamming(h[j], h[i]))}"
            out.append({"pos": t.column("pos")[j].as_py(), "message": text})
    for d in out:
        d["message"] = f"{d['message']} (near_dup_distance {distance})"
    return pa.Table.from_pylist(out, pa.schema([("pos", pa.int64()), ("message", pa.string())]))
