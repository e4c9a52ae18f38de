"""KeyStage: safe, collision-free tar keys and the content hash used for exact dedup."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Any, ClassVar

from pipeline.stage import Batch, Stage

# \w is Unicode-aware: letters and digits of any script stay readable in keys.
_UNSAFE = re.compile(r"[^\w-]")
MAX_KEY_CHARS = 96


def sanitize_key(raw: str) -> str:
    """Return a key that is safe as a tar member stem and never collides after sanitising.

    Keys that are already safe (word characters and '-', no dots, no '/') are kept as they
    are. Any other key has its unsafe characters replaced and a hash of the original
    appended, so ``a/b`` and ``a_b`` stay distinct and ``../x`` cannot escape.
    """
    nfc = unicodedata.normalize("NFC", raw)
    safe = _UNSAFE.sub("_", nfc)[:MAX_KEY_CHARS]
    if safe == raw and safe.strip("_-"):
        return safe
    digest = hashlib.sha1(raw.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    stem = safe.strip("_-")[: MAX_KEY_CHARS - 11] or "key"
    return f"{stem}-{digest}"


def derived_key(chunk_id: str, source_row: int) -> str:
    """The key of a row whose input names none: its file index and row, so it is stable."""
    return f"{chunk_id.split('-', 1)[0]}-{source_row:09d}"


def content_hash(
    image: bytes | None, text: str | None, audio: bytes | None, extras: list[Any]
) -> str:
    """SHA-256 over the written payloads (not metadata): equal hashes mean the same sample."""
    h = hashlib.sha256()
    payloads: list[tuple[str, bytes]] = [
        ("image", image or b""),
        ("text", text.encode("utf-8") if text else b""),
        ("audio", audio or b""),
    ]
    payloads += [(f"extra:{ext}", data) for ext, data in sorted(extras or [])]
    for tag, data in payloads:
        h.update(f"{tag}:{len(data)}:".encode())
        h.update(hashlib.sha256(data).digest())
    return h.hexdigest()


class KeyStage(Stage):
    """Add ``key`` (sanitised) and ``content_hash`` to validated rows."""

    name = "keys"
    reads: ClassVar[tuple[str, ...]] = (
        "chunk_id",
        "source_row",
        "source_key",
        "reason",
        "image",
        "text",
        "audio",
        "extras",
    )
    adds: ClassVar[tuple[str, ...]] = ("key", "content_hash")

    def __call__(self, batch: Batch) -> Batch:
        keys: list[str] = []
        hashes: list[str | None] = []
        for i in range(len(batch["source_row"])):
            src = batch["source_key"][i]
            keys.append(
                sanitize_key(src)
                if src
                else derived_key(batch["chunk_id"][i], batch["source_row"][i])
            )
            if batch["reason"][i]:
                hashes.append(None)
            else:
                hashes.append(
                    content_hash(
                        batch["image"][i], batch["text"][i], batch["audio"][i], batch["extras"][i]
                    )
                )
        batch["key"] = keys
        batch["content_hash"] = hashes
        return batch
