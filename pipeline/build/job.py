"""The build job: plan the input, process chunks on Ray Data, finalize, commit build.json."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from pipeline.build.card import CARD, write_card
from pipeline.build.chunk import BuildChunkStage
from pipeline.build.distributed import finalize_distributed
from pipeline.build.finalize import SHARD_DIR, TABLES, publish
from pipeline.build.report import ProgressLine, make_report, summary_lines, write_build_json
from pipeline.config import BuildConfig
from pipeline.errors import UserError
from pipeline.ingest.sources import CHUNK_SCHEMA, make_datasource, plan_input
from pipeline.io.fs import (
    absolute,
    check_output,
    exists,
    get_fs,
    join,
    makedirs,
    move,
    remove_tree,
    write_bytes_atomic,
)
from pipeline.io.shards import empty_build_line
from pipeline.redact import redact
from pipeline.runner import map_stages, probe_address, ray_session, stream, task_concurrency

OUTPUT_FILES = ("build.json", *TABLES, SHARD_DIR, CARD, "_work")


def _read_json(url: str) -> dict[str, Any] | None:
    if not exists(url):
        return None
    fs, path = get_fs(url)
    with fs.open(path, "rb") as f:
        return dict(json.loads(f.read()))


def _finished(cfg: BuildConfig, overwrite: bool) -> dict[str, Any] | None:
    """The finished report if this exact build is already done; reads, never writes."""
    try:
        report = _read_json(join(cfg.output, "build.json"))
    except (OSError, ValueError) as e:
        raise UserError(
            f"cannot read {join(cfg.output, 'build.json')}: {type(e).__name__}: {e}; "
            "pass --overwrite to replace it or choose another --output"
        ) from None
    if report and report.get("config_fingerprint") == cfg.fingerprint() and not overwrite:
        return report
    if report and not overwrite:
        raise UserError(
            f"{cfg.output} holds a finished build of a different config; "
            "pass --overwrite to replace it or choose another --output"
        )
    return None


def _finished_chunks(work: str) -> int:
    fs, path = get_fs(join(work, "chunks"))
    return len(fs.glob(path.rstrip("/") + "/*.parquet")) if fs.isdir(path) else 0


def _claim_output(cfg: BuildConfig, overwrite: bool, quiet: bool) -> None:
    """Make OUT ready once the input is known to be good, so a failed plan leaves nothing.

    An unfinished build that finished no chunk holds no work worth keeping: it never
    blocks the next command, whatever its config was.
    """
    out, work = cfg.output, join(cfg.output, "_work")
    try:
        started = _read_json(join(work, "config.json"))
        kept = _finished_chunks(work) if started else 0
        same = started is not None and started.get("fingerprint") == cfg.fingerprint()
        if started and not same and not overwrite and kept:
            raise UserError(
                f"{out} holds an unfinished build of a different config ({kept} chunks done); "
                "pass --overwrite to discard it or rerun with the same options to resume"
            )
        if overwrite:
            for name in OUTPUT_FILES:
                remove_tree(join(out, name))
        elif started and not same:
            remove_tree(work)  # finished nothing: safe to drop
        elif same and kept and not quiet:
            print(
                f"build: resuming the unfinished build in {out}: keeping {kept} finished "
                f"chunk{'s' if kept != 1 else ''}, redoing the rest",
                file=sys.stderr,
            )
        # Final names of an interrupted finalize are rewritten; never leave them meanwhile.
        for name in TABLES:
            remove_tree(join(out, name))
        makedirs(join(work, "chunks"))
        marker = json.dumps(
            {"fingerprint": cfg.fingerprint(), "config": cfg.model_dump()}, sort_keys=True
        )
        write_bytes_atomic(join(work, "config.json"), marker.encode())
    except UserError:
        raise
    except (OSError, PermissionError) as e:
        raise UserError(
            f"cannot write to output {out}: {e.__class__.__name__}: {e}; choose a writable --output"
        ) from None


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
    done = _finished(cfg, overwrite)
    if done is not None:
        if not quiet:
            print("\n".join(summary_lines(done, noop=True)), file=sys.stderr)
        return _not_empty(done, cfg.output)
    plan = plan_input(cfg)  # every input mistake is found before OUT is touched
    if not plan.units:
        raise UserError(f"input {cfg.input} holds no samples; nothing to build")
    if address:
        probe_address(address)  # before OUT is touched: a wrong address leaves nothing behind
    _claim_output(cfg, overwrite, quiet)
    work = join(cfg.output, "_work")
    timings: dict[str, float] = {}
    progress = ProgressLine(quiet=quiet)
    with ray_session(address, num_cpus=ray_num_cpus):
        import ray.data

        t1 = time.perf_counter()
        timings["startup"] = t1 - t0
        # One read task per chunk, and one block per read task asked for explicitly:
        # otherwise Ray re-splits read output to reach its default parallelism. Reads
        # take the chunk stage's CPU share and its cap, so Ray fuses read and build into one
        # task.
        ds = ray.data.read_datasource(
            make_datasource(plan, cfg),
            num_cpus=cfg.num_cpus,
            override_num_blocks=len(plan.units),
            concurrency=task_concurrency(cfg.num_cpus),
        )
        ds = map_stages(ds, [BuildChunkStage(cfg, work)], columns=CHUNK_SCHEMA.names)
        chunk_ids: list[str] = []  # O(chunks) on the driver
        for summary in stream(ds):
            chunk_ids.extend(summary.column("chunk_id").to_pylist())
            progress.update(summary)
        progress.done()
        t2 = time.perf_counter()
        timings["process"] = t2 - t1
        near = cfg.near_dup_distance if cfg.near_duplicates else None
        counts = finalize_distributed(
            work, cfg.output, chunk_ids, progress.staged, cfg.dedup_partition_rows, near
        )
        timings["finalize"] = time.perf_counter() - t2
    if counts["input_rows"] != progress.rows:
        raise RuntimeError(
            f"row accounting broke: {progress.rows} processed, {counts['input_rows']} finalized"
        )
    if counts["input_rows"] == 0:
        remove_tree(work)
        raise UserError(f"input {cfg.input} holds no samples (only headers or blank lines)")
    timings["total"] = time.perf_counter() - t0
    chunks = {"total": progress.chunks, "resumed": progress.resumed}
    report = make_report(cfg, plan.kind, counts, timings, chunks, progress.member_types)
    # Everything waits in _work, complete, until here: then only renames remain, so no final
    # name exists without build.json for longer than they take, and a rerun removes any
    # that an interrupted commit left (see _claim_output).
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
    if not quiet:
        print("\n".join(summary_lines(report)), file=sys.stderr)
    return _not_empty(report, cfg.output)


def _not_empty(report: dict[str, Any], out: str) -> dict[str, Any]:
    """A build that wrote no sample is committed (its rejects are the record) but fails.

    Raises:
        UserError: every input row was rejected.
    """
    empty = empty_build_line(report, out)
    if empty:
        raise UserError(empty)
    return report
