"""Embed stages: frozen encoders + the fusion model on an actor pool, and the staged part writer."""

from __future__ import annotations

import functools
import json
from datetime import datetime, timezone
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from pipeline.device import autocast
from pipeline.embed.model import EmbeddingModel
from pipeline.errors import Reason, Reject
from pipeline.faults import maybe_fail
from pipeline.features.config import FeaturesConfig
from pipeline.features.stages import EncodeStage
from pipeline.fusion.artifact import RunArtifact
from pipeline.io.parts import PartWriter
from pipeline.io.shards import as_text
from pipeline.stage import Batch, Resources, Stage
from schemas.embeddings import EMBED_REJECTS_SCHEMA, MODALITIES, embeddings_schema


class EmbedStage(Stage):
    """Features from the frozen encoders, then the fusion model: one actor holds both, so a
    batch crosses to the GPU once. Models load once per actor (``setup``)."""

    name = "embed"
    reads: ClassVar[tuple[str, ...]] = ("key",)
    batch_format: ClassVar[str] = "numpy"

    def __init__(
        self,
        fcfg: FeaturesConfig,
        ref: RunArtifact,
        gpus: float = 0.0,
        actors: int = 1,
        max_actors: int | None = None,
        decode_preset: str | None = None,
    ) -> None:
        super().__init__()
        # An export's encoder graphs run in onnxruntime too, in place of the encoders' own.
        graphs = functools.partial(onnx_encoders, ref) if ref.kind == "onnx" else None
        self.encode = EncodeStage(fcfg, gpus, decode_preset=decode_preset, graphs=graphs)
        self.ref, self.gpus, self.actors, self.max_actors = ref, gpus, actors, max_actors
        self.amp = fcfg.amp

    @property
    def resources(self) -> Resources:
        return Resources(
            num_cpus=self.encode.resources.num_cpus,
            num_gpus=self.gpus,
            actors=self.actors,
            max_actors=self.max_actors,
        )

    def inputs(self) -> tuple[str, ...]:
        return self.encode.inputs()

    def outputs(self) -> tuple[str, ...]:
        return (*self.encode.outputs(), "fused_emb")

    def drops(self) -> tuple[str, ...]:
        return self.encode.drops()

    def setup(self) -> None:
        # Checked here, where the encoders are loaded anyway: loading them on the driver as
        # well cost ~10 s per run on 2 CPUs (docs/benchmarks.md).
        self.ref.check_encoders(self.encode.identities())
        self.device = self.encode.device
        self.model = EmbeddingModel(self.ref, self.device, self.encode.threads)

    def __call__(self, batch: Batch) -> Batch:
        import torch

        self.ensure_setup()
        maybe_fail("embed_actor")  # reliability tests: the actor's process dies mid-batch
        batch = self.encode.run(batch)
        n = len(batch["key"])
        feats, masks = {}, {}
        for m in self.ref.modalities:
            x = torch.from_numpy(np.asarray(batch.pop(f"{m}_emb"), dtype=np.float32).reshape(n, -1))
            has = np.asarray(batch.get(f"{m}_mask", np.zeros(n, bool)), dtype=bool)
            x[torch.from_numpy(~has)] = 0.0  # as in training: an absent modality is zeros
            feats[m] = x.to(self.device, non_blocking=True)
            masks[m] = torch.from_numpy(has).to(self.device)
        with torch.inference_mode(), autocast(self.amp, self.device):
            fused, embs = self.model(feats, masks)
        batch["fused_emb"] = fused.cpu().numpy()
        for m in self.ref.modalities:
            batch[f"{m}_emb"] = embs[m].cpu().numpy()
        return batch


class EmbedWriter(PartWriter):
    """Staged embeddings parts, which the merge step later joins into one file per shard. Rows
    that failed preprocessing, or have none of the model's modalities, become reject rows."""

    name = "embed_writer"

    def inputs(self) -> tuple[str, ...]:
        mods = self.ref.modalities
        return (*self.reads, "fused_emb", *(f"{m}_emb" for m in mods), *(f"{m}_mask" for m in mods))

    def __init__(
        self, staging: str, ref: RunArtifact, storage: str, meta_fields: list[str]
    ) -> None:
        self.ref, self.meta_fields = ref, tuple(meta_fields)
        schema = embeddings_schema(ref.dim, ref.modalities, storage, self.meta_fields)
        super().__init__(staging, schema, "embeddings", EMBED_REJECTS_SCHEMA, "embed_rejects")

    def rejects_of(self, batch: Batch) -> list[Reject | None]:
        found = super().rejects_of(batch)
        present = np.zeros(len(found), bool)
        for m in self.ref.modalities:
            present |= np.asarray(batch.get(f"{m}_mask", present), dtype=bool)
        none = Reject("embed", Reason.NO_MODALITY, "no modality")
        return [r if r is not None or present[i] else none for i, r in enumerate(found)]

    def rows_table(self, batch: Batch, ok: list[int], keys: np.ndarray, shard: str) -> pa.Table:
        n, value = len(ok), self.schema.field("fused_emb").type.value_type
        now = datetime.now(timezone.utc)
        cols: dict[str, Any] = {
            "key": keys[ok].tolist(),
            "shard": [shard] * n,
            "content_hash": [None] * n,
            "model_id": [self.ref.model_id] * n,
            "model_version": [self.ref.version] * n,
            "created_at": [now] * n,
        }
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
        parsed = [_meta(as_text(metas[i])) if metas is not None else {} for i in ok]
        for f in self.meta_fields:
            cols[f] = [_field(p.get(f)) for p in parsed]
        return pa.table(cols, schema=self.schema)


def onnx_encoders(ref: RunArtifact, device: str, threads: int) -> dict[str, Any]:
    """The encoder graphs that ``mmpipe export`` wrote beside the ONNX model, by modality."""
    from pipeline.io.fs import dirname, exists, join, read_bytes
    from pipeline.models.onnx_runtime import OnnxModel

    folder, found = dirname(ref.weights_url), {}
    for m in ref.modalities:
        path = join(folder, f"{m}_encoder.onnx")
        if exists(path):
            found[m] = OnnxModel(read_bytes(path), device, threads=threads, name=path)
    return found


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
