"""The build job: plan the input, process chunks on Ray Data, finalize, commit build.json."""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from pipeline.build.card import CARD, write_card
from pipeline.build.chunk import BuildChunkStage
from pipeline.build.distributed import finalize_distributed
from pipeline.build.early import DriverChunks
from pipeline.build.finalize import SHARD_DIR, TABLES, publish
from pipeline.build.report import ProgressLine, make_report, summary_lines, write_build_json
from pipeline.config import BuildConfig
from pipeline.errors import UserError
from pipeline.ingest.sources import CHUNK_SCHEMA, make_datasource, plan_input
from pipeline.io.fs import (
    absolute,
    check_output,
    get_fs,
    join,
    makedirs,
    move,
    remove_tree,
)
from pipeline.io.shards import LEGACY_INDEX, empty_build_line
from pipeline.lifecycle import Output, prepare
from pipeline.progress import Progress
from pipeline.redact import redact
from pipeline.runner import map_stages, stream, task_concurrency
from pipeline.session import ray_session, starts_local_ray

OUTPUT_FILES = ("build.json", *TABLES, LEGACY_INDEX, SHARD_DIR, CARD, "_work")


def _finished_chunks(work: str) -> int:
    fs, path = get_fs(join(work, "chunks"))
    return len(fs.glob(path.rstrip("/") + "/*.parquet")) if fs.isdir(path) else 0


def build_output(cfg: BuildConfig) -> Output:
    """The build's output folder under the one lifecycle (pipeline/lifecycle.py)."""
    return Output(
        "build",
        cfg.output,
        cfg.fingerprint(),
        marker="build.json",
        started="_work/config.json",
        owned=OUTPUT_FILES,
        what="build",
        unit=("finished chunk", "finished chunks"),
    )


def run_build(
    cfg: BuildConfig,
    *,
    address: str | None = None,
    ray_num_cpus: int | None = None,
    overwrite: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """Build shards, index, rejects and build.json under ``cfg.output``; return the report.

    Reruns of a finished build return at once; an interrupted build resumes from the
    chunks it finished. ``rows(index) + rows(rejects) == rows(input)`` always holds.

    Raises:
        UserError: bad input or output (one line, no traceback).
    """
    t0 = time.perf_counter()
    # Every path is resolved once, here: chunk tasks run on other nodes, in other folders.
    cfg = cfg.model_copy(update={"input": absolute(cfg.input), "output": absolute(cfg.output)})
    check_output(cfg.output)
    output = build_output(cfg)
    done = output.finished(overwrite)
    if done is not None:
        _not_empty(done, cfg.output)
        print("\n".join(summary_lines(done, noop=True)), file=sys.stderr)
        return done
    with Progress("build", quiet=quiet) as progress:
        progress.phase("planning the input")
        plan = plan_input(cfg)  # every input mistake is found before OUT is touched
        if not plan.units:
            raise UserError(f"input {cfg.input} holds no samples; nothing to build")
        prepare(cfg.output, address)  # a wrong address leaves nothing behind
        work = join(cfg.output, "_work")
        output.claim(
            cfg.model_dump(),
            overwrite=overwrite,
            work_done=lambda: _finished_chunks(work),
            say=progress.say,
        )
        # Final names of an interrupted finalize are rewritten; never leave them meanwhile.
        for name in TABLES:
            remove_tree(join(cfg.output, name))
        makedirs(join(work, "chunks"))
        report = _process(cfg, plan, work, address, ray_num_cpus, progress, t0)
    # Everything waits in _work, complete, until here: then only renames remain, so no final
    # name exists without build.json for longer than they take, and a rerun removes any
    # that an interrupted commit left (see Output.claim).
    write_build_json(join(work, "build.json"), report)
    publish(work, cfg.output)
    write_card(cfg.output, report, title=f"mmpipe build of {redact(cfg.input)}", job="build")
    move(join(work, "build.json"), join(cfg.output, "build.json"))  # the commit marker: last
    try:
        remove_tree(work)
    except OSError as e:  # the build is committed: a leftover _work/ must not fail it
        print(
            f"build: complete, but {work} could not be removed ({type(e).__name__}: {e}); "
            "delete it by hand",
            file=sys.stderr,
        )
    _not_empty(report, cfg.output)  # its error line is an empty build's summary
    print("\n".join(summary_lines(report)), file=sys.stderr)  # --quiet too: the summary stays
    return report


def _process(
    cfg: BuildConfig,
    plan: Any,
    work: str,
    address: str | None,
    ray_num_cpus: int | None,
    progress: Progress,
    t0: float,
) -> dict[str, Any]:
    """Chunks on Ray Data, then finalize: build.json's content, staged in ``work``."""
    timings: dict[str, float] = {}
    line = ProgressLine(progress, chunks=len(plan.units))
    lock = threading.Lock()  # the driver's chunk thread updates the line too

    def landed(summary: pa.Table) -> None:
        with lock:
            line.update(summary)

    # On a Ray this command starts, the driver builds chunks too: the first while Ray
    # starts, then from the end of the input while Ray's tasks go from the front.
    driver, claims = None, None
    if starts_local_ray(address):
        driver = DriverChunks(plan.units, cfg, work, landed)
        plan, claims = dataclasses.replace(plan, units=plan.units[1:]), driver.claims
    progress.phase("starting Ray")
    try:
        with ray_session(address, num_cpus=ray_num_cpus, job="build"):
            chunk_ids = _build_chunks(cfg, plan, work, claims, landed, progress, timings, t0)
            if driver is not None:
                for summary in driver.result():
                    chunk_ids.extend(summary.column("chunk_id").to_pylist())
            progress.finish()
            t2 = time.perf_counter()
            timings["process"] = t2 - t0 - timings["startup"]
            progress.phase("finalizing: dedup, shard names, index")
            near = cfg.near_dup_distance if cfg.near_duplicates else None
            counts = finalize_distributed(
                work, cfg.output, chunk_ids, line.staged, cfg.dedup_partition_rows, near
            )
            timings["finalize"] = time.perf_counter() - t2
    finally:
        if driver is not None:
            driver.close()
    if counts["input_rows"] != line.rows:
        raise RuntimeError(
            f"row accounting broke: {line.rows} processed, {counts['input_rows']} finalized"
        )
    if counts["input_rows"] == 0:
        remove_tree(work)
        raise UserError(f"input {cfg.input} holds no samples (only headers or blank lines)")
    timings["total"] = time.perf_counter() - t0
    chunks = {"total": line.chunks, "resumed": line.resumed}
    return make_report(cfg, plan.kind, counts, timings, chunks, line.member_types)


def _build_chunks(
    cfg: BuildConfig,
    plan: Any,
    work: str,
    claims: str | None,
    landed: Callable[[pa.Table], None],
    progress: Progress,
    timings: dict[str, float],
    t0: float,
) -> list[str]:
    """Ray Data's part of the chunks (the driver's, if any, are built beside it): their ids."""
    import ray.data

    timings["startup"] = time.perf_counter() - t0
    progress.phase("building chunks")
    chunk_ids: list[str] = []  # O(chunks) on the driver
    if plan.units:
        # One read task per chunk, and one block per read task asked for explicitly:
        # otherwise Ray re-splits read output to reach its default parallelism. Reads take
        # the chunk stage's CPU share and its cap, so Ray fuses read and build into one task.
        ds = ray.data.read_datasource(
            make_datasource(plan, cfg),
            num_cpus=cfg.num_cpus,
            override_num_blocks=len(plan.units),
            concurrency=task_concurrency(cfg.num_cpus),
        )
        stage = BuildChunkStage(cfg, work, claims=claims)
        ds = map_stages(ds, [stage], columns=CHUNK_SCHEMA.names, on_error=cfg.on_error)
        for summary in stream(ds):
            chunk_ids.extend(summary.column("chunk_id").to_pylist())
            landed(summary)
    return chunk_ids


def _not_empty(report: dict[str, Any], out: str) -> dict[str, Any]:
    """A build that wrote no sample is committed (its rejects are the record) but fails.

    Raises:
        UserError: every input row was rejected.
    """
    empty = empty_build_line(report, out)
    if empty:
        raise UserError(empty)
    return report
