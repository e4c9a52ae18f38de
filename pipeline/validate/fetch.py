"""FetchStage: read every referenced part (local, s3://, gs://, http(s)://) with bounded concurrency."""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Any, ClassVar

from pipeline.errors import Reason
from pipeline.io.fs import get_fs, is_remote, scheme_of
from pipeline.stage import Batch, Stage


def _fail(part: dict[str, Any], reason: Reason, message: str) -> None:
    part["error"] = reason.value
    part["message"] = message[:500]
    part["data"] = None


class FetchStage(Stage):
    """Fill ``data`` for every part that has a ``ref``; failures mark the part, never raise.

    HTTP(S) goes through pooled keep-alive connections on ``concurrency`` threads; other
    remote filesystems (s3, gcs) through one ``fs.cat`` call each, which fsspec's async
    clients run concurrently; local files are read directly, never past the size limit.
    """

    name = "fetch"
    reads: ClassVar[tuple[str, ...]] = ("parts",)

    def __init__(self, *, max_file_bytes: int, concurrency: int = 16) -> None:
        super().__init__()
        self.max_file_bytes = max_file_bytes
        self.concurrency = concurrency

    def __call__(self, batch: Batch) -> Batch:
        remote: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for parts in batch["parts"]:
            for part in parts or ():
                ref = part.get("ref")
                if not ref or part.get("data") is not None or part.get("error"):
                    continue
                if is_remote(ref):
                    remote[scheme_of(ref)].append(part)
                else:
                    self._read_local(part)
        for group in remote.values():
            self._read_remote(group)
        for parts in batch["parts"]:
            for part in parts or ():
                if part.get("data") is not None and len(part["data"]) > self.max_file_bytes:
                    size = len(part["data"])
                    _fail(part, Reason.TOO_LARGE, f"{part['ref']}: {size} bytes > max_file_bytes")
        return batch

    def _read_local(self, part: dict[str, Any]) -> None:
        ref = part["ref"]
        path = ref[len("file://") :] if ref.startswith("file://") else ref
        try:
            with open(path, "rb") as f:
                # Size from the open descriptor: a too-large file is never read, and read()
                # of the exact size avoids allocating a max_file_bytes buffer per file.
                size = os.fstat(f.fileno()).st_size
                if size > self.max_file_bytes:
                    _fail(part, Reason.TOO_LARGE, f"{ref}: {size} bytes > max_file_bytes")
                    return
                data = f.read(self.max_file_bytes + 1) if size == 0 else f.read()
        except FileNotFoundError:
            _fail(part, Reason.MISSING, f"{ref}: no such file")
            return
        except (IsADirectoryError, PermissionError, OSError) as e:
            _fail(part, Reason.FETCH_ERROR, f"{ref}: {type(e).__name__}: {e}")
            return
        except ValueError as e:  # a NUL or a lone surrogate in the path (found by fuzzing)
            _fail(part, Reason.DISALLOWED_REF, f"{ref!r}: not a usable path ({e})")
            return
        part["data"] = data

    def _read_remote(self, parts: list[dict[str, Any]]) -> None:
        if scheme_of(parts[0]["ref"]) in ("http", "https"):
            from pipeline.io.http import fetch_many

            results = fetch_many([p["ref"] for p in parts], self.max_file_bytes, self.concurrency)
            for p, res in zip(parts, results):
                if isinstance(res, bytes):
                    p["data"] = res
                elif isinstance(res, FileNotFoundError):
                    _fail(p, Reason.MISSING, f"{p['ref']}: not found ({res})")
                else:
                    _fail(p, Reason.FETCH_ERROR, f"{p['ref']}: {res}")
            return
        fs, _ = get_fs(parts[0]["ref"])
        paths = {p["ref"]: fs._strip_protocol(p["ref"]) for p in parts}
        try:
            got = fs.cat(
                sorted(set(paths.values())), on_error="return", batch_size=self.concurrency
            )
        except Exception as e:  # the whole filesystem is unreachable: every part fails
            for p in parts:
                _fail(p, Reason.FETCH_ERROR, f"{p['ref']}: {type(e).__name__}: {e}")
            return
        if not isinstance(got, dict):  # a single path returns bare bytes
            got = {next(iter(paths.values())): got}
        for p in parts:
            out = got.get(paths[p["ref"]])
            if isinstance(out, (bytes, bytearray)):
                p["data"] = bytes(out)
            elif isinstance(out, FileNotFoundError):
                _fail(p, Reason.MISSING, f"{p['ref']}: not found")
            else:
                _fail(p, Reason.FETCH_ERROR, f"{p['ref']}: {type(out).__name__}: {out}")
