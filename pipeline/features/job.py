"""The features job: shards -> preprocessing -> encoders -> Parquet parts, manifest, _SUCCESS."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from typing import Any

from pipeline.errors import UserError
from pipeline.features.config import FeaturesConfig
from pipeline.features.reader import make_shard_datasource, shard_stem
from pipeline.features.stages import EncodeStage, FeaturePreprocess, FeatureWriter, encoder_info
from pipeline.io.fs import exists, expand_inputs, get_fs, join, list_files, write_bytes_atomic
from pipeline.redact import redact_obj
from pipeline.runner import map_stages, ray_session, stream
from schemas import FEATURES_SCHEMA_VERSION


def resolve_shards(spec: str) -> list[str]:
    """A build output folder (its shards/), a glob or brace pattern, or one tar."""
    if exists(join(spec, "build.json")):
        spec = join(spec, "shards", "*.tar")
    urls = [u for u in expand_inputs(spec) if u.endswith(".tar")]
    if not urls:
        raise UserError(
            f"no .tar shards found at {spec}; point SHARDS at a build output or a tar pattern"
        )
    return urls


def fingerprint(cfg: FeaturesConfig, info: dict[str, Any]) -> str:
    fields = cfg.model_dump(
        exclude={"output", "actors", "actor_num_cpus", "preprocess_num_cpus", "batch_size"}
    )
    blob = json.dumps(
        {"cfg": fields, "encoders": info, "v": FEATURES_SCHEMA_VERSION}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _done_keys(out: str, urls: list[str]) -> dict[str, frozenset[str]]:
    """Keys already written (or rejected) per shard, read from committed part files."""
    import pyarrow.parquet as pq

    done: dict[str, frozenset[str]] = {}
    for kind in ("parts", "rejects"):
        root = join(out, kind)
        if not exists(root):
            continue
        fs, _ = get_fs(root)
        for rel in list_files(root):
            stem = rel.split("/", 1)[0]
            with fs.open(get_fs(join(root, rel))[1], "rb") as f:
                keys = pq.read_table(f, columns=["key"]).column("key").to_pylist()
            done[stem] = done.get(stem, frozenset()) | frozenset(keys)
    return {s: k for s, k in done.items() if any(shard_stem(u) == s for u in urls)}


def run_features(
    cfg: FeaturesConfig, *, address: str | None = None, quiet: bool = False
) -> dict[str, Any]:
    """Write ``OUT/parts/<shard>/*.parquet``, ``OUT/rejects/``, ``manifest.json``, ``_SUCCESS``.

    Reruns of a finished run return at once; an interrupted run resumes, skipping the
    keys its committed parts already hold.
    """

    t0 = time.perf_counter()
    urls = resolve_shards(cfg.shards)
    info = encoder_info(cfg)  # validates weights on the driver: bad config fails before Ray starts
    fp = fingerprint(cfg, info)
    out = cfg.output
    report_url = join(out, "features.json")
    if exists(join(out, "_SUCCESS")):
        fs, path = get_fs(report_url)
        with fs.open(path, "rb") as f:
            report = json.loads(f.read())
        if report.get("fingerprint") == fp:
            if not quiet:
                print(
                    f"features: already complete ({report['counts']['rows']} rows); nothing to do",
                    file=sys.stderr,
                )
            return dict(report)
        raise UserError(f"{out} holds features of a different config; choose another --output")
    done = _done_keys(out, urls)
    metadata = {"mmpipe.encoders": json.dumps(info, sort_keys=True), "mmpipe.fingerprint": fp}
    counts = {"rows": 0, "rejected": 0, "resumed": sum(len(v) for v in done.values())}
    with ray_session(address):
        import ray.data

        ctx = ray.data.DataContext.get_current()
        ctx.target_max_block_size = cfg.max_block_bytes  # media expands when decoded: small blocks
        ds = ray.data.read_datasource(
            make_shard_datasource(urls, done, cfg.batch_size, cfg.max_block_bytes),
            override_num_blocks=len(urls),
        )
        preset = (info.get("image") or {}).get("preset") or "imagenet"
        # GPUs as the cluster has them, not the driver: a CPU head may drive GPU workers.
        has_gpu = float(ray.cluster_resources().get("GPU", 0)) > 0
        gpus = 1.0 if (cfg.device != "cpu" and has_gpu) else 0.0
        on_gpu = cfg.image is not None and (
            cfg.image_decode == "gpu" or (cfg.image_decode == "auto" and gpus > 0)
        )
        stages = [
            FeaturePreprocess(cfg, preset, decode_images=not on_gpu),
            EncodeStage(cfg, gpus, decode_preset=preset if on_gpu else None),
            FeatureWriter(cfg, metadata),
        ]
        ds = map_stages(ds, stages, batch_size=cfg.batch_size)
        last = 0.0
        for summary in stream(ds):
            counts["rows"] += int(summary.column("rows").to_numpy().sum())
            counts["rejected"] += int(summary.column("rejects").to_numpy().sum())
            if not quiet and time.perf_counter() - last > 5:
                last = time.perf_counter()
                print(
                    f"[features] rows {counts['rows']} | rejected {counts['rejected']}",
                    file=sys.stderr,
                )
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
        print(f"features: {counts['rows']} rows written, {counts['rejected']} rejected, "
              f"{counts['resumed']} already done, in {report['seconds']}s -> {out}", file=sys.stderr)  # fmt: skip
    return report
