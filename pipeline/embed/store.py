"""The versioned embeddings store: versions/vNNNNNN with manifest and _SUCCESS, latest, ledger.

Layout of OUT::

    latest                     "v000003": the one pointer readers follow (moved atomically)
    versions/v000003/data/     one Parquet file per shard, and nothing else: a folder every
                               Parquet reader takes as it stands (v000003/ itself also holds
                               rejects/, manifest.json, config.json and _SUCCESS)
    ledger/<time>-<run>.json   one record per run that wrote a version
    _staging/<target>/         parts of an unfinished run; a rerun of the same target resumes

A version directory is complete only once ``_SUCCESS`` exists (written after the manifest),
and ``latest`` moves only after that, so a reader following ``latest`` never sees a partial one.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pipeline.io.fs import exists, get_fs, join, read_bytes, remove_tree, write_bytes_atomic
from schemas.embeddings import LEDGER_SCHEMA, MANIFEST_SCHEMA, check_record

_VERSION_RE = re.compile(r"^v(\d{6,})$")


def version_name(n: int) -> str:
    return f"v{n:06d}"


def version_dir(out: str, version: str) -> str:
    return join(out, "versions", version)


# Where a version's data files go, relative to its folder. Versions written before it held
# them at the top: the manifest records each file's path, so both layouts read the same.
DATA_DIR = "data"


def data_path(stem: str) -> str:
    return f"{DATA_DIR}/{stem}.parquet"


def list_versions(out: str) -> tuple[list[str], list[str]]:
    """(complete, incomplete) version names, oldest first."""
    root = join(out, "versions")
    if not exists(root):
        return [], []
    fs, path = get_fs(root)
    names = sorted(
        p.rstrip("/").rsplit("/", 1)[-1]
        for p in fs.ls(path, detail=False)
        if _VERSION_RE.match(p.rstrip("/").rsplit("/", 1)[-1])
    )
    done = [n for n in names if exists(join(root, n, "_SUCCESS"))]
    return done, [n for n in names if n not in done]


def read_latest(out: str) -> str | None:
    url = join(out, "latest")
    if not exists(url):
        return None
    name = read_bytes(url).decode().strip()
    return name if _VERSION_RE.match(name) else None


def set_latest(out: str, version: str) -> None:
    # One small object replaced whole: a local rename, or a single PUT on object stores.
    write_bytes_atomic(join(out, "latest"), f"{version}\n".encode())


def read_manifest(out: str, version: str) -> dict[str, Any]:
    return dict(json.loads(read_bytes(join(version_dir(out, version), "manifest.json"))))


def commit_version(out: str, version: str, manifest: dict[str, Any]) -> None:
    """Write the manifest, then ``_SUCCESS``: from here on the version is complete."""
    check_record(manifest, MANIFEST_SCHEMA)
    vdir = version_dir(out, version)
    write_bytes_atomic(join(vdir, "manifest.json"), json.dumps(manifest, indent=1).encode())
    write_bytes_atomic(join(vdir, "_SUCCESS"), b"")


def recover(out: str) -> str | None:
    """Make the store consistent after an interrupted run; return the version to build on.

    A run killed after its ``_SUCCESS`` but before moving ``latest`` left a complete version:
    it is published now. Incomplete version directories are never published and are removed.
    One writer per store at a time is assumed (the nightly job), as with any commit protocol
    that has no lock service.
    """
    done, partial = list_versions(out)
    for name in partial:
        remove_tree(version_dir(out, name))
    latest = read_latest(out)
    if done and (latest is None or done[-1] > latest):
        set_latest(out, done[-1])
        latest = done[-1]
    return latest


def next_version(out: str) -> str:
    done, partial = list_versions(out)
    names = done + partial
    return version_name(int(names[-1][1:]) + 1 if names else 1)


def prune(out: str, keep: int) -> list[str]:
    """Delete the oldest complete versions beyond ``keep`` (never the one ``latest`` names)."""
    done, _ = list_versions(out)
    latest = read_latest(out)
    old = [v for v in done[: max(0, len(done) - keep)] if v != latest]
    for name in old:
        remove_tree(version_dir(out, name))
        remove_tree(join(out, "index", name))  # its ANN index, if one was built
    return old


def append_ledger(out: str, record: dict[str, Any]) -> str:
    """One file per run, named by its start time: no read-modify-write of a shared log."""
    check_record(record, LEDGER_SCHEMA)
    stamp = record["started_at"].replace(":", "").replace("-", "")[:15]
    url = join(out, "ledger", f"{stamp}-{record['run_id']}.json")
    write_bytes_atomic(url, (json.dumps(record, sort_keys=True) + "\n").encode())
    return url


def read_ledger(out: str) -> list[dict[str, Any]]:
    root = join(out, "ledger")
    if not exists(root):
        return []
    from pipeline.io.fs import list_files

    return [json.loads(read_bytes(join(root, rel))) for rel in list_files(root)]


def data_files(out: str, version: str | None = None) -> list[str]:
    """The Parquet files of a complete version (``latest`` by default), from its manifest."""
    from pipeline.errors import UserError

    version = version or read_latest(out)
    if version is None:
        raise UserError(f"{out} holds no embeddings version yet; run mmpipe embed or refresh")
    manifest = read_manifest(out, version)
    return [join(version_dir(out, version), f["path"]) for f in manifest["files"] if f["rows"]]
