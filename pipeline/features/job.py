"""The features job: shards -> preprocessing -> encoders -> Parquet parts, manifest, _SUCCESS."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from pipeline.device import actor_gpus, decode_on_gpu
from pipeline.errors import UserError
from pipeline.features.config import FeaturesConfig
from pipeline.features.stages import EncodeStage, FeaturePreprocess, FeatureWriter, encoder_info
from pipeline.fingerprint import features_fingerprint
from pipeline.io.fs import (
    absolute,
    check_output,
    exists,
    join,
    list_files,
    read_bytes,
    write_bytes_atomic,
)
from pipeline.io.parts import PartTotals, done_keys
from pipeline.io.shards import SAMPLE_SCHEMA, make_shard_datasource, resolve_shards, shard_stem
from pipeline.redact import redact_obj
from pipeline.runner import map_stages, probe_address, ray_session, stream
from schemas import FEATURES_SCHEMA_VERSION

STARTED = "_started.json"  # the fingerprint of an unfinished run: what a rerun may resume


def _resumable(out: str, fp: str, stems: set[str], quiet: bool) -> dict[str, frozenset[str]]:
    """Keys that an interrupted run of this same config committed; parts of another config
    are refused, and a run of another config that committed nothing is simply replaced."""
    marker = join(out, STARTED)
    started = json.loads(read_bytes(marker)) if exists(marker) else None
    done = {s: keys for s, keys in done_keys(out).items() if s in stems}
    if done and (started or {}).get("fingerprint") != fp:
        raise UserError(
            f"{out} holds parts of an unfinished features run of a different config; "
            "choose another --output, or delete it to start over"
        )
    if done and not quiet:
        n = sum(len(v) for v in done.values())
        print(
            f"features: resuming the unfinished run in {out}: keeping {n} samples already done",
            file=sys.stderr,
        )
    write_bytes_atomic(marker, json.dumps({"fingerprint": fp}).encode())
    return done


def run_features(
    cfg: FeaturesConfig, *, address: str | None = None, quiet: bool = False
) -> dict[str, Any]:
    """Write ``OUT/parts/<shard>/*.parquet``, ``OUT/rejects/``, ``manifest.json``, ``_SUCCESS``.

    Reruns of a finished run return at once; an interrupted run resumes, skipping the
    keys its committed parts already hold.
    """

    t0 = time.perf_counter()
    # Every path is resolved once, here: workers run elsewhere (see io/fs.absolute).
    cfg = cfg.model_copy(update={"shards": absolute(cfg.shards), "output": absolute(cfg.output)})
    cfg = cfg.with_absolute_weights()
    check_output(cfg.output)
    if address:
        probe_address(address)  # seconds, where ray.init would retry for ever
    urls = resolve_shards(cfg.shards)
    info = encoder_info(cfg)  # validates weights on the driver: bad config fails before Ray starts
    fp = features_fingerprint(cfg, info)
    out = cfg.output
    report_url = join(out, "features.json")
    if exists(join(out, "_SUCCESS")):
        report = json.loads(read_bytes(report_url))
        if report.get("fingerprint") == fp:
            if not quiet:
                print(
                    f"features: already complete ({report['counts']['rows']} rows); nothing to do",
                    file=sys.stderr,
                )
            return _not_empty(dict(report), out)
        raise UserError(f"{out} holds features of a different config; choose another --output")
    stems = {shard_stem(u) for u in urls}
    done = _resumable(out, fp, stems, quiet)
    metadata = {"mmpipe.encoders": json.dumps(info, sort_keys=True), "mmpipe.fingerprint": fp}
    totals = PartTotals("features", quiet)
    with ray_session(address):
        import ray.data

        ctx = ray.data.DataContext.get_current()
        ctx.target_max_block_size = cfg.max_block_bytes  # media expands when decoded: small blocks
        ds = ray.data.read_datasource(
            make_shard_datasource(urls, done, cfg.batch_size, cfg.max_block_bytes),
            override_num_blocks=len(urls),
        )
        preset = (info.get("image") or {}).get("preset") or "imagenet"
        gpus = actor_gpus(cfg.device)
        on_gpu = decode_on_gpu(cfg.image_decode, cfg.decodes_jpeg_in_actor(), gpus)
        stages = [
            FeaturePreprocess(cfg, preset, decode_images=not on_gpu),
            EncodeStage(cfg, gpus, decode_preset=preset if on_gpu else None),
            FeatureWriter(cfg, metadata),
        ]
        ds = map_stages(ds, stages, columns=SAMPLE_SCHEMA.names, batch_size=cfg.batch_size)
        for summary in stream(ds):
            totals.add(summary)
    resumed = sum(len(v) for v in done.values())
    counts = {
        "rows": totals.rows,
        "rejected": totals.rejected,
        "resumed": resumed,
        # This run's rejects; a resumed run's earlier ones are in rejects/ beside them.
        "rejects_by_reason": dict(totals.reasons.most_common()),
    }
    parts = (
        sorted(f"parts/{p}" for p in list_files(join(out, "parts")))
        if exists(join(out, "parts"))
        else []
    )
    report = {
        "schema_version": FEATURES_SCHEMA_VERSION,
        "fingerprint": fp,
        "config": redact_obj(cfg.model_dump()),
        "encoders": info,
        "counts": counts,
        "parts": parts,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    write_bytes_atomic(report_url, (json.dumps(report, indent=2, sort_keys=True) + "\n").encode())
    write_bytes_atomic(join(out, "_SUCCESS"), b"")  # commit marker, last
    if not quiet:
        print(
            f"features: {counts['rows']} rows written, {counts['rejected']} rejected, "
            f"{counts['resumed']} already done, in {report['seconds']}s -> {out}",
            file=sys.stderr,
        )
    return _not_empty(report, out)


def _not_empty(report: dict[str, Any], out: str) -> dict[str, Any]:
    """Features that hold no row are committed (their rejects are the record) but fail.

    Raises:
        UserError: every sample was rejected.
    """
    c = report["counts"]
    if c["rows"] or c.get("resumed"):
        return report
    top = ", ".join(f"{r} {n}" for r, n in list((c.get("rejects_by_reason") or {}).items())[:3])
    raise UserError(
        f"features: no sample got features: all {c['rejected']} were rejected"
        + (f" ({top})" if top else "")
        + f"; their reasons are in {join(out, 'rejects')}"
    )
