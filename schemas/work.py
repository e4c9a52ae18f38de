"""Arrow schemas of a build's working files under ``OUT/_work`` (chunk summaries, dedup claims
and rejects, near-duplicate candidates): they reach disk while a build runs and resumes."""

import pyarrow as pa

# Which input rows a staged chunk's id names, part of a build's fingerprint so that a build
# resumed by a newer mmpipe never reuses chunks cut another way. 2: a chunk of inline text
# rows holds several shards' worth (pipeline/ingest/layout.py).
WORK_LAYOUT_VERSION = 2

# A chunk's marker (``_work/chunks/<id>.parquet``) and the summary row its task returns.
SUMMARY_SCHEMA = pa.schema(
    [
        pa.field("chunk_id", pa.string()),
        pa.field("rows", pa.int64()),
        pa.field("staged", pa.int64()),
        pa.field("rejected", pa.int64()),
        pa.field("bytes", pa.int64()),
        pa.field("tars", pa.int64()),
        pa.field("reasons", pa.string()),  # JSON {reason: count}
        pa.field("member_types", pa.string()),  # JSON [extension, ...] of the staged members
        pa.field("resumed", pa.bool_()),
        pa.field("seconds", pa.float64()),
    ]
)

# The rows a pass reads and writes. ``hfree``/``kfree``: every earlier row of the row's hash
# (key) group is rejected, so that side no longer blocks it. ``hn``/``kn``: undecided rows in
# its group after the last pass on that side (-1 before one ran).
CLAIMS_SCHEMA = pa.schema(
    [
        pa.field("pos", pa.int64()),
        pa.field("key", pa.string()),
        pa.field("content_hash", pa.string()),
        pa.field("state", pa.int8()),
        pa.field("hfree", pa.bool_()),
        pa.field("kfree", pa.bool_()),
        pa.field("hn", pa.int64()),
        pa.field("kn", pa.int64()),
        pa.field("reason", pa.string()),
        pa.field("message", pa.string()),
    ]
)

# A chunk's dedup rejects: its row number, the reason and the message.
DEDUP_SCHEMA = pa.schema(
    [pa.field("row", pa.int64()), pa.field("reason", pa.string()), pa.field("message", pa.string())]
)

# A candidate row of the near-dup search: its position (dedup.position), key and pHash.
NEAR_SCHEMA = pa.schema(
    [pa.field("pos", pa.int64()), pa.field("key", pa.string()), pa.field("phash", pa.uint64())]
)
# A near duplicate and what it points at: first its earliest earlier neighbour, then its root.
LINK_SCHEMA = pa.schema(
    [
        *NEAR_SCHEMA,
        pa.field("to_pos", pa.int64()),
        pa.field("to_key", pa.string()),
        pa.field("to_phash", pa.uint64()),
        pa.field("via_key", pa.string()),  # the earliest earlier neighbour
        pa.field("via_distance", pa.int32()),
    ]
)
