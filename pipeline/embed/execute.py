"""Carrying out a refresh plan on Ray: embed the shards that changed, then merge every shard."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pipeline.embed.config import EmbedConfig
from pipeline.embed.plan import Plan, ShardPlan
from pipeline.fusion.artifact import RunArtifact
from pipeline.io.parts import PartTotals
from pipeline.progress import Progress


@dataclass(frozen=True)
class Execution:
    """One run's inputs: what to do (the plan) and where (staging, the base and new versions)."""

    cfg: EmbedConfig
    ref: RunArtifact
    plan: Plan
    staging: str  # OUT/_staging/<target>: parts survive a killed run
    staged: dict[str, frozenset[str]]  # keys already staged by an earlier try
    base_dir: str | None
    vdir: str
    schema: Any  # the embeddings files' schema
    kind: str  # embed | refresh
    progress: Progress | None = None


def execute(run: Execution, address: str | None) -> tuple[list[dict[str, Any]], PartTotals, dict]:
    """Embed, then merge; returns (manifest entries, embed totals, timings)."""
    from pipeline.embed.merge import MergeShard
    from pipeline.runner import map_stages, stream
    from pipeline.session import ray_session

    plan, cfg = run.plan, run.cfg
    work = [p for p in plan.shards if p.action != "carry"]
    totals = PartTotals(run.progress)
    phase = run.progress.phase if run.progress else (lambda what: None)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    phase("starting Ray")
    with ray_session(address, job=run.kind):
        import ray.data

        timings["ray_start_s"] = time.perf_counter() - t
        if work:
            t = time.perf_counter()
            phase(f"embedding {len(work)} shards (the actors load the encoders and the model)")
            for summary in stream(_embed_dataset(run, work)):
                totals.add(summary)
            if run.progress:
                run.progress.finish()
            timings["embed_s"] = time.perf_counter() - t
        t = time.perf_counter()
        phase(f"merging {len(plan.shards)} shards into the new version")
        merge = MergeShard(run.staging, run.base_dir, run.vdir, run.schema, cfg.row_group_mb)
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
    rate = totals.steady_rate()
    if rate is not None:
        timings["steady_rows_per_s"] = rate
    return entries, totals, {k: round(v, 3) for k, v in timings.items()}


def _item(p: ShardPlan) -> dict[str, Any]:
    """A shard plan as the JSON a merge task receives."""
    return {
        "shard": p.shard,
        "action": p.action,
        "digest": p.digest,
        "prev": p.prev,
        "skip": sorted(p.skip),
        "span": p.span,
    }


def _embed_dataset(run: Execution, work: list[ShardPlan]) -> Any:
    """The Ray Dataset that embeds the new or changed samples of ``work``'s shards."""
    import ray

    from pipeline.device import actor_gpus, decode_on_gpu
    from pipeline.embed.stages import EmbedStage, EmbedWriter
    from pipeline.features.stages import FeaturePreprocess
    from pipeline.io.shards import SAMPLE_SCHEMA, make_shard_datasource
    from pipeline.runner import map_stages

    cfg, ref = run.cfg, run.ref
    # How the features stages run here; what they compute comes from the model's lineage.
    runtime = ("batch_size", "actor_num_cpus", "preprocess_num_cpus", "device", "amp")
    fcfg = ref.features_config(
        shards=cfg.shards,
        output=run.staging,
        **cfg.model_dump(include={*runtime, "max_block_bytes"}),
    )
    # The weights load in the actors, once each, with the encoders they are checked against.
    gpus = actor_gpus(cfg.device)
    on_gpu = decode_on_gpu(fcfg.image_decode, fcfg.decodes_jpeg_in_actor(), gpus)
    preset = ref.image_preset
    if cfg.actors == "auto":
        per = gpus if gpus else cfg.actor_num_cpus
        room = float(ray.cluster_resources().get("GPU" if gpus else "CPU", 1))
        actors, max_actors = 1, max(1, min(cfg.max_actors, int(room // per)))
    else:
        actors, max_actors = cfg.actors, None
    done = {p.shard: p.skip | run.staged.get(p.shard, frozenset()) for p in work}
    ds = ray.data.read_datasource(
        make_shard_datasource([p.url for p in work], done, cfg.batch_size, cfg.max_block_bytes),
        override_num_blocks=len(work),
    )
    stages = [
        FeaturePreprocess(fcfg, preset, decode_images=not on_gpu),
        EmbedStage(fcfg, ref, gpus, actors, max_actors, decode_preset=preset if on_gpu else None),
        EmbedWriter(run.staging, ref, cfg.storage, cfg.metadata_fields),
    ]
    return map_stages(
        ds, stages, columns=SAMPLE_SCHEMA.names, batch_size=cfg.batch_size, on_error=cfg.on_error
    )
