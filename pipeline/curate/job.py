"""The curate job: measure every shard, resolve thresholds, SemDeDup, place shards, merge,
report, and curate.json last. Each step resumes from what an interrupted run committed."""

from __future__ import annotations

import json
import sys
import time
from functools import reduce
from typing import Any

import numpy as np

from pipeline.build.card import CARD, write_card
from pipeline.build.finalize import SHARD_DIR, TABLES, publish
from pipeline.curate import metrics
from pipeline.curate.config import CurateConfig
from pipeline.curate.measure import (
    MeasureShard,
    load_predicate,
    read_summary,
    vector_column,
    vector_files,
    vector_names,
)
from pipeline.curate.place import PlaceShard, merge, read_placed
from pipeline.errors import UserError
from pipeline.faults import maybe_fail
from pipeline.io.fs import (
    absolute,
    check_output,
    exists,
    join,
    list_files,
    read_bytes,
    remove_tree,
    write_bytes_atomic,
)
from pipeline.io.parquet import iter_tables
from pipeline.io.shards import (
    LEGACY_INDEX,
    IndexSpan,
    build_marker,
    empty_build_line,
    index_files,
    index_span,
    shard_stem,
)
from pipeline.lifecycle import Output
from pipeline.progress import Progress
from schemas import CURATE_SCHEMA_VERSION


def input_shards(build: str) -> list[tuple[str, IndexSpan]]:
    """(shard, where its index rows are) of every shard of a finished build, in shard order.

    Raises:
        UserError: ``build`` is not a finished build (or curated build).
    """
    if not build_marker(build):
        raise UserError(
            f"{build} is not a finished build (no build.json or curate.json); give the "
            "--output folder of mmpipe build or mmpipe curate"
        )
    url = join(build, "shards.parquet")
    if not exists(url) or not index_files(build):
        raise UserError(f"{build} has no shards.parquet or index; rebuild it")
    cols = ["shard", "index_file", "index_row_groups"]
    rows = [r for t in iter_tables([url], cols) for r in t.to_pylist()]
    return sorted((r["shard"], index_span(build, r)) for r in rows)


OWNED = ("curate.json", *TABLES, LEGACY_INDEX, SHARD_DIR, CARD, "report.html", "_work")


def curate_output(cfg: CurateConfig) -> Output:
    """The curated build's folder under the one lifecycle (pipeline/lifecycle.py).

    Raises:
        UserError: the output is the build itself, or holds shards no curate run claims.
    """
    if cfg.output.rstrip("/") == cfg.build.rstrip("/"):
        raise UserError("--output must differ from BUILD: curate writes a new build")
    return Output(
        "curate",
        cfg.output,
        cfg.fingerprint(),
        marker="curate.json",
        started="_work/config.json",
        owned=OWNED,
        what="curate",
        unit=("shard step", "shard steps"),
    )


def _work_done(out: str) -> int:
    """Files an unfinished curate committed in its _work/ (the claim aside)."""
    work = join(out, "_work")
    return sum(1 for f in list_files(work) if f != "config.json") if exists(work) else 0


def _each(rows: list[dict[str, Any]], stage: Any) -> int:
    """Run a per-shard stage over ``rows`` as Ray tasks; how many shards it did. Each task
    commits its shard's files, which are what the driver reads next (one at a time), so the
    driver may die after any result (the reliability tests' ``curate_driver``) and a rerun
    resumes from them."""
    import ray.data

    from pipeline.runner import map_stages, stream

    if not rows:
        return 0
    ds = ray.data.from_items(rows, override_num_blocks=min(len(rows), 1024))
    done = 0
    for t in stream(map_stages(ds, [stage], columns=list(rows[0]))):
        maybe_fail("curate_driver")
        done += t.num_rows
    return done


def resolve_threshold(cfg: CurateConfig, total: dict[str, Any]) -> float | None:
    """The similarity threshold: as configured, or the one that keeps the top fraction."""
    cut = cfg.similarity_cut()
    if cut is None:
        return None
    if cut[0] == "threshold":
        return cut[1]
    return metrics.top_fraction_threshold(total.get("hist_similarity") or [], cut[1])


def run_semdedup(cfg: CurateConfig, work: str, shards: list[str], threshold: float | None) -> dict:
    """SemDeDup over the rows every filter keeps; duplicates written per shard."""
    import ray.data

    from pipeline.curate import semdedup as sd
    from pipeline.runner import map_groups, map_stages, stream

    done = join(work, "semdup", "_SUCCESS")
    info_url = join(work, "semdup", "info.json")
    if exists(done):
        return dict(json.loads(read_bytes(info_url)))
    src = ray.data.from_items(
        [{"shard": s} for s in shards], override_num_blocks=min(len(shards), 1024)
    )
    surv = map_stages(src, [sd.Survivors(cfg, work, threshold)], columns=["shard"]).materialize()
    n = surv.count()
    info: dict[str, Any] = {"rows": n, "clusters": 0, "duplicates": 0}
    if n:
        s = cfg.semdedup
        sampled = map_stages(
            surv, [sd.Sampled(s.seed, 1.2 * s.sample_rows / n)], columns=list(sd.KEPT)
        )
        got = [
            pair
            for t in stream(sampled)
            for pair in zip(t.column("order").to_pylist(), t.column("vector").to_pylist())
        ]
        got.sort(key=lambda p: p[0])
        sample = np.asarray([v for _, v in got[: s.sample_rows]], dtype=np.float32)
        centroids = sd.fit_centroids(sample, sd.cluster_count(cfg, n), s.seed)
        assigned = map_stages(surv, [sd.Assign(centroids, cfg.num_cpus)], columns=list(sd.KEPT))
        cols = [*sd.KEPT, "cluster", "centroid_sim"]
        dups = map_groups(
            assigned,
            "cluster",
            sd.ClusterDedup(s.eps, s.keep),
            columns=cols,
            partitions=min(len(centroids), 64),
        ).materialize()
        found = dups.count()
        if found:
            written = map_groups(
                dups,
                "shard",
                sd.WriteDups(work),
                columns=list(sd.SEMDUP_SCHEMA.names),
                partitions=min(len(shards), 64),
            )
            assert sum(sum(t.column("rows").to_pylist()) for t in stream(written)) == found
        info.update(clusters=len(centroids), duplicates=found, sample=len(sample))
    write_bytes_atomic(info_url, json.dumps(info).encode())
    sd.mark_done(work, info["duplicates"])
    return info


def run_curate(
    cfg: CurateConfig, *, address: str | None = None, overwrite: bool = False, quiet: bool = False
) -> dict[str, Any]:
    """Curate ``cfg.build`` into ``cfg.output``; returns curate.json's content."""
    from pipeline import __version__
    from pipeline.curate.report import write_report
    from pipeline.runner import run_remote
    from pipeline.session import ray_session

    cfg = cfg.model_copy(update={"build": absolute(cfg.build), "output": absolute(cfg.output)})
    shards = input_shards(cfg.build)
    vec = vector_files(cfg.vectors) if cfg.vectors else {}
    names = vector_names(next(iter(vec.values()))[0]) if vec else []
    sem_column = vector_column(cfg, names)
    if cfg.similarity.enabled and not {"image_emb", "text_emb"} <= set(names):
        raise UserError(
            f"similarity needs image_emb and text_emb in {cfg.vectors}; it holds "
            f"{[n for n in names if n.endswith('_emb')]}: embed the build with a paired model"
        )
    if cfg.predicate:  # a typo is one line here, before any work; workers import it again
        load_predicate(cfg.predicate)
    output = curate_output(cfg)
    check_output(cfg.output)
    reused = output.finished(overwrite)
    if reused is not None:
        print(
            f"curate: {cfg.output} is up to date ({reused['counts']['written']} kept)",
            file=sys.stderr,
        )
        return reused
    if (
        not overwrite
        and not exists(join(cfg.output, "_work"))
        and exists(join(cfg.output, "shards"))
    ):
        raise UserError(f"{cfg.output} is not empty; pass --overwrite or choose another folder")
    progress = Progress("curate", quiet=quiet)
    output.claim(
        cfg.model_dump(),
        overwrite=overwrite,
        work_done=lambda: _work_done(cfg.output),
        say=progress.say,
    )
    work, t0, timings = join(cfg.output, "_work"), time.time(), {}
    groups = {s: g for s, g in shards}
    names_only = [s for s, _ in shards]
    progress.phase("starting Ray")
    with progress, ray_session(address, quiet=quiet, job="curate"):
        todo = [s for s in names_only if read_summary(work, s) is None]
        progress.phase(f"measuring {len(todo)} of {len(shards)} shards")
        rank = {s: i for i, s in enumerate(names_only)}
        rows = [
            {
                "shard": s,
                "rank": rank[s],
                "groups": json.dumps(groups[s]),
                "vector_files": json.dumps(vec.get(shard_stem(s), [])),
            }
            for s in todo
        ]
        _each(rows, MeasureShard(cfg, work, sem_column))
        # One shard's summary at a time: the driver holds the sums, never a list of them.
        total: dict[str, Any] = reduce(
            metrics.add_counts, (read_summary(work, s) or {} for s in names_only), {}
        )
        threshold = resolve_threshold(cfg, total)
        timings["measure"] = time.time() - t0
        sem: dict[str, Any] = {}
        if sem_column:
            progress.phase(f"semantic dedup over {sem_column}")
            sem = run_semdedup(cfg, work, names_only, threshold)
            sem["column"] = sem_column
        timings["semdedup"] = time.time() - t0 - timings["measure"]
        todo = [s for s in names_only if read_placed(work, s) is None]
        progress.phase(f"placing {len(todo)} shards")
        _each(
            [{"shard": s, "groups": json.dumps(groups[s])} for s in todo],
            PlaceShard(cfg, work, cfg.output, threshold),
        )
        progress.phase("merging the index and rejects")
        counts = run_remote(merge, cfg.build, work, names_only)
    input_rows = int(total.get("rows", 0))
    if counts["written"] + counts["rejected"] != input_rows:
        raise RuntimeError(f"curate lost rows: {input_rows} in, {counts} out")
    publish(work, cfg.output)
    timings["total"] = time.time() - t0
    # The tasks' own seconds, summed: the work, without Ray's start-up and scheduling.
    timings["measure_task_s"] = float(total.get("seconds", 0.0))
    timings["measure_cpu_s"] = float(total.get("cpu_s", 0.0))
    timings["place_task_s"] = counts.pop("place_task_s")
    thresholds = {
        "image": cfg.image.model_dump(),
        "caption": cfg.caption.model_dump(),
        "similarity": {**cfg.similarity.model_dump(), "resolved_threshold": threshold},
        "audio": cfg.audio.model_dump(),
        "predicate": cfg.predicate,
        "semdedup": {**cfg.semdedup.model_dump(), **sem, "enabled": bool(sem_column)},
    }
    report = {
        "schema_version": CURATE_SCHEMA_VERSION,
        "mmpipe_version": __version__,
        "build": cfg.build,
        "vectors": cfg.vectors,
        "config_fingerprint": cfg.fingerprint(),
        "counts": {
            "input_rows": input_rows,
            **{k: v for k, v in counts.items() if k != "rejects_by_reason"},
        },
        "rejects_by_reason": counts["rejects_by_reason"],
        "thresholds": thresholds,
        "measured": {
            "with_vector": total.get("with_vector", 0),
            "languages": dict(
                sorted((total.get("languages") or {}).items(), key=lambda kv: (-kv[1], kv[0]))[:20]
            ),
        },
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "files": {
            "index": "index/*.parquet",
            "rejects": "rejects.parquet",
            "shards": "shards/",
            "report": "report.html",
        },
        # Curation keeps a subset of the samples: their member types are the build's.
        "member_types": json.loads(read_bytes(build_marker(cfg.build) or "")).get(
            "member_types", []
        ),
    }
    write_report(join(cfg.output, "report.html"), report, total)
    write_card(cfg.output, report, title=f"mmpipe curated build of {cfg.build}", job="curate")
    output.commit(report, json.dumps(report, indent=1))
    remove_tree(work)
    empty = empty_build_line(report, cfg.output)
    if empty:  # committed, so that its rejects can be read, but no success
        raise UserError(empty)
    print(  # --quiet too: the summary stays
        f"curate: {input_rows} rows -> {counts['written']} kept, {counts['rejected']} "
        f"rejected {json.dumps(counts['rejects_by_reason'])} -> {cfg.output}",
        file=sys.stderr,
    )
    return report
