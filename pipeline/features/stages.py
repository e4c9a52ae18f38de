"""Feature stages: CPU preprocessing (tasks), frozen encoders (actor pool), Parquet part writer."""

from __future__ import annotations

import contextlib
import hashlib
import json
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from pipeline.faults import maybe_fail
from pipeline.features.config import FeaturesConfig
from pipeline.io.fs import join
from pipeline.io.parquet import write_table
from pipeline.models.encoders import BOW_DIM
from pipeline.preprocess.audio import AudioLogMel, LogMelConfig
from pipeline.preprocess.image import ImagePreprocess, normalize_uint8
from pipeline.preprocess.text import TextTokenize
from pipeline.stage import Batch, Resources, Stage
from schemas import FEATURE_REJECTS_SCHEMA, features_schema

MODALITIES = ("image", "text", "audio")


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value) if isinstance(value, str) else None


def _errors(batch: Batch, n: int) -> list[tuple[str, str] | None]:
    """The first failing modality of each row as (stage, message), else None."""
    out: list[tuple[str, str] | None] = [None] * n
    for m in MODALITIES:
        for i, err in enumerate(batch.get(f"{m}_error", [None] * n)):
            if err and out[i] is None:
                out[i] = (f"preprocess_{m}", str(err))
    return out


class FeaturePreprocess(Stage):
    """Run each enabled modality's preprocessing; drop the encoded bytes afterwards."""

    name = "feature_preprocess"
    reads: ClassVar[tuple[str, ...]] = ("key", "shard")
    batch_format: ClassVar[str] = "numpy"

    def __init__(
        self, cfg: FeaturesConfig, image_preset: str = "imagenet", decode_images: bool = True
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.parts: list[Stage] = []
        # decode_images=False leaves the JPEG bytes for the encoder actor to decode on its GPU.
        self.keep = () if decode_images or cfg.image is None else ("image",)
        if cfg.image is not None and decode_images:
            # uint8 out: the encoder actor normalises (on its GPU when it has one).
            self.parts.append(ImagePreprocess(image_preset, dtype="uint8"))
        if cfg.text is not None:
            bow = BOW_DIM if cfg.text.name.endswith("_bow") else 0
            self.parts.append(
                TextTokenize(cfg.tokenizer, max_length=cfg.max_text_tokens, bow_dim=bow)
            )
        if cfg.audio is not None:
            lm = LogMelConfig(
                sample_rate=cfg.audio_sample_rate,
                n_mels=cfg.audio_n_mels,
                num_frames=cfg.audio_frames,
            )
            self.parts.append(AudioLogMel(lm))

    @property
    def resources(self) -> Resources:
        return Resources(num_cpus=self.cfg.preprocess_num_cpus)

    def __call__(self, batch: Batch) -> Batch:
        maybe_fail("preprocess")  # reliability tests: this worker dies mid-batch
        for part in self.parts:
            batch = part(batch)
        for raw in ("image", "audio", "text"):
            if raw not in self.keep:
                batch.pop(raw, None)
        n = len(batch["key"])
        errs = _errors(batch, n)
        batch["error"] = np.array([json.dumps(e) if e else "" for e in errs], dtype=object)
        for m in MODALITIES:
            batch.pop(f"{m}_error", None)
        return batch


def _autocast(device: str, amp: str) -> Any:
    import torch

    if amp == "off" or device != "cuda":
        return contextlib.nullcontext()
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return torch.autocast("cuda", dtype=dtype)


class EncodeStage(Stage):
    """Frozen encoders on an actor pool: models load once per actor, GPU when present."""

    name = "encode"
    reads: ClassVar[tuple[str, ...]] = ("key",)
    batch_format: ClassVar[str] = "numpy"

    def __init__(
        self, cfg: FeaturesConfig, gpus: float = 0.0, decode_preset: str | None = None
    ) -> None:
        super().__init__()
        self.cfg, self.gpus = cfg, gpus
        # Set when images arrive encoded: decode here (nvJPEG on a GPU, Pillow on a CPU).
        self.decode_preset = decode_preset

    @property
    def resources(self) -> Resources:
        return Resources(
            num_cpus=self.cfg.actor_num_cpus, num_gpus=self.gpus, actors=self.cfg.actors
        )

    def setup(self) -> None:
        import torch

        from pipeline.models.encoders import audio_encoder, image_encoder, text_encoder

        c = self.cfg
        self.device = "cuda" if (c.device != "cpu" and torch.cuda.is_available()) else "cpu"
        # Intra-op threads = the CPUs this actor was given, so actors do not oversubscribe.
        torch.set_num_threads(max(1, int(c.actor_num_cpus)))
        self.encoders: dict[str, Any] = {}
        if c.image is not None:
            self.encoders["image"] = image_encoder(
                c.image.name, c.image.weights or "default", pool=c.image.pool
            )
        if c.text is not None:
            self.encoders["text"] = text_encoder(c.text.name, c.text.weights or "default")
        if c.audio is not None:
            self.encoders["audio"] = audio_encoder(
                c.audio.name, c.audio.weights, n_mels=c.audio_n_mels
            )
        if self.decode_preset is not None:
            self.image_pre = ImagePreprocess(self.decode_preset, device=self.device, dtype="uint8")
        for m, enc in self.encoders.items():
            enc.to(self.device)
            if m == "image" and self.device == "cuda":
                enc.model = enc.model.to(memory_format=torch.channels_last)

    def __call__(self, batch: Batch) -> Batch:
        import torch

        self.ensure_setup()
        amp = "bf16" if self.cfg.amp == "auto" else self.cfg.amp
        with torch.inference_mode(), _autocast(self.device, amp):
            if "image" in self.encoders:
                enc = self.encoders["image"]
                if "pixel_values" in batch:
                    x = torch.from_numpy(np.ascontiguousarray(batch.pop("pixel_values")))
                    x = x.to(self.device, non_blocking=True)
                else:
                    x = self._decode(batch)
                if x.dtype == torch.uint8:
                    x = normalize_uint8(x, enc.preset or "imagenet")
                if self.device == "cuda":
                    x = x.to(memory_format=torch.channels_last)
                batch["image_emb"] = enc.model(x).float().cpu().numpy()
            if "text" in self.encoders:
                ids = torch.from_numpy(np.asarray(batch.pop("input_ids"))).to(self.device)
                att = torch.from_numpy(np.asarray(batch.pop("attention_mask"))).to(self.device)
                emb = self.encoders["text"].model(ids, att).float().cpu().numpy()
                if "text_bow" in batch:  # minilm_bow: the char n-gram bag from preprocessing
                    emb = np.concatenate(
                        [emb, np.asarray(batch.pop("text_bow"), np.float32)], axis=1
                    )
                batch["text_emb"] = emb
            if "audio" in self.encoders:
                mel = torch.from_numpy(np.asarray(batch.pop("log_mel"))).to(self.device)
                batch.pop("audio_frames_mask", None)
                batch["audio_emb"] = self.encoders["audio"].model(mel).float().cpu().numpy()
        return batch

    def _decode(self, batch: Batch) -> Any:
        x, mask, errors = self.image_pre.tensors(list(batch.pop("image")))
        batch["image_mask"] = mask
        merged = list(batch["error"])
        for i, err in enumerate(errors):
            if err and not merged[i]:
                merged[i] = json.dumps(("encode_image", err))
        batch["error"] = np.array(merged, dtype=object)
        return x


def encoder_info(cfg: FeaturesConfig) -> dict[str, dict[str, Any]]:
    """Encoder ids, weight hashes and dims, as recorded in every file's metadata."""
    stage = EncodeStage(cfg)
    stage.ensure_setup()
    return {
        m: {"encoder": e.encoder_id, "weights": e.weights_id, "dim": e.dim, "preset": e.preset}
        for m, e in stage.encoders.items()
    }


class FeatureWriter(Stage):
    """Write each shard's rows of a batch as one Parquet part named by the hash of its keys.

    A part is committed atomically; a rerun reads the keys of existing parts and skips
    them at read time, so a resumed run neither repeats nor loses a sample.
    """

    name = "feature_writer"
    reads: ClassVar[tuple[str, ...]] = ("key", "shard", "error")
    batch_format: ClassVar[str] = "numpy"

    def __init__(self, cfg: FeaturesConfig, metadata: dict[str, str]) -> None:
        super().__init__()
        self.cfg, self.metadata = cfg, metadata
        self.schema = features_schema(cfg.dims())

    @property
    def resources(self) -> Resources:
        return Resources(num_cpus=0.25)

    def __call__(self, batch: Batch) -> Batch:
        keys = np.asarray(batch["key"]).astype(str)
        shards = np.asarray(batch["shard"]).astype(str)
        errors = list(batch["error"])
        summary: dict[str, list[Any]] = {"shard": [], "part": [], "rows": [], "rejects": []}
        for shard in sorted(set(shards)):
            idx = np.flatnonzero(shards == shard)
            ok = [int(i) for i in idx if not errors[i]]
            bad = [int(i) for i in idx if errors[i]]
            digest = hashlib.sha256("\n".join(keys[idx]).encode()).hexdigest()[:16]
            part = f"parts/{shard}/{digest}.parquet"
            if bad:
                rej = [dict(zip(("stage", "message"), json.loads(errors[i]))) for i in bad]
                table = pa.table(
                    {"key": keys[bad].tolist(), "shard": [shard] * len(bad), "stage": [r["stage"] for r in rej],
                     "reason": ["decode_error"] * len(bad), "message": [r["message"] for r in rej]},
                    schema=FEATURE_REJECTS_SCHEMA,
                )  # fmt: skip
                write_table(
                    join(self.cfg.output, f"rejects/{shard}/{digest}.parquet"),
                    table,
                    FEATURE_REJECTS_SCHEMA,
                    "feature_rejects",
                )
            write_table(
                join(self.cfg.output, part),
                self._table(batch, ok, keys, shard),
                self._tagged(),
                "features",
            )
            summary["shard"].append(shard)
            summary["part"].append(part)
            summary["rows"].append(len(ok))
            summary["rejects"].append(len(bad))
        return {k: np.asarray(v) for k, v in summary.items()}

    def _tagged(self) -> pa.Schema:
        return self.schema.with_metadata({k.encode(): v.encode() for k, v in self.metadata.items()})

    def _table(self, batch: Batch, ok: list[int], keys: np.ndarray, shard: str) -> pa.Table:
        cols: dict[str, Any] = {"key": keys[ok].tolist(), "shard": [shard] * len(ok)}
        for m, dim in self.cfg.dims().items():
            emb = np.asarray(batch[f"{m}_emb"], dtype=np.float32)[ok].reshape(len(ok), dim)
            present = np.asarray(batch[f"{m}_mask"], dtype=bool)[ok]
            flat = pa.array(emb.reshape(-1), pa.float32())
            arr = pa.FixedSizeListArray.from_arrays(flat, dim, mask=pa.array(~present))
            cols[f"{m}_emb"] = arr
        meta = batch.get("meta")
        # An all-null column reaches us from Ray's numpy conversion as NaN floats: keep strings only.
        cols["meta"] = [None] * len(ok) if meta is None else [_text(meta[i]) for i in ok]
        for m in MODALITIES:
            mask = batch.get(f"{m}_mask")
            cols[f"has_{m}"] = (
                np.asarray(mask, dtype=bool)[ok].tolist() if mask is not None else [False] * len(ok)
            )
        return pa.table(cols, schema=self.schema)
