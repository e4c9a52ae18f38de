"""A user predicate for the curate tests, imported by name in workers (module:function)."""

from __future__ import annotations

from typing import Any


def no_forbidden(batch: dict[str, list[Any]]) -> tuple[list[bool], list[str | None]]:
    """Reject captions that say "forbidden"; keep the rest."""
    keep = ["forbidden" not in (t or "") for t in batch["text"]]
    return keep, [None if k else "caption says forbidden" for k in keep]


def broken(batch: dict[str, list[Any]]) -> list[bool]:
    """A user bug: one flag too few."""
    return [True] * (len(batch["key"]) - 1)
