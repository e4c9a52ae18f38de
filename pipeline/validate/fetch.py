"""FetchStage: read every referenced part (local, s3://, gs://, http(s)://), streaming HTTP."""

from __future__ import annotations

import functools
import os
import threading
from collections import defaultdict
from collections.abc import Callable
from typing import Any, ClassVar

from pipeline.errors import Reason
from pipeline.io.fetcher import Fetcher, FetchPolicy, TooLargeError, shared_fetcher
from pipeline.io.fs import get_fs, is_remote, scheme_of
from pipeline.io.netguard import BlockedAddressError
from pipeline.stage import Batch, Stage


def _fail(part: dict[str, Any], reason: Reason, message: str) -> None:
    part["error"] = reason.value
    part["message"] = message[:500]
    part["data"] = None


class FetchStage(Stage):
    """Fill ``data`` for every part that has a ``ref``; failures mark the part, never raise.

    HTTP(S) goes to this process's ``Fetcher`` (one asyncio loop, an adaptive number of
    requests in flight per host, at most ``concurrency``); other remote filesystems (s3,
    gcs) through one ``fs.cat`` per batch, which fsspec's async clients run concurrently;
    local files are read directly, never past the size limit.
    """

    name = "fetch"
    reads: ClassVar[tuple[str, ...]] = ("members",)

    def __init__(
        self, *, max_file_bytes: int, concurrency: int = 128, allow_hosts: tuple[str, ...] = ()
    ) -> None:
        super().__init__()
        self.max_file_bytes = max_file_bytes
        self.concurrency = concurrency
        self.allow_hosts = tuple(allow_hosts)
        self.fetcher: Fetcher | None = None

    def setup(self) -> None:
        # Shared by every chunk this process builds: the limits it learned carry over.
        policy = FetchPolicy(
            max_bytes=self.max_file_bytes, ceiling=self.concurrency, allow_hosts=self.allow_hosts
        )
        self.fetcher = shared_fetcher(policy)

    def __call__(self, batch: Batch) -> Batch:
        left = threading.Semaphore(0)
        n = self.submit(batch, lambda _row: left.release())
        for _ in range(n):
            left.acquire()
        return batch

    def submit(self, batch: Batch, ready: Callable[[int], None]) -> int:
        """Fetch every row's members; ``ready(i)`` once row ``i``'s are all in. Returns the rows.

        Local and fsspec members are read before this returns; HTTP members finish later, on
        the fetcher's thread, in any order: callers that need input order restore it.
        """
        self.ensure_setup()
        assert self.fetcher is not None
        remote: dict[str, list[dict[str, Any]]] = defaultdict(list)
        http: list[tuple[int, dict[str, Any]]] = []
        rows = batch["members"]
        for i, parts in enumerate(rows):
            for part in parts or ():
                ref = part.get("ref")
                if not ref or part.get("data") is not None or part.get("error"):
                    continue
                scheme = scheme_of(ref) if is_remote(ref) else "file"
                if scheme in ("http", "https"):
                    http.append((i, part))
                elif scheme == "file":
                    self._read_local(part)
                else:
                    remote[scheme].append(part)
        for group in remote.values():
            self._read_remote(group)
        pending = [0] * len(rows)
        for i, _ in http:
            pending[i] += 1
        lock = threading.Lock()

        def landed(i: int, part: dict[str, Any], res: Any) -> None:
            self._settle(part, res)
            with lock:
                pending[i] -= 1
                last = pending[i] == 0
            if last:
                ready(i)

        for i, parts in enumerate(rows):
            self._check_size(parts)  # fsspec reads; HTTP members have no data yet
            if not pending[i]:
                ready(i)
        for i, part in http:
            self.fetcher.submit(part["ref"], functools.partial(landed, i, part))
        return len(rows)

    def _settle(self, part: dict[str, Any], res: Any) -> None:
        if isinstance(res, bytes):
            part["data"] = res
            self._check_size([part])
        elif isinstance(res, TooLargeError):
            _fail(part, Reason.TOO_LARGE, f"{part['ref']}: {res} > max_file_bytes")
        elif isinstance(res, BlockedAddressError):
            _fail(part, Reason.BLOCKED_ADDRESS, f"{part['ref']}: {res}")
        elif isinstance(res, FileNotFoundError):
            _fail(part, Reason.MISSING, f"{part['ref']}: not found ({res})")
        else:
            _fail(part, Reason.FETCH_ERROR, f"{part['ref']}: {res}")

    def _check_size(self, parts: list[dict[str, Any]] | None) -> None:
        for part in parts or ():
            if part.get("data") is not None and len(part["data"]) > self.max_file_bytes:
                size = len(part["data"])
                _fail(part, Reason.TOO_LARGE, f"{part['ref']}: {size} bytes > max_file_bytes")

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
