"""The features job: shards -> preprocessing -> encoders -> Parquet parts, manifest, _SUCCESS."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from pipeline.device import actor_gpus, decode_on_gpu
from pipeline.errors import UserError
from pipeline.features.config import FeaturesConfig
from pipeline.features.output import OWNED, REPORT, SUCCESS, listed_parts
from pipeline.features.stages import EncodeStage, FeaturePreprocess, FeatureWriter, encoder_info
from pipeline.fingerprint import features_fingerprint
from pipeline.io.fs import (
    absolute,
    join,
)
from pipeline.io.parts import PartTotals, done_keys
from pipeline.io.shards import SAMPLE_SCHEMA, make_shard_datasource, resolve_shards, shard_stem
from pipeline.lifecycle import Output, prepare
from pipeline.progress import Progress
from pipeline.redact import redact_obj
from pipeline.runner import map_stages, stream
from pipeline.session import ray_session
from schemas import FEATURES_SCHEMA_VERSION

STARTED = "_started.json"  # the claim: the fingerprint of a run in progress


def run_features(
    cfg: FeaturesConfig,
    *,
    address: str | None = None,
    overwrite: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """Write ``OUT/parts/<shard>/*.parquet``, ``OUT/rejects/``, ``manifest.json``, ``_SUCCESS``.

    Reruns of a finished run return at once; an interrupted run resumes, skipping the
    keys its committed parts already hold.
    """

    t0 = time.perf_counter()
    # Every path is resolved once, here: workers run elsewhere (see io/fs.absolute).
    cfg = cfg.model_copy(update={"shards": absolute(cfg.shards), "output": absolute(cfg.output)})
    cfg = cfg.with_absolute_weights()
    prepare(cfg.output, address)
    urls = resolve_shards(cfg.shards)
    out = cfg.output
    with Progress("features", quiet=quiet) as progress:
        progress.phase(f"loading {_encoders_words(cfg)} to check their weights")
        info = encoder_info(cfg)  # validates weights on the driver: bad config fails before Ray
        fp = features_fingerprint(cfg, info)
        output = Output(
            "features",
            out,
            fp,
            marker=REPORT,
            started=STARTED,
            owned=OWNED,
            success=SUCCESS,
            what="features run",
            unit=("sample already done", "samples already done"),
        )
        report = output.finished(overwrite)
        if report is not None:
            progress.quiet = True
            _not_empty(report, out)
            print(
                f"features: already complete ({report['counts']['rows']} rows); nothing to do",
                file=sys.stderr,
            )
            return report
        stems = {shard_stem(u) for u in urls}

        def committed() -> dict[str, frozenset[str]]:
            return {s: keys for s, keys in done_keys(out).items() if s in stems}

        output.claim(
            redact_obj(cfg.model_dump()),
            overwrite=overwrite,
            work_done=lambda: sum(len(v) for v in committed().values()),
            say=progress.say,
        )
        done = committed()
        metadata = {"mmpipe.encoders": json.dumps(info, sort_keys=True), "mmpipe.fingerprint": fp}
        totals = PartTotals(progress)
        progress.phase("starting Ray")
        with ray_session(address, job="features"):
            import ray.data

            ctx = ray.data.DataContext.get_current()
            ctx.target_max_block_size = cfg.max_block_bytes  # media expands when decoded
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
            ds = map_stages(
                ds,
                stages,
                columns=SAMPLE_SCHEMA.names,
                batch_size=cfg.batch_size,
                on_error=cfg.on_error,
            )
            progress.phase(f"encoding {len(urls)} shards (the actors load {_encoders_words(cfg)})")
            for summary in stream(ds):
                totals.add(summary)
            progress.finish()
    resumed = sum(len(v) for v in done.values())
    counts = {
        "rows": totals.rows,
        "rejected": totals.rejected,
        "resumed": resumed,
        # This run's rejects; a resumed run's earlier ones are in rejects/ beside them.
        "rejects_by_reason": dict(totals.reasons.most_common()),
    }
    parts = listed_parts(out)
    report = {
        "schema_version": FEATURES_SCHEMA_VERSION,
        "fingerprint": fp,
        "config": redact_obj(cfg.model_dump()),
        "encoders": info,
        "counts": counts,
        "parts": parts,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    output.commit(report, json.dumps(report, indent=2, sort_keys=True) + "\n")
    _not_empty(report, out)  # its error line is an empty run's summary
    print(  # --quiet too: the summary stays
        f"features: {counts['rows']} rows written, {counts['rejected']} rejected, "
        f"{counts['resumed']} already done, in {report['seconds']}s -> {out}",
        file=sys.stderr,
    )
    return report


def _encoders_words(cfg: FeaturesConfig) -> str:
    names = [getattr(cfg, m).name for m in ("image", "text", "audio") if getattr(cfg, m)]
    return f"{len(names)} encoder{'s' if len(names) != 1 else ''} ({', '.join(names)})"


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
