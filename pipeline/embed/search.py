"""`mmpipe search` and `mmpipe index`: encode a query with the run's model, then exact top-k over
the latest version's Parquet (streamed) or an HNSW index (usearch) built for that version."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.build.browse import samples
from pipeline.embed.model import resolve_model
from pipeline.embed.store import data_files, read_latest, read_manifest, version_dir
from pipeline.errors import Reject, UserError
from pipeline.fusion.artifact import RunArtifact
from pipeline.io.fs import exists, get_fs, is_remote, join, read_bytes, write_bytes_atomic
from pipeline.io.parquet import fsl_to_numpy, iter_tables
from pipeline.io.shards import build_marker

COLUMNS = ("fused", "image", "text", "audio")


def encode_query(
    ref: RunArtifact,
    text: str | None = None,
    image: bytes | None = None,
    audio: bytes | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The query through the same preprocessing, encoders and model as the bulk embeddings."""
    from pipeline.embed.stages import EmbedStage
    from pipeline.features.stages import FeaturePreprocess

    given = {"image": image, "text": text, "audio": audio}
    missing = [m for m, v in given.items() if v is not None and m not in ref.modalities]
    flags = ", ".join(f"--{m}" for m in ref.modalities)
    if missing:
        raise UserError(f"the model has no {missing[0]} encoder; give a query with {flags}")
    if all(v is None for v in given.values()):
        raise UserError(f"give a query with {flags}")
    fcfg = ref.features_config(shards="-", output="-", batch_size=1, device="cpu", amp="off")
    preset = ref.image_preset
    obj = lambda v: np.array([v], dtype=object)  # noqa: E731
    batch = {
        "key": obj("query"),
        "shard": obj("query"),
        "image": obj(image),
        "text": obj(text),
        "audio": obj(audio),
        "meta": obj(None),
    }
    batch = FeaturePreprocess(fcfg, preset)(batch)
    if batch["error"][0]:
        failed = Reject.from_json(batch["error"][0])
        raise UserError(f"the query failed {failed.stage}: {failed.message}")
    out = EmbedStage(fcfg, ref)(batch)
    embs = {
        m: np.asarray(out[f"{m}_emb"][0], np.float32)
        for m in ref.modalities
        if given[m] is not None
    }
    return np.asarray(out["fused_emb"][0], np.float32), embs


def query_vector(fused: np.ndarray, embs: dict[str, np.ndarray]) -> np.ndarray:
    """One modality: its own embedding; several: the model's fusion of them."""
    return next(iter(embs.values())) if len(embs) == 1 else fused


def _blocks(
    files: list[str], column: str, rows: int = 65536
) -> Iterator[tuple[list[str], np.ndarray]]:
    """(keys, [N, dim] float32) of the rows whose ``column`` is present, block by block."""
    for table in iter_tables(files, ["key", f"{column}_emb"], rows):
        col = table.column(f"{column}_emb")
        x, valid = fsl_to_numpy(col, col.type.list_size)
        keys = table.column("key").to_pylist()
        yield [k for k, v in zip(keys, valid) if v], x[valid]


def exact_topk(files: list[str], column: str, q: np.ndarray, k: int) -> list[tuple[str, float]]:
    """Inner product (= cosine: both sides are L2-normalised) over every row, streamed in
    blocks; memory stays at one block plus k."""
    best_keys: list[str] = []
    best = np.empty(0, np.float32)
    for keys, x in _blocks(files, column):
        if not keys:
            continue
        scores = np.concatenate([best, x @ q])
        pool = best_keys + keys
        top = np.argsort(-scores, kind="stable")[:k]
        best, best_keys = scores[top], [pool[i] for i in top]
    return list(zip(best_keys, best.tolist()))


def index_dir(out: str, version: str) -> str:
    return join(out, "index", version)


def build_index(out: str, columns: list[str] | None = None, dtype: str = "f16") -> dict[str, Any]:
    """An HNSW index per embedding column of the latest version, in OUT/index/<version>/."""
    from usearch.index import Index

    version = read_latest(out)
    if version is None:
        raise UserError(f"{out} holds no embeddings version; run mmpipe embed first")
    manifest = read_manifest(out, version)
    files = data_files(out, version)
    names = _names(files)  # one schema read, not one per column
    present = ["fused"] + [c for c in COLUMNS if c != "fused" and f"{c}_emb" in names]
    missing = [c for c in columns or [] if c not in present]
    if missing:
        raise UserError(
            f"{out} {version} has no {missing[0]!r} embeddings; its columns are {present}"
        )
    done = {}
    for column in columns or COLUMNS:
        if column in present:
            index = Index(ndim=int(manifest["dim"]), metric="ip", dtype=dtype)
            keys: list[str] = []
            for block_keys, x in _blocks(files, column):
                index.add(np.arange(len(keys), len(keys) + len(block_keys), dtype=np.uint64), x)
                keys += block_keys
            with tempfile.TemporaryDirectory() as tmp:
                local = os.path.join(tmp, "i.usearch")
                index.save(local)
                with open(local, "rb") as f:
                    write_bytes_atomic(join(index_dir(out, version), f"{column}.usearch"), f.read())
            import pyarrow.parquet as pq

            sink = pa.BufferOutputStream()
            pq.write_table(pa.table({"key": keys}), sink)
            write_bytes_atomic(
                join(index_dir(out, version), f"{column}.keys.parquet"),
                sink.getvalue().to_pybytes(),
            )
            done[column] = len(keys)
    write_bytes_atomic(
        join(index_dir(out, version), "index.json"),
        json.dumps(
            {
                "version": version,
                "columns": done,
                "dtype": dtype,
                "metric": "ip",
                "library": "usearch",
            }
        ).encode(),
    )
    return {"version": version, "columns": done}


def _names(files: list[str]) -> list[str]:
    import pyarrow.parquet as pq

    if not files:
        return []
    fs, path = get_fs(files[0])
    with fs.open(path, "rb") as f:
        return list(pq.ParquetFile(f).schema_arrow.names)


def ann_topk(
    out: str, version: str, column: str, q: np.ndarray, k: int
) -> list[tuple[str, float]] | None:
    """Top-k from the version's index, or None when no index was built for it."""
    base = index_dir(out, version)
    url = join(base, f"{column}.usearch")
    if not exists(url):
        return None
    import pyarrow.parquet as pq
    from usearch.index import Index

    if is_remote(url):
        with tempfile.NamedTemporaryFile(suffix=".usearch", delete=False) as tmp:
            tmp.write(read_bytes(url))  # a local copy to map; object stores cannot be mmapped
        path = tmp.name
    else:
        path = get_fs(url)[1]
    index = Index.restore(path, view=True)  # memory-mapped: the index may exceed RAM
    if index is None:
        raise UserError(f"{url} is not a usearch index; rebuild it with mmpipe index")
    keys = pq.read_table(pa.BufferReader(read_bytes(join(base, f"{column}.keys.parquet")))).column(
        "key"
    )
    matches = index.search(q.astype(np.float32), min(k, len(index)))
    return [(keys[int(i)].as_py(), 1.0 - float(d)) for i, d in zip(matches.keys, matches.distances)]


def search(
    out: str,
    *,
    model: str | None = None,
    text: str | None = None,
    image: str | None = None,
    audio: str | None = None,
    k: int = 10,
    column: str = "fused",
    exact: bool = False,
) -> dict[str, Any]:
    """Top-k keys for a query, across one embedding column or all of them."""
    for flag, p in (("--image", image), ("--audio", audio)):
        if p and not exists(p):
            raise UserError(f"{flag} {p}: no such file; check the path")
    version = read_latest(out)
    if version is None:
        raise UserError(f"{out} holds no embeddings version; run mmpipe embed first")
    manifest = read_manifest(out, version)
    ref = resolve_model(model) if model else _model_of(out, version)
    # The run's TorchScript export is the same model as the run that embedded the store.
    if manifest["model_version"] not in (ref.version, ref.run_version):
        raise UserError(
            f"model {ref.version} differs from the one that embedded {version} "
            f"({manifest['model_version']}); pass the same --model"
        )
    blobs = {
        name: (read_bytes(p) if p else None) for name, p in (("image", image), ("audio", audio))
    }
    fused, embs = encode_query(ref, text=text, image=blobs["image"], audio=blobs["audio"])
    q = query_vector(fused, embs)
    files = data_files(out, version)
    columns = (
        [c for c in COLUMNS if c == "fused" or c in ref.modalities] if column == "all" else [column]
    )
    best: dict[str, tuple[float, str]] = {}
    used = "exact"
    for c in columns:
        hits = None if exact else ann_topk(out, version, c, q, k)
        if hits is None:
            hits = exact_topk(files, c, q, k)
        else:
            used = "index"
        for key, score in hits:
            if key not in best or score > best[key][0]:
                best[key] = (score, c)
    ranked = sorted(best.items(), key=lambda kv: -kv[1][0])[:k]
    meta = _hit_meta(files, {key for key, _ in ranked})
    found = _hit_samples(out, version, {key for key, _ in ranked})
    return {
        "version": version,
        "method": used,
        "hits": [
            {
                "key": key,
                "score": round(s, 6),
                "column": c,
                "meta": meta.get(key, {}),
                **found.get(key, {}),  # source, caption, label
            }
            for key, (s, c) in ranked
        ],
    }


def _hit_samples(out: str, version: str, keys: set[str]) -> dict[str, dict[str, Any]]:
    """Source, caption and label of the hits, from the build the version was embedded from
    (none when it was embedded from loose tars)."""
    url = join(version_dir(out, version), "config.json")
    build = json.loads(read_bytes(url)).get("shards") if exists(url) else None
    return samples(build, keys) if build and build_marker(build) else {}


def _hit_meta(files: list[str], keys: set[str]) -> dict[str, dict[str, Any]]:
    """The metadata columns (those after ``created_at``) of the hits, for display."""
    import pyarrow.compute as pc

    names = _names(files)
    fields = names[names.index("created_at") + 1 :] if "created_at" in names else []
    if not fields or not keys:
        return {}
    out: dict[str, dict[str, Any]] = {}
    wanted = pa.array(sorted(keys), pa.string())
    for table in iter_tables(files, ["key", *fields]):
        for row in table.filter(pc.is_in(table.column("key"), wanted)).to_pylist():
            out[row.pop("key")] = row
    return out


def _model_of(out: str, version: str) -> RunArtifact:
    """The model that embedded the version, from the path its manifest records."""
    path = read_manifest(out, version)["model_path"]
    if not exists(path):
        raise UserError(f"the model that embedded {version} ({path}) is gone; pass --model")
    return resolve_model(path)
