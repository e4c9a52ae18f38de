"""Embed stages: frozen encoders + the fusion model on an actor pool, and the staged part writer."""

from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime, timezone
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from pipeline.embed.model import EmbeddingModel, ModelRef, check_encoders
from pipeline.faults import maybe_fail
from pipeline.features.config import FeaturesConfig
from pipeline.features.stages import EncodeStage, _autocast, _text
from pipeline.io.fs import join
from pipeline.io.parquet import write_table
from pipeline.stage import Batch, Resources, Stage
from schemas.embeddings import EMBED_REJECTS_SCHEMA, MODALITIES, embeddings_schema


class EmbedStage(Stage):
    """Features from the frozen encoders, then the fusion model: one actor holds both, so a
    batch crosses to the GPU once. Models load once per actor (``setup``)."""

    name = "embed"
    reads: ClassVar[tuple[str, ...]] = ("key",)
    batch_format: ClassVar[str] = "numpy"

    def __init__(self, fcfg: FeaturesConfig, ref: ModelRef, gpus: float = 0.0,
                 actors: int = 1, max_actors: int | None = None,
                 decode_preset: str | None = None) -> None:  # fmt: skip
        super().__init__()
        self.encode = EncodeStage(fcfg, gpus, decode_preset=decode_preset)
        self.ref, self.gpus, self.actors, self.max_actors = ref, gpus, actors, max_actors

    @property
    def resources(self) -> Resources:
        return Resources(num_cpus=self.encode.cfg.actor_num_cpus, num_gpus=self.gpus,
                         actors=self.actors, max_actors=self.max_actors)  # fmt: skip

    def setup(self) -> None:
        self.encode.ensure_setup()
        # Checked here, where the encoders are loaded anyway: loading them on the driver as
        # well cost ~10 s per run on 2 CPUs (docs/benchmarks.md).
        check_encoders(self.ref, {m: {"encoder": e.encoder_id, "weights": e.weights_id, "dim": e.dim}
                                  for m, e in self.encode.encoders.items()})  # fmt: skip
        self.device = self.encode.device
        self.model = EmbeddingModel(self.ref, self.device)

    def __call__(self, batch: Batch) -> Batch:
        import torch

        self.ensure_setup()
        maybe_fail("embed_actor")  # reliability tests: the actor's process dies mid-batch
        batch = self.encode(batch)
        n = len(batch["key"])
        feats, masks = {}, {}
        for m in self.ref.modalities:
            x = torch.from_numpy(np.asarray(batch.pop(f"{m}_emb"), dtype=np.float32).reshape(n, -1))
            has = np.asarray(batch.get(f"{m}_mask", np.zeros(n, bool)), dtype=bool)
            x[torch.from_numpy(~has)] = 0.0  # as in training: an absent modality is zeros
            feats[m] = x.to(self.device, non_blocking=True)
            masks[m] = torch.from_numpy(has).to(self.device)
        amp = "bf16" if self.encode.cfg.amp == "auto" else self.encode.cfg.amp
        with torch.inference_mode(), _autocast(self.device, amp):
            fused, embs = self.model(feats, masks)
        batch["fused_emb"] = fused.cpu().numpy()
        for m in self.ref.modalities:
            batch[f"{m}_emb"] = embs[m].cpu().numpy()
        return batch


def part_name(keys: list[str]) -> str:
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]


class EmbedWriter(Stage):
    """Write each shard's rows of a batch as a staged part (committed atomically); the merge
    step later joins a shard's parts into its one file. Rows that failed preprocessing, or have
    none of the model's modalities, become reject rows."""

    name = "embed_writer"
    reads: ClassVar[tuple[str, ...]] = ("key", "shard", "error")
    batch_format: ClassVar[str] = "numpy"

    def __init__(self, staging: str, ref: ModelRef, storage: str, meta_fields: list[str]) -> None:
        super().__init__()
        self.staging, self.ref, self.storage = staging, ref, storage
        self.meta_fields = tuple(meta_fields)
        self.schema = embeddings_schema(ref.dim, ref.modalities, storage, self.meta_fields)

    @property
    def resources(self) -> Resources:
        return Resources(num_cpus=0.25)

    def __call__(self, batch: Batch) -> Batch:
        t0 = time.perf_counter()
        keys = np.asarray(batch["key"]).astype(str)
        shards = np.asarray(batch["shard"]).astype(str)
        errors = list(batch["error"])
        present = np.zeros(len(keys), bool)
        for m in self.ref.modalities:
            present |= np.asarray(batch.get(f"{m}_mask", present), dtype=bool)
        out: dict[str, list[Any]] = {"shard": [], "rows": [], "rejects": [], "write_s": []}
        for shard in sorted(set(shards.tolist())):
            idx = np.flatnonzero(shards == shard)
            bad = [int(i) for i in idx if errors[i] or not present[i]]
            ok = [int(i) for i in idx if not errors[i] and present[i]]
            name = part_name(keys[idx].tolist())
            if bad:
                rej = {"key": keys[bad].tolist(), "shard": [shard] * len(bad),
                       "content_hash": [None] * len(bad), "stage": [], "reason": [], "message": []}  # fmt: skip
                for i in bad:
                    stage, msg = json.loads(errors[i]) if errors[i] else ("embed", "no modality")
                    rej["stage"].append(stage)
                    rej["reason"].append("no_modality" if not errors[i] else "decode_error")
                    rej["message"].append(str(msg)[:2000])
                write_table(join(self.staging, f"rejects/{shard}/{name}.parquet"),
                            pa.table(rej, schema=EMBED_REJECTS_SCHEMA), EMBED_REJECTS_SCHEMA,
                            "embed_rejects")  # fmt: skip
            write_table(join(self.staging, f"parts/{shard}/{name}.parquet"),
                        self._table(batch, ok, keys, shard), self.schema, "embeddings")  # fmt: skip
            out["shard"].append(shard)
            out["rows"].append(len(ok))
            out["rejects"].append(len(bad))
        out["write_s"] = [time.perf_counter() - t0] + [0.0] * (len(out["shard"]) - 1)
        return {k: np.asarray(v) for k, v in out.items()}

    def _table(self, batch: Batch, ok: list[int], keys: np.ndarray, shard: str) -> pa.Table:
        n, value = len(ok), self.schema.field("fused_emb").type.value_type
        now = datetime.now(timezone.utc)
        cols: dict[str, Any] = {
            "key": keys[ok].tolist(), "shard": [shard] * n, "content_hash": [None] * n,
            "model_id": [self.ref.model_id] * n, "model_version": [self.ref.version] * n,
            "created_at": [now] * n,
        }  # fmt: skip
        for m in MODALITIES:
            mask = batch.get(f"{m}_mask") if m in self.ref.modalities else None
            cols[f"has_{m}"] = (
                np.asarray(mask, bool)[ok] if mask is not None else np.zeros(n, bool)
            ).tolist()
        for m in (*self.ref.modalities, "fused"):
            emb = np.asarray(batch[f"{m}_emb"], np.float32)[ok].reshape(n, self.ref.dim)
            flat = pa.array(emb.reshape(-1).astype(value.to_pandas_dtype()), value)
            absent = None if m == "fused" else pa.array(~np.asarray(cols[f"has_{m}"], bool))
            cols[f"{m}_emb"] = pa.FixedSizeListArray.from_arrays(flat, self.ref.dim, mask=absent)
        metas = batch.get("meta")
        parsed = [_meta(_text(metas[i])) if metas is not None else {} for i in ok]
        for f in self.meta_fields:
            cols[f] = [_field(p.get(f)) for p in parsed]
        return pa.table(cols, schema=self.schema)


def _meta(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _field(v: Any) -> str | None:
    if v is None:
        return None
    return v if isinstance(v, str) else json.dumps(v, sort_keys=True)
