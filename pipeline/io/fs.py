"""fsspec helpers: URL resolution, listings, brace patterns and atomic writes on any filesystem."""

from __future__ import annotations

import contextlib
import itertools
import os
import posixpath
import re
import shutil
import uuid
from collections.abc import Iterator
from typing import IO, Any

import fsspec
from fsspec.core import url_to_fs

from pipeline.errors import UserError

# Schemes a reference inside a manifest may use. Anything else (ftp, data:, javascript:)
# is refused per row rather than handed to whatever fsspec happens to have installed.
REMOTE_SCHEMES = {"s3", "s3a", "gs", "gcs", "http", "https", "az", "abfs", "memory"}
LOCAL_SCHEMES = {"file", "local"}
_SCHEME_RE = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
_BRACE_RE = re.compile(r"\{([^{}]*)\}")


def scheme_of(url: str) -> str:
    """``'s3'`` for ``s3://b/k``; ``''`` for a plain local path."""
    m = _SCHEME_RE.match(url)
    return m.group(1).lower() if m else ""


def is_remote(url: str) -> bool:
    return scheme_of(url) not in ("", *LOCAL_SCHEMES)


def absolute(url: str) -> str:
    """A local path made absolute (URLs unchanged): workers on other nodes, and a driver whose
    working directory is replaced, must not resolve it against their own cwd."""
    if is_remote(url) or not url:
        return url
    return os.path.abspath(url.removeprefix("file://"))


def get_fs(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return the filesystem and the path within it, with bounded timeouts for HTTP."""
    kwargs: dict[str, Any] = {}
    if scheme_of(url) in ("http", "https"):
        import aiohttp

        # No single URL may hang a worker: connect and total read are both bounded.
        kwargs["client_kwargs"] = {"timeout": aiohttp.ClientTimeout(total=60, sock_connect=10)}
    elif scheme_of(url) in ("s3", "s3a"):
        # Bounded retries with exponential backoff and jitter (botocore "standard" mode) and
        # bounded waits: a throttling or flaky store is retried, a dead one fails in minutes,
        # not hours. MMPIPE_S3_MAX_ATTEMPTS tunes the bound.
        attempts = int(os.environ.get("MMPIPE_S3_MAX_ATTEMPTS", "5"))
        kwargs["config_kwargs"] = {
            "retries": {"max_attempts": attempts, "mode": "standard"},
            "connect_timeout": 10,
            "read_timeout": 60,
        }
    return url_to_fs(url, **kwargs)


def join(base: str, *parts: str) -> str:
    """Join URL or path components with '/' (fsspec paths are always posix)."""
    if scheme_of(base):
        return posixpath.join(base, *parts)
    return os.path.join(base, *parts)


def dirname(url: str) -> str:
    if scheme_of(url):
        proto, rest = url.split("://", 1)
        return f"{proto}://{posixpath.dirname(rest)}"
    return os.path.dirname(os.path.abspath(url))


def unstrip(fs: fsspec.AbstractFileSystem, path: str, like: str) -> str:
    """Give a bare fs path back the scheme of ``like`` so that workers can reopen it."""
    proto = scheme_of(like)
    if not proto or proto in LOCAL_SCHEMES:
        return path
    return fs.unstrip_protocol(path)


def expand_braces(pattern: str) -> list[str]:
    """Expand ``{000..012}`` ranges (zero-padded) and ``{a,b}`` lists, as webdataset does."""
    m = _BRACE_RE.search(pattern)
    if not m:
        return [pattern]
    body = m.group(1)
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = rng.group(1), rng.group(2)
        width = len(lo) if lo.startswith("0") else 0
        options = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    else:
        options = body.split(",")
    head, tail = pattern[: m.start()], pattern[m.end() :]
    return list(itertools.chain.from_iterable(expand_braces(head + o + tail) for o in options))


def expand_inputs(pattern: str) -> list[str]:
    """Brace-expand, then glob each piece; return URLs in a stable, sorted order."""
    out: list[str] = []
    for piece in expand_braces(pattern):
        fs, path = get_fs(piece)
        if any(c in path for c in "*?["):
            out.extend(unstrip(fs, p, piece) for p in sorted(fs.glob(path)))
        else:
            out.append(piece)
    return out


def list_files(url: str) -> list[str]:
    """Every file under ``url``, relative to it, sorted. One recursive listing, no per-file stat."""
    fs, root = get_fs(url)
    root = root.rstrip("/")
    rels = []
    for p in fs.find(root, detail=False):
        rel = p[len(root) :].lstrip("/")
        if rel and not any(part.startswith(".") for part in rel.split("/")):
            rels.append(rel)
    return sorted(rels)


@contextlib.contextmanager
def atomic_open(url: str, mode: str = "wb", *, durable: bool = True) -> Iterator[IO[Any]]:
    """Open ``url`` for writing so that it appears under its name complete or not at all.

    Local files go to a temp name in the same directory and are renamed (atomic on POSIX);
    ``durable`` also syncs them to disk first, which files a rerun derives again (finalize's
    parts under ``_work``) do without: ~1 ms a file.
    Object stores publish an object only when its upload completes; we open with
    ``autocommit=False`` where supported so that a failed write is discarded, not committed.
    """
    fs, path = get_fs(url)
    if not is_remote(url):
        os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
        tmp = os.path.join(
            os.path.dirname(os.path.abspath(path)),
            f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:8]}",
        )
        try:
            # A 1 MiB buffer: a text build writes ~1 KiB members, and the default 8 KiB
            # buffer made a syscall of every eighth (11 us a write, profiled).
            with open(tmp, mode, buffering=1 << 20) as f:
                yield f
                f.flush()
                if durable:
                    os.fsync(f.fileno())
            # Files we write are read by others but never executable or world-writable.
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return
    remote: Any = None
    with contextlib.suppress(TypeError, NotImplementedError):
        remote = fs.open(path, mode, autocommit=False)
    if remote is None:
        with fs.open(path, mode) as f2:
            yield f2
        return
    try:
        yield remote
    except BaseException:
        with contextlib.suppress(Exception):
            remote.discard()
        raise
    remote.close()
    remote.commit()


def write_bytes_atomic(url: str, data: bytes) -> None:
    with atomic_open(url, "wb") as f:
        f.write(data)


def read_bytes(url: str) -> bytes:
    fs, path = get_fs(url)
    with fs.open(path, "rb") as f:
        return bytes(f.read())


def exists(url: str) -> bool:
    fs, path = get_fs(url)
    return bool(fs.exists(path))


def is_dir(url: str) -> bool:
    fs, path = get_fs(url)
    return bool(fs.isdir(path))


def _gone_is_fine(func: Any, path: str, exc: Any) -> None:
    if not isinstance(exc[1], FileNotFoundError):
        raise exc[1]


def remove_tree(url: str) -> None:
    fs, path = get_fs(url)
    if not is_remote(url):
        # Not fsspec's local rm: it calls os.getcwd(), which fails once a job's working
        # directory is gone, even for an absolute path.
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, onerror=_gone_is_fine)
            else:
                os.remove(path)
        except FileNotFoundError:  # a retry, or another process, removed it first
            pass
        return
    if fs.exists(path):
        fs.rm(path, recursive=True)


def check_output(url: str, flag: str = "--output") -> None:
    """Refuse an output that is a file, or sits under one, before any work starts.

    Raises:
        UserError: naming the flag, the path and the fix.
    """
    if is_remote(url):
        return
    path = os.path.abspath(get_fs(url)[1])
    probe = path
    while probe and not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if os.path.exists(probe) and not os.path.isdir(probe):
        where = "is a file" if probe == path else f"is under the file {probe}"
        raise UserError(f"{flag} {url} {where}; give a folder path")
    if os.path.isdir(probe) and not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {url}: {probe} is not writable; choose a writable folder")


def move(src: str, dst: str) -> None:
    """Rename on one filesystem: atomic locally, a server-side copy then delete on object stores."""
    fs, s = get_fs(src)
    _, d = get_fs(dst)
    if not is_remote(src):
        os.makedirs(os.path.dirname(os.path.abspath(d)), exist_ok=True)
        os.replace(s, d)
    else:
        fs.mv(s, d)


def makedirs(url: str) -> None:
    fs, path = get_fs(url)
    if not is_remote(url):
        os.makedirs(path, exist_ok=True)
    else:
        with contextlib.suppress(Exception):
            fs.makedirs(path, exist_ok=True)
