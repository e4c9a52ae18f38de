"""Fingerprints: the one short content hash that names configs, plans, parts and model versions."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

# 16 hex digits (64 bits): collisions are negligible for the names we derive from them, and
# paths and log lines stay short.
SHORT = 16


def short_hash(data: bytes) -> str:
    """The first 16 hex digits of the SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()[:SHORT]


def fingerprint(obj: Any) -> str:
    """A short hash of a JSON-able value; key order never matters."""
    return short_hash(json.dumps(obj, sort_keys=True, default=str).encode())


def features_fingerprint(cfg: Any, info: dict[str, Any]) -> str:
    """What decides features (a ``FeaturesConfig``): its computing fields and the encoders'
    identities; how the run is spread over workers does not count."""
    from schemas import FEATURES_SCHEMA_VERSION

    fields = cfg.model_dump(
        exclude={
            "output",
            "actors",
            "actor_num_cpus",
            "preprocess_num_cpus",
            "batch_size",
            "on_error",
        }
    )
    return fingerprint({"cfg": fields, "encoders": info, "v": FEATURES_SCHEMA_VERSION})


# A shard's digest: the sum of its rows' (key, content) hashes mod 2^128, and the row count.
# A sum is order-free and streams, so the build (per final shard) and refresh planning (over an
# index) compute the same value from rows in any order.
DIGEST_MOD = 1 << 128


def row_hash(key: str, content: str | None) -> int:
    """One row's term of its shard's digest."""
    h = hashlib.sha256(f"{key}\0{content or ''}".encode()).digest()
    return int.from_bytes(h[:16], "big")


def digest_text(total: int, count: int) -> str:
    """The digest as recorded: ``<sum as 32 hex digits>:<rows>``."""
    return f"{total % DIGEST_MOD:032x}:{count}"


def keys_hash(keys: Iterable[str]) -> str:
    """The name of a staged part: a hash of the keys it holds, so a retry rewrites the same file."""
    return short_hash("\n".join(keys).encode())
