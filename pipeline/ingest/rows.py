"""The input row every reader yields, and how a manifest cell becomes a part (bytes or a reference)."""

from __future__ import annotations

import datetime as _dt
import decimal
import json
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import Reason, SampleError
from pipeline.io.fs import LOCAL_SCHEMES, REMOTE_SCHEMES, is_remote, join, scheme_of

_TEXT_PATH_RE = re.compile(r"^\S+\.txt$", re.IGNORECASE)


@dataclass
class InputRow:
    """One input row: where it came from, and its members (each inline bytes or a reference)."""

    source_file: str
    source_row: int
    source_key: str | None = None
    members: list[dict[str, Any]] = field(default_factory=list)
    error_reason: str | None = None
    error_message: str | None = None

    def add(self, name: str, *, ref: str | None = None, data: bytes | None = None) -> None:
        self.members.append({"name": name, "ref": ref, "data": data})

    def fail(self, err: SampleError) -> None:
        self.error_reason = err.reason.value
        self.error_message = err.message


def resolve_ref(value: str, *, base_dir: str, remote_base: bool, allow_local: bool) -> str:
    """Resolve a reference against the manifest's folder, refusing what this input may not reach.

    A remote manifest may not point at local files (``/etc/passwd``, ``file://``) unless the
    config says ``allow_local_refs``; unknown schemes are refused everywhere.
    """
    scheme = scheme_of(value)
    if scheme in REMOTE_SCHEMES:
        return value
    if scheme in LOCAL_SCHEMES or (not scheme and value.startswith("/")):
        if remote_base and not allow_local:
            raise SampleError(
                Reason.DISALLOWED_REF,
                f"local reference {value!r} in a remote manifest (set allow_local_refs to permit)",
            )
        return value
    if scheme:
        raise SampleError(Reason.DISALLOWED_REF, f"scheme {scheme!r} is not allowed in {value!r}")
    if remote_base:
        proto, rest = base_dir.split("://", 1)
        return f"{proto}://{posixpath.normpath(posixpath.join(rest, value))}"
    return join(base_dir, value)


def jsonable(value: Any) -> Any:
    """Make a metadata value JSON-safe, deterministically."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    if isinstance(value, (bytes, bytearray)):
        import base64

        return {"base64": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        return jsonable(value.item())
    return str(value)


@dataclass(frozen=True)
class ManifestLayout:
    """Which manifest columns hold what, and how to resolve references found in them."""

    image: str
    audio: str
    text: str
    key: str
    text_source: str
    base_dir: str
    remote: bool
    allow_local: bool

    @classmethod
    def for_manifest(cls, manifest_url: str, cfg: Any) -> ManifestLayout:
        from pipeline.io.fs import dirname

        return cls(
            image=cfg.image_column,
            audio=cfg.audio_column,
            text=cfg.text_column,
            key=cfg.key_column,
            text_source=cfg.text_source,
            base_dir=dirname(manifest_url),
            remote=is_remote(manifest_url),
            allow_local=cfg.allow_local_refs,
        )


def row_from_record(
    record: dict[str, Any], layout: ManifestLayout, source_file: str, source_row: int
) -> InputRow:
    """Turn one manifest record into an InputRow; a bad cell marks the row, never raises."""
    row = InputRow(source_file=source_file, source_row=source_row)
    key = record.get(layout.key)
    if key is not None and key != "":
        row.source_key = str(jsonable(key))
    try:
        for name, col in (("image", layout.image), ("audio", layout.audio), ("text", layout.text)):
            _add_cell(row, name, col, record.get(col), layout)
    except SampleError as e:
        row.members.clear()
        row.fail(e)
        return row
    skip = {layout.key, layout.image, layout.audio, layout.text}
    meta = {k: jsonable(v) for k, v in record.items() if k not in skip}
    if meta:
        row.add("json", data=json.dumps(meta, sort_keys=True, ensure_ascii=False).encode())
    return row


def _add_cell(row: InputRow, name: str, col: str, value: Any, layout: ManifestLayout) -> None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return
    if isinstance(value, dict) and ("bytes" in value or "path" in value):
        # Hugging Face datasets' Image/Audio features: {bytes, path}; bytes win when present.
        if value.get("bytes"):
            row.add(name, data=bytes(value["bytes"]))
            return
        value = value.get("path")
        if not value:
            return
    if isinstance(value, (bytes, bytearray, memoryview)):
        row.add(name, data=bytes(value))
        return
    if not isinstance(value, str):
        raise SampleError(
            Reason.MALFORMED_ROW,
            f"column {col!r} holds {type(value).__name__}; expected a path, URL or bytes",
            modality=name,
        )
    if name == "text" and not _text_is_path(value, layout.text_source):
        row.add("text", data=value.encode("utf-8", "surrogatepass"))
        return
    ref = resolve_ref(
        value.strip(),
        base_dir=layout.base_dir,
        remote_base=layout.remote,
        allow_local=layout.allow_local,
    )
    row.add(name, ref=ref)


def _text_is_path(value: str, mode: str) -> bool:
    if mode == "inline":
        return False
    if mode == "path":
        return True
    return bool(_TEXT_PATH_RE.match(value.strip()))
