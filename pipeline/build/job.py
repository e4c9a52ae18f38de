"""The build job: plan the input, process chunks on Ray Data, finalize, commit build.json."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from pipeline.build.chunk import BuildChunkStage
from pipeline.build.finalize import SHARD_DIR, finalize
from pipeline.build.report import ProgressLine, make_report, summary_lines, write_build_json
from pipeline.config import BuildConfig
from pipeline.errors import UserError
from pipeline.ingest.sources import CHUNK_SCHEMA, make_datasource, plan_input
from pipeline.io.fs import exists, get_fs, join, makedirs, remove_tree, write_bytes_atomic
from pipeline.runner import map_stages, ray_session, run_remote, stream

OUTPUT_FILES = ("build.json", "index.parquet", "rejects.parquet", SHARD_DIR, "_work")


def _read_json(url: str) -> dict[str, Any] | None:
    if not exists(url):
        return None
    fs, path = get_fs(url)
    with fs.open(path, "rb") as f:
        return dict(json.loads(f.read()))


def _prepare_output(cfg: BuildConfig, overwrite: bool) -> dict[str, Any] | None:
    """Return the finished report if this exact build is already done; else make OUT ready."""
    out = cfg.output
    try:
        report = _read_json(join(out, "build.json"))
        if report and report.get("config_fingerprint") == cfg.fingerprint() and not overwrite:
            return report
        if report and not overwrite:
            raise UserError(
                f"{out} holds a finished build of a different config; "
                "pass --overwrite to replace it or choose another --output"
            )
        started = _read_json(join(out, "_work", "config.json"))
        if started and started.get("fingerprint") != cfg.fingerprint() and not overwrite:
            raise UserError(
                f"{out} holds an unfinished build of a different config; "
                "pass --overwrite to discard it or rerun with the same options to resume"
            )
        if overwrite:
            for name in OUTPUT_FILES:
                remove_tree(join(out, name))
        makedirs(join(out, "_work", "chunks"))
        marker = json.dumps(
            {"fingerprint": cfg.fingerprint(), "config": cfg.model_dump()}, sort_keys=True
        )
        write_bytes_atomic(join(out, "_work", "config.json"), marker.encode())
    except UserError:
        raise
    except (OSError, PermissionError) as e:
        raise UserError(
            f"cannot write to output {out}: {e.__class__.__name__}: {e}; choose a writable --output"
        ) from None
    return None


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
    done = _prepare_output(cfg, overwrite)
    if done is not None:
        if not quiet:
            print("\n".join(summary_lines(done, noop=True)), file=sys.stderr)
        return done
    plan = plan_input(cfg)
    work = join(cfg.output, "_work")
    timings: dict[str, float] = {}
    progress = ProgressLine(quiet=quiet)
    if not plan.units:  # an empty input still gets its (empty) index, rejects and report
        timings["startup"] = timings["process"] = 0.0
        counts = finalize(work, cfg.output, [])
        timings["finalize"] = time.perf_counter() - t0
    else:
        with ray_session(address, num_cpus=ray_num_cpus):
            import ray.data

            t1 = time.perf_counter()
            timings["startup"] = t1 - t0
            # One read task per chunk, and one block per read task asked for explicitly:
            # otherwise Ray re-splits read output to reach its default parallelism. Reads
            # take the chunk stage's CPU share, so Ray fuses read and build into one task.
            ds = ray.data.read_datasource(
                make_datasource(plan, cfg),
                num_cpus=cfg.num_cpus,
                override_num_blocks=len(plan.units),
            )
            ds = map_stages(ds, [BuildChunkStage(cfg, work)], columns=CHUNK_SCHEMA.names)
            chunk_ids: list[str] = []
            for summary in stream(ds):
                chunk_ids.extend(summary.column("chunk_id").to_pylist())
                progress.update(summary)
            progress.done()
            t2 = time.perf_counter()
            timings["process"] = t2 - t1
            counts = run_remote(finalize, work, cfg.output, chunk_ids)
            timings["finalize"] = time.perf_counter() - t2
    if counts["input_rows"] != progress.rows:
        raise RuntimeError(
            f"row accounting broke: {progress.rows} processed, {counts['input_rows']} finalized"
        )
    timings["total"] = time.perf_counter() - t0
    chunks = {"total": progress.chunks, "resumed": progress.resumed}
    report = make_report(cfg, plan.kind, counts, timings, chunks)
    write_build_json(join(cfg.output, "build.json"), report)  # the commit marker: written last
    remove_tree(work)
    if not quiet:
        print("\n".join(summary_lines(report)), file=sys.stderr)
    return report
