"""MeasureShard: one task per shard measures every row that the filters and SemDeDup judge."""

from __future__ import annotations

import contextlib
import importlib
import json
import time
from collections import Counter
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from pipeline.curate import metrics
from pipeline.curate.config import CurateConfig
from pipeline.errors import UserError
from pipeline.faults import maybe_fail
from pipeline.io.fs import exists, get_fs, join, read_bytes, write_bytes_atomic
from pipeline.io.parquet import read_table, to_table, write_table
from pipeline.io.shards import IndexSpan, read_shard, shard_index_rows, shard_stem
from pipeline.stage import Batch, Resources, Stage
from schemas import MEASURE_SCHEMA

INDEX_COLUMNS = ["key", "shard", "image_width", "image_height", "audio_duration", "text_length"]
BLOCK_ROWS = 256  # samples read from a tar at a time: memory per task stays bounded


def measure_url(work_dir: str, shard: str, ext: str) -> str:
    return join(work_dir, "measure", f"{shard_stem(shard)}.{ext}")


def vector_files(path: str) -> dict[str, list[str]]:
    """Shard stem -> the Parquet files holding its vectors: a finished features output
    (``parts/<shard>/``) or an embeddings folder (the latest version's files).

    Raises:
        UserError: ``path`` is neither.
    """
    from pipeline.embed.store import read_latest, read_manifest, version_dir
    from pipeline.features.output import has_parts, parts_by_shard

    if has_parts(path):
        return parts_by_shard(path)
    version = read_latest(path) if exists(path) else None
    if version is None:
        raise UserError(
            f"vectors {path} is neither a finished features output (_SUCCESS) nor an "
            "embeddings folder (latest); run mmpipe features or mmpipe embed on the build first"
        )
    files = read_manifest(path, version)["files"]
    base = version_dir(path, version)
    return {shard_stem(f["shard"]): [join(base, f["path"])] for f in files if f["rows"]}


def vector_names(url: str) -> list[str]:
    """The column names of one vectors file (its footer only)."""
    import pyarrow.parquet as pq

    fs, path = get_fs(url)
    with fs.open(path, "rb") as f:
        return list(pq.ParquetFile(f).schema_arrow.names)


def vector_column(cfg: CurateConfig, names: list[str]) -> str | None:
    """The embedding column SemDeDup reads (None when it is off); ``auto`` picks by modality.

    Raises:
        UserError: the configured column is not in the vectors, or none of ``auto``'s is.
    """
    if not cfg.semdedup_on():
        return None
    want = cfg.semdedup.column
    order = ["image_emb", "fused_emb", "text_emb", "audio_emb"] if want == "auto" else [want]
    for name in order:
        if name in names:
            return name
    have = [n for n in names if n.endswith("_emb")]
    raise UserError(
        f"semdedup.column {want!r}: the vectors at {cfg.vectors} hold {have}; name one of them"
    )


def load_predicate(spec: str) -> Any:
    """Import ``module:function``.

    Raises:
        UserError: the module or function cannot be found.
    """
    module, _, name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise UserError(
            f"predicate {spec}: {e}; the module must be importable on every worker "
            "(installed, or on PYTHONPATH)"
        ) from None
    if not callable(fn):
        raise UserError(f"predicate {spec} is not callable")
    return fn


def run_predicate(fn: Any, spec: str, batch: dict[str, list[Any]]) -> tuple[list[bool], list[Any]]:
    """Call the user's predicate on one block; check what it returned.

    Raises:
        UserError: it raised, or returned something other than (keep, reasons) of the block's
        length.
    """
    n = len(batch["key"])
    try:
        got = fn(batch)
    except Exception as e:
        raise UserError(f"predicate {spec} raised {type(e).__name__}: {e}") from None
    keep, reasons = got if isinstance(got, tuple) and len(got) == 2 else (got, [None] * n)
    keep = [bool(k) for k in keep]
    if len(keep) != n or len(reasons) != n:
        raise UserError(
            f"predicate {spec} returned {len(keep)} keep flags for {n} rows; return "
            "(keep, reasons), two lists as long as batch['key']"
        )
    return keep, [None if r is None else str(r) for r in reasons]


class MeasureShard(Stage):
    """Shard names in; each shard's measurements written as ``_work/measure/<shard>.parquet``
    (its summary, with histograms, first as ``.json``); one summary row per shard out."""

    name = "curate_measure"
    reads: ClassVar[tuple[str, ...]] = ("shard", "rank", "groups", "vector_files")
    adds: ClassVar[tuple[str, ...]] = ("shard", "summary")
    passthrough: ClassVar[bool] = False

    def __init__(self, cfg: CurateConfig, work_dir: str, sem_column: str | None) -> None:
        super().__init__()
        self.cfg, self.work_dir, self.sem_column = cfg, work_dir, sem_column

    @property
    def resources(self) -> Resources:
        return Resources(num_cpus=self.cfg.num_cpus)

    def setup(self) -> None:
        self.langid = metrics.LanguageId() if self.cfg.caption.enabled else None
        self.predicate = load_predicate(self.cfg.predicate) if self.cfg.predicate else None

    def __call__(self, batch: Batch) -> Batch:
        t = batch if isinstance(batch, pa.Table) else pa.Table.from_pydict(batch)
        out: dict[str, list[Any]] = {"shard": [], "summary": []}
        for row in t.to_pylist():
            summary = self.measure(
                row["shard"],
                int(row["rank"]),
                json.loads(row["groups"]),
                json.loads(row["vector_files"]),
            )
            out["shard"].append(row["shard"])
            out["summary"].append(json.dumps(summary))
        return out

    def _content(self, shard: str, keys: set[str]) -> dict[str, dict[str, Any]]:
        """Per key: caption counts and language, audio levels, the predicate's verdict."""
        cfg = self.cfg
        wants_audio = cfg.audio.enabled
        found: dict[str, dict[str, Any]] = {}
        url = join(cfg.build, shard)
        for block in read_shard(url, frozenset(), BLOCK_ROWS, 64 << 20):
            cols = block.to_pydict()
            for i, key in enumerate(cols["key"]):
                if key not in keys:
                    continue
                m: dict[str, Any] = {}
                text = cols["text"][i]
                if text is not None and self.langid is not None:
                    m["caption_words"], m["caption_chars"] = metrics.caption_counts(text)
                    if text.strip():
                        m["language"], m["language_score"] = self.langid(text)
                audio = cols["audio"][i]
                if audio is not None and wants_audio:
                    # The build decoded it; a codec gap here is no verdict, not a failure.
                    with contextlib.suppress(Exception):
                        m["silent_fraction"], m["snr_db"] = metrics.audio_levels(audio)
                found[key] = m
            if self.predicate is not None:
                keep, why = run_predicate(self.predicate, cfg.predicate or "", cols)
                for key, k, w in zip(cols["key"], keep, why):
                    found.setdefault(key, {}).update(predicate_keep=k, predicate_reason=w)
        return found

    def _vectors(self, files: list[str], keys: list[str]) -> tuple[np.ndarray, list[Any]]:
        """(image-text cosine per key, NaN where not measured; SemDeDup vector per key)."""
        sims = np.full(len(keys), np.nan, dtype=np.float32)
        vecs: list[Any] = [None] * len(keys)
        if not files:
            return sims, vecs
        pos = {k: i for i, k in enumerate(keys)}
        want_sim = self.cfg.similarity.enabled
        for url in files:
            table = read_table(url)
            names = table.column_names
            if want_sim and not {"image_emb", "text_emb"} <= set(names):
                raise UserError(
                    f"similarity needs image_emb and text_emb in {self.cfg.vectors}; it holds "
                    f"{[n for n in names if n.endswith('_emb')]}"
                )
            at = np.array([pos.get(k, -1) for k in table.column("key").to_pylist()])
            hit = at >= 0
            if want_sim:
                img = _dense(table.column("image_emb"))
                txt = _dense(table.column("text_emb"))
                sims[at[hit]] = metrics.similarity(img[hit], txt[hit])
            if self.sem_column and self.sem_column in names:
                v = metrics.normalise(_dense(table.column(self.sem_column)))
                valid = ~np.asarray(table.column(self.sem_column).is_null(), dtype=bool)
                for j in np.flatnonzero(hit & valid):
                    vecs[at[j]] = v[j].tolist()
        return sims, vecs

    def measure(self, shard: str, rank: int, span: IndexSpan, files: list[str]) -> dict:
        maybe_fail("curate_measure")
        start, cpu = time.perf_counter(), time.process_time()
        idx = shard_index_rows(span, shard, INDEX_COLUMNS)
        keys = idx.column("key").to_pylist()
        needs_tar = self.cfg.caption.enabled or self.cfg.audio.enabled or self.predicate
        content = self._content(shard, set(keys)) if needs_tar and keys else {}
        sims, vecs = self._vectors(files, keys)
        cols = idx.to_pydict()
        rows = []
        for i, key in enumerate(keys):
            m = content.get(key, {})
            sim = float(sims[i])
            rows.append(
                {
                    "key": key,
                    "shard": shard,
                    "order": (rank << 32) | i,
                    "image_width": cols["image_width"][i],
                    "image_height": cols["image_height"][i],
                    "audio_duration": cols["audio_duration"][i],
                    "similarity": None if np.isnan(sim) else sim,
                    "vector": vecs[i],
                    **m,
                }
            )
        table = to_table(
            [{f.name: r.get(f.name) for f in MEASURE_SCHEMA} for r in rows], MEASURE_SCHEMA
        )
        summary = summarise(table)
        summary.update(
            shard=shard, seconds=time.perf_counter() - start, cpu_s=time.process_time() - cpu
        )
        # The summary first, the table last: the table marks the shard measured (resume).
        write_bytes_atomic(measure_url(self.work_dir, shard, "json"), json.dumps(summary).encode())
        write_table(measure_url(self.work_dir, shard, "parquet"), table, MEASURE_SCHEMA, "measure")
        return summary


def _dense(col: Any) -> np.ndarray:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if isinstance(arr.type, pa.FixedSizeListType):
        from pipeline.io.parquet import fsl_to_numpy

        return fsl_to_numpy(arr, arr.type.list_size)[0]
    rows = arr.to_pylist()
    dim = max((len(r) for r in rows if r is not None), default=0)
    return np.array([r if r is not None else [0.0] * dim for r in rows], dtype=np.float32)


def summarise(t: pa.Table) -> dict[str, Any]:
    """A shard's counts and histograms: what the report draws and top-fraction cuts use."""

    def col(name: str) -> np.ndarray:
        return np.array(t.column(name).to_pylist(), dtype=np.float64)

    w, h = col("image_width"), col("image_height")
    with np.errstate(invalid="ignore", divide="ignore"):
        short, ratio = np.fmin(w, h), np.fmax(w, h) / np.fmin(w, h)
    langs = Counter(x for x in t.column("language").to_pylist() if x)
    hists = {
        "image_min_side": short,
        "aspect_ratio": ratio,
        "caption_words": col("caption_words"),
        "similarity": col("similarity"),
        "audio_duration": col("audio_duration"),
        "silent_fraction": col("silent_fraction"),
        "snr_db": col("snr_db"),
    }
    out: dict[str, Any] = {f"hist_{k}": metrics.histogram(k, v) for k, v in hists.items()}
    out.update(
        rows=t.num_rows,
        with_vector=int(t.num_rows - t.column("vector").null_count),
        languages=dict(langs),
    )
    return out


def read_summary(work_dir: str, shard: str) -> dict[str, Any] | None:
    """A measured shard's summary, or None when the shard was not measured to the end."""
    if not exists(measure_url(work_dir, shard, "parquet")):
        return None
    return dict(json.loads(read_bytes(measure_url(work_dir, shard, "json"))))
