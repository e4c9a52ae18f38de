"""`mmpipe embed` and `mmpipe refresh`: plan against the latest version, embed what is new on an
actor pool, merge per shard into a new version, commit it, move ``latest``, record the run."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from pipeline.embed.config import EmbedConfig
from pipeline.embed.execute import Execution, execute
from pipeline.embed.model import resolve_model
from pipeline.embed.plan import make_plan, scan_input
from pipeline.embed.records import Manifest, RunRecord, now_utc
from pipeline.embed.store import (
    append_ledger,
    commit_version,
    next_version,
    prune,
    read_latest,
    read_manifest,
    recover,
    set_latest,
    version_dir,
)
from pipeline.fingerprint import fingerprint
from pipeline.fusion.artifact import RunArtifact
from pipeline.io.fs import (
    absolute,
    exists,
    get_fs,
    is_remote,
    join,
    read_bytes,
    remove_tree,
    write_bytes_atomic,
)
from pipeline.io.parts import done_keys
from pipeline.lifecycle import prepare
from pipeline.progress import Progress
from pipeline.redact import redact_obj
from schemas.embeddings import EMBED_SCHEMA_VERSION, embeddings_schema

# What a store keeps from run to run: a refresh that is not told otherwise continues with them.
STORE_FIELDS = ("storage", "metadata_fields", "model_id", "row_group_mb", "keep_versions")


def continued(cfg: EmbedConfig) -> EmbedConfig:
    """A refresh continues the store as it was configured (storage, metadata fields, model
    id): fields the config does not set come from the latest version's config.json. Without
    this, a bare ``mmpipe refresh`` would see a new layout and re-embed everything."""
    latest = read_latest(cfg.output) if exists(cfg.output) else None
    url = join(version_dir(cfg.output, latest), "config.json") if latest else None
    if not url or not exists(url):
        return cfg
    last = json.loads(read_bytes(url))
    kept = {k: last[k] for k in STORE_FIELDS if k in last and k not in cfg.model_fields_set}
    return EmbedConfig(**{**cfg.model_dump(include=cfg.model_fields_set), **kept})


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
    t0, started = time.perf_counter(), now_utc()
    if kind == "refresh":
        cfg = continued(cfg)
    # Every path is resolved once, here: workers run elsewhere (see io/fs.absolute).
    cfg = cfg.model_copy(update={"shards": absolute(cfg.shards), "output": absolute(cfg.output)})
    prepare(cfg.output, address)
    with Progress(kind, quiet=quiet) as progress:
        progress.phase("planning: what changed since the last version")
        # Local paths are recorded absolute: search and later runs may start elsewhere.
        model = cfg.model if is_remote(cfg.model) else os.path.abspath(cfg.model)
        ref = resolve_model(model, cfg.model_id)
        indexed, shards = scan_input(cfg.shards)
        out = cfg.output
        base = recover(out)
        base_manifest = read_manifest(out, base) if base else None
        base_dir = version_dir(out, base) if base else None
        layout = layout_of(ref, cfg)
        plan = make_plan(
            shards, indexed, base, base_manifest, base_dir, ref.version, layout, incremental
        )
        if plan.noop:
            secs = round(time.perf_counter() - t0, 2)
            progress.close()
            print(
                f"{kind}: nothing new ({len(plan.shards)} shards match {base}); "
                f"nothing written, {secs}s",
                file=sys.stderr,
            )
            return {"version": base, "noop": True, "seconds": secs, "reason": plan.reason}
        staging = join(out, "_staging", plan.target)
        _clear_other_staging(out, plan.target)
        staged = done_keys(staging)
        version = next_version(out)
        run = Execution(
            cfg,
            ref,
            plan,
            staging,
            staged,
            base_dir,
            version_dir(out, version),
            file_schema(ref, cfg),
            kind,
            progress,
        )
        entries, totals, timings = execute(run, address)
    manifest = Manifest.of(version, ref, layout, cfg.storage, entries)
    # The resolved config next to the files it produced (credentials never live in it).
    write_bytes_atomic(
        join(version_dir(out, version), "config.json"),
        json.dumps(redact_obj(cfg.model_dump()), indent=1).encode(),
    )
    commit_version(out, version, manifest.to_json())
    set_latest(out, version)
    secs = round(time.perf_counter() - t0, 2)
    record = RunRecord.of(
        manifest,
        entries,
        sum(plan.deleted.values()),
        kind=kind,
        started_at=started,
        seconds=secs,
        version=version,
        base_version=base,
        model_version=ref.version,
        reason=plan.reason,
        resumed=sum(len(v) for v in staged.values()),
        shards_carried=sum(1 for p in plan.shards if p.action == "carry"),
        shards_rewritten=sum(1 for p in plan.shards if p.action != "carry"),
        write_seconds=round(totals.write_s + sum(e["write_s"] for e in entries), 3),
        rejects_by_reason=dict(totals.reasons.most_common()),
    )
    append_ledger(out, record.to_json())
    pruned = prune(out, cfg.keep_versions)
    remove_tree(staging)
    r = record
    print(  # --quiet too: the summary stays
        f"{kind}: {version} ({plan.reason}): {r.rows} rows, +{r.added} ~{r.changed} "
        f"-{r.removed}, {r.embedded} embedded, {r.shards_carried} shards carried, "
        f"{r.rejected} rejected, {secs}s" + (f"; pruned {', '.join(pruned)}" if pruned else ""),
        file=sys.stderr,
    )
    return {**record.to_json(), "noop": False, "manifest": manifest.to_json(), "timings": timings}
