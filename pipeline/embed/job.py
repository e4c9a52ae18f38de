"""`mmpipe embed` and `mmpipe refresh`: plan against the latest version, embed what is new on an
actor pool, merge per shard into a new version, commit it, move ``latest``, record the run."""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

from pipeline.artifact import RunArtifact
from pipeline.embed.config import EmbedConfig
from pipeline.embed.model import resolve_model
from pipeline.embed.plan import Plan, make_plan, scan_input
from pipeline.embed.store import (
    append_ledger,
    commit_version,
    next_version,
    prune,
    read_manifest,
    recover,
    set_latest,
    version_dir,
)
from pipeline.fingerprint import fingerprint
from pipeline.io.fs import exists, get_fs, is_remote, join, remove_tree, write_bytes_atomic
from pipeline.io.parts import done_keys
from pipeline.redact import redact_obj
from schemas.embeddings import EMBED_SCHEMA_VERSION, embeddings_schema


def layout_of(ref: RunArtifact, cfg: EmbedConfig) -> str:
    """What the files look like besides the model: a change re-embeds everything."""
    return fingerprint(
        [
            EMBED_SCHEMA_VERSION,
            ref.dim,
            ref.modalities,
            cfg.storage,
            cfg.metadata_fields,
            ref.model_id,
        ]
    )


def file_schema(ref: RunArtifact, cfg: EmbedConfig) -> Any:
    """The embeddings schema, with what a reader needs to trust the vectors in its metadata."""
    schema = embeddings_schema(ref.dim, ref.modalities, cfg.storage, tuple(cfg.metadata_fields))
    return schema.with_metadata(
        {
            "mmpipe.dim": str(ref.dim),
            "mmpipe.normalization": "l2",
            "mmpipe.storage": cfg.storage,
            "mmpipe.model_id": ref.model_id,
            "mmpipe.model_version": ref.version,
            "mmpipe.preprocessing": ref.preprocessing,
            "mmpipe.embed_schema_version": str(EMBED_SCHEMA_VERSION),
        }
    )


def _clear_other_staging(out: str, target: str) -> None:
    """Parts staged for another target (the input or model moved on since) are of no use."""
    root = join(out, "_staging")
    if not exists(root):
        return
    fs, path = get_fs(root)
    for p in fs.ls(path, detail=False):
        if p.rstrip("/").rsplit("/", 1)[-1] != target:
            remove_tree(join(root, p.rstrip("/").rsplit("/", 1)[-1]))


def run_embed(
    cfg: EmbedConfig,
    *,
    incremental: bool = True,
    kind: str = "refresh",
    address: str | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Write a new version of OUT, or nothing when the input and model are unchanged.

    A run killed at any point leaves ``latest`` on a complete version; rerunning the same
    command resumes from the parts it staged.
    """
    t0, started = time.perf_counter(), datetime.now(timezone.utc).isoformat(timespec="seconds")
    # Local paths are recorded absolute: search and later runs may start elsewhere.
    model = cfg.model if is_remote(cfg.model) else os.path.abspath(cfg.model)
    ref = resolve_model(model, cfg.model_id)
    index_url, shards = scan_input(cfg.shards)
    out = cfg.output
    base = recover(out)
    base_manifest = read_manifest(out, base) if base else None
    base_dir = version_dir(out, base) if base else None
    layout = layout_of(ref, cfg)
    plan = make_plan(
        shards, index_url, base, base_manifest, base_dir, ref.version, layout, incremental
    )
    if plan.noop:
        secs = round(time.perf_counter() - t0, 2)
        if not quiet:
            print(
                f"{kind}: nothing new ({len(plan.shards)} shards match {base}); nothing written, {secs}s",
                file=sys.stderr,
            )
        return {"version": base, "noop": True, "seconds": secs, "reason": plan.reason}
    staging = join(out, "_staging", plan.target)
    _clear_other_staging(out, plan.target)
    staged = done_keys(staging)
    version = next_version(out)
    schema = file_schema(ref, cfg)
    counts = _execute(
        cfg,
        ref,
        plan,
        staging,
        staged,
        base_dir,
        version_dir(out, version),
        schema,
        address,
        quiet,
        kind,
    )
    entries, write_s, timings = counts.pop("entries"), counts.pop("write_s"), counts.pop("timings")
    removed = sum(plan.deleted.values())
    manifest = {
        "schema_version": EMBED_SCHEMA_VERSION,
        "version": version,
        "model_id": ref.model_id,
        "model_version": ref.version,
        "model_path": ref.weights_url,
        "layout": layout,
        "dim": ref.dim,
        "storage": cfg.storage,
        "normalization": "l2",
        "preprocessing": ref.preprocessing,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "rows": sum(e["rows"] for e in entries),
        "rejected": sum(e["rejected"] for e in entries),
        "files": [
            {k: e[k] for k in ("path", "shard", "rows", "rejected", "bytes", "digest")}
            for e in sorted(entries, key=lambda e: e["shard"])
        ],
    }
    # The resolved config next to the files it produced (credentials never live in it).
    write_bytes_atomic(
        join(version_dir(out, version), "config.json"),
        json.dumps(redact_obj(cfg.model_dump()), indent=1).encode(),
    )
    commit_version(out, version, manifest)
    set_latest(out, version)
    secs = round(time.perf_counter() - t0, 2)
    record = {
        "run_id": uuid.uuid4().hex[:12],
        "kind": kind,
        "started_at": started,
        "seconds": secs,
        "version": version,
        "base_version": base,
        "model_version": ref.version,
        "reason": plan.reason,
        "added": sum(e["added"] for e in entries),
        "changed": sum(e["changed"] for e in entries),
        "removed": sum(e["removed"] for e in entries) + removed,
        "unchanged": sum(e["unchanged"] for e in entries),
        "embedded": sum(e["embedded"] for e in entries),
        "rejected": manifest["rejected"],
        "resumed": sum(len(v) for v in staged.values()),
        "shards_carried": sum(1 for p in plan.shards if p.action == "carry"),
        "shards_rewritten": sum(1 for p in plan.shards if p.action != "carry"),
        "rows": manifest["rows"],
        "write_seconds": round(write_s, 3),
    }
    append_ledger(out, record)
    pruned = prune(out, cfg.keep_versions)
    remove_tree(staging)
    if not quiet:
        print(
            f"{kind}: {version} ({plan.reason}): {record['rows']} rows, +{record['added']} "
            f"~{record['changed']} -{record['removed']}, {record['embedded']} embedded, "
            f"{record['shards_carried']} shards carried, {record['rejected']} rejected, {secs}s"
            + (f"; pruned {', '.join(pruned)}" if pruned else ""),
            file=sys.stderr,
        )
    return {**record, "noop": False, "manifest": manifest, "timings": timings}


def _execute(
    cfg: EmbedConfig,
    ref: RunArtifact,
    plan: Plan,
    staging: str,
    staged: dict[str, frozenset[str]],
    base_dir: str | None,
    vdir: str,
    schema: Any,
    address: str | None,
    quiet: bool,
    kind: str,
) -> dict[str, Any]:
    from pipeline.embed.merge import MergeShard
    from pipeline.runner import map_stages, ray_session, stream

    work = [p for p in plan.shards if p.action != "carry"]
    counts: dict[str, Any] = {"rows": 0, "rejected": 0, "write_s": 0.0, "marks": []}
    timings: dict[str, float] = {}
    t = time.perf_counter()
    with ray_session(address):
        import ray.data

        timings["ray_start_s"] = time.perf_counter() - t
        if work:
            t = time.perf_counter()
            _embed(cfg, ref, work, staging, staged, counts, quiet, kind)
            timings["embed_s"] = time.perf_counter() - t
        t = time.perf_counter()
        merge = MergeShard(staging, base_dir, vdir, plan.index_url, schema, cfg.row_group_mb)
        # Unchanged shards are links (server-side copies on object stores): threads here, no
        # tasks. Shards with new rows are merged by tasks, in parallel across the cluster.
        carried = [p for p in plan.shards if p.action == "carry"]
        with ThreadPoolExecutor(max_workers=32) as pool:
            entries = list(pool.map(merge.merge, (_item(p) for p in carried)))
        if work:
            items = [{"plan": json.dumps(_item(p))} for p in work]
            ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 64)))
            for table in stream(map_stages(ds, [merge], columns=["plan"])):
                entries += table.to_pylist()
        timings["merge_s"] = time.perf_counter() - t
    marks = counts.pop("marks")
    if len(marks) > 1:  # rows/s from the first batch out to the last: start-up excluded
        (ta, ra), (tb, rb) = marks[0], marks[-1]
        timings["steady_rows_per_s"] = (rb - ra) / max(1e-9, tb - ta)
    counts["timings"] = {k: round(v, 3) for k, v in timings.items()}
    counts["entries"] = entries
    counts["write_s"] += sum(e["write_s"] for e in entries)
    return counts


def _item(p: Any) -> dict[str, Any]:
    return {
        "shard": p.shard,
        "action": p.action,
        "digest": p.digest,
        "prev": p.prev,
        "skip": sorted(p.skip),
        "row_groups": p.row_groups,
    }


def _embed(
    cfg: EmbedConfig,
    ref: RunArtifact,
    work: list[Any],
    staging: str,
    staged: dict[str, frozenset[str]],
    counts: dict[str, Any],
    quiet: bool,
    kind: str,
) -> None:
    import ray

    from pipeline.device import actor_gpus, decode_on_gpu
    from pipeline.embed.stages import EmbedStage, EmbedWriter
    from pipeline.features.stages import FeaturePreprocess
    from pipeline.io.shards import SAMPLE_SCHEMA, make_shard_datasource
    from pipeline.runner import map_stages, stream

    # How the features stages run here; what they compute comes from the model's lineage.
    runtime = ("batch_size", "actor_num_cpus", "preprocess_num_cpus", "device", "amp")
    fcfg = ref.features_config(
        shards=cfg.shards,
        output=staging,
        **cfg.model_dump(include={*runtime, "max_block_bytes"}),
    )
    # The weights load in the actors, once each, with the encoders they are checked against.
    gpus = actor_gpus(cfg.device)
    on_gpu = decode_on_gpu(fcfg.image_decode, fcfg.image is not None, gpus)
    preset = ref.image_preset
    if cfg.actors == "auto":
        per = gpus if gpus else cfg.actor_num_cpus
        room = float(ray.cluster_resources().get("GPU" if gpus else "CPU", 1))
        actors, max_actors = 1, max(1, min(cfg.max_actors, int(room // per)))
    else:
        actors, max_actors = cfg.actors, None
    done = {p.shard: p.skip | staged.get(p.shard, frozenset()) for p in work}
    ds = ray.data.read_datasource(
        make_shard_datasource([p.url for p in work], done, cfg.batch_size, cfg.max_block_bytes),
        override_num_blocks=len(work),
    )
    stages = [
        FeaturePreprocess(fcfg, preset, decode_images=not on_gpu),
        EmbedStage(fcfg, ref, gpus, actors, max_actors, decode_preset=preset if on_gpu else None),
        EmbedWriter(staging, ref, cfg.storage, cfg.metadata_fields),
    ]
    last = 0.0
    ds = map_stages(ds, stages, columns=SAMPLE_SCHEMA.names, batch_size=cfg.batch_size)
    for summary in stream(ds):
        counts["rows"] += int(summary.column("rows").to_numpy().sum())
        counts["rejected"] += int(summary.column("rejects").to_numpy().sum())
        counts["write_s"] += float(summary.column("write_s").to_numpy().sum())
        counts["marks"].append((time.perf_counter(), counts["rows"] + counts["rejected"]))
        if not quiet and time.perf_counter() - last > 5:
            last = time.perf_counter()
            print(
                f"[{kind}] embedded {counts['rows']} | rejected {counts['rejected']}",
                file=sys.stderr,
            )
