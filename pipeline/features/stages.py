"""Feature stages: CPU preprocessing (tasks), frozen encoders (actor pool), Parquet part writer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from pipeline.device import autocast, local_device
from pipeline.errors import Reason, Reject, UserError
from pipeline.faults import maybe_fail
from pipeline.features.config import FeaturesConfig
from pipeline.io.parts import PartWriter
from pipeline.io.shards import as_text
from pipeline.models.encoders import BOW_DIM, is_foreign, load_encoder
from pipeline.models.processors import (
    AUDIO_COLUMNS,
    ModelAudioPreprocess,
    ModelImagePreprocess,
    ModelTokenize,
)
from pipeline.preprocess.audio import AudioLogMel
from pipeline.preprocess.image import ImagePreprocess, normalize_uint8
from pipeline.preprocess.text import TextTokenize
from pipeline.stage import Batch, Resources, Stage
from schemas import FEATURE_REJECTS_SCHEMA, features_schema

MODALITIES = ("image", "text", "audio")


def _default_encoder(m: str) -> str:
    enc = FeaturesConfig.model_fields[m].default
    return f"{{name: {enc.name}}}"


def _errors(batch: Batch, n: int) -> list[str]:
    """The first failing modality of each row as a Reject (JSON), else ""."""
    out = [""] * n
    for m in MODALITIES:
        for i, err in enumerate(batch.get(f"{m}_error", [None] * n)):
            if err and not out[i]:
                out[i] = Reject(f"preprocess_{m}", Reason.DECODE_ERROR, str(err)).to_json()
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
        self.steps: list[Stage] = []
        # decode_images=False leaves the JPEG bytes for the encoder actor to decode on its GPU.
        self.keep = () if decode_images or cfg.image is None else ("image",)
        # A user's own model preprocesses as its library does (resize, tokenizer, extractor).
        image, text, audio = cfg.image, cfg.text, cfg.audio
        if image is not None and is_foreign(image.name):
            self.steps.append(ModelImagePreprocess(image.name, str(image.weights)))
        elif image is not None and decode_images:
            # uint8 out: the encoder actor normalises (on its GPU when it has one).
            self.steps.append(ImagePreprocess(image_preset, dtype="uint8"))
        if text is not None and is_foreign(text.name):
            self.steps.append(ModelTokenize(text.name, str(text.weights), cfg.max_text_tokens))
        elif text is not None:
            bow = BOW_DIM if text.name.endswith("_bow") else 0
            self.steps.append(
                TextTokenize(cfg.tokenizer, max_length=cfg.max_text_tokens, bow_dim=bow)
            )
        if audio is not None and is_foreign(audio.name):
            self.steps.append(ModelAudioPreprocess(str(audio.weights), cfg.audio_seconds()))
        elif audio is not None:
            self.steps.append(AudioLogMel(cfg.log_mel()))

    @property
    def resources(self) -> Resources:
        return Resources(num_cpus=self.cfg.preprocess_num_cpus)

    def _unencoded(self) -> tuple[str, ...]:
        """Modalities with no encoder that were not ignored on purpose: checked per batch."""
        return tuple(
            m for m in MODALITIES if getattr(self.cfg, m) is None and m not in self.cfg.ignore
        )

    def inputs(self) -> tuple[str, ...]:
        needs = (c for step in self.steps for c in step.inputs())
        return tuple(dict.fromkeys((*self.reads, *needs, *self._unencoded())))

    def outputs(self) -> tuple[str, ...]:
        made = [c for step in self.steps for c in step.outputs() if not c.endswith("_error")]
        return (*made, "error")

    def drops(self) -> tuple[str, ...]:
        errors = tuple(f"{m}_error" for m in MODALITIES)
        return (*(raw for raw in MODALITIES if raw not in self.keep), *errors)

    def _check_present(self, batch: Batch) -> None:
        """A modality that the samples hold and no encoder takes is a mistake, not a choice."""
        for m in self._unencoded():
            held = next(
                (k for k, v in zip(batch["key"], batch[m]) if v is not None and len(v)), None
            )
            if held is not None:
                raise UserError(
                    f"sample {held!r} holds {m}, but features.{m} is off: set "
                    f"features.{m} (the default: {_default_encoder(m)}), or add {m} to "
                    "features.ignore to leave it out on purpose"
                )

    def __call__(self, batch: Batch) -> Batch:
        maybe_fail("preprocess")  # reliability tests: this worker dies mid-batch
        self._check_present(batch)
        for step in self.steps:
            batch = step.run(batch)
        for raw in ("image", "audio", "text"):
            if raw not in self.keep:
                batch.pop(raw, None)
        batch["error"] = np.array(_errors(batch, len(batch["key"])), dtype=object)
        for m in MODALITIES:
            batch.pop(f"{m}_error", None)
        return batch


class EncodeStage(Stage):
    """Frozen encoders on an actor pool: models load once per actor, GPU when present."""

    name = "encode"
    reads: ClassVar[tuple[str, ...]] = ("key",)
    batch_format: ClassVar[str] = "numpy"

    def __init__(
        self,
        cfg: FeaturesConfig,
        gpus: float = 0.0,
        decode_preset: str | None = None,
        graphs: Callable[[str, int], dict[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        self.cfg, self.gpus = cfg, gpus
        # Set when images arrive encoded: decode here (nvJPEG on a GPU, Pillow on a CPU).
        self.decode_preset = decode_preset
        # (device, threads) -> modality: a module that replaces that encoder's own (an
        # export's ONNX graphs); called once per actor, after the encoders are loaded.
        self.graphs = graphs

    @property
    def threads(self) -> int:
        """Intra-op threads: the CPUs each actor is given, so actors do not oversubscribe."""
        return max(1, int(self.cfg.actor_num_cpus))

    def identities(self) -> dict[str, dict[str, Any]]:
        """Each loaded encoder's id, weights and width: what a trained model must match."""
        self.ensure_setup()
        return {
            m: {"encoder": e.encoder_id, "weights": e.weights_id, "dim": e.dim}
            for m, e in self.encoders.items()
        }

    @property
    def resources(self) -> Resources:
        return Resources(
            num_cpus=self.cfg.actor_num_cpus, num_gpus=self.gpus, actors=self.cfg.actors
        )

    def _consumed(self) -> dict[str, tuple[str, ...]]:
        """What each enabled encoder takes from preprocessing (and removes from the batch)."""
        c = self.cfg
        image = ("pixel_values",) if self.decode_preset is None else ("image", "error")
        text = ("input_ids", "attention_mask")
        audio = AUDIO_COLUMNS if c.audio is not None and is_foreign(c.audio.name) else ("log_mel",)
        found = {"image": image, "text": text, "audio": audio}
        return {m: cols for m, cols in found.items() if getattr(c, m) is not None}

    def inputs(self) -> tuple[str, ...]:
        return (*self.reads, *(col for cols in self._consumed().values() for col in cols))

    def outputs(self) -> tuple[str, ...]:
        decoded = ("image_mask",) if self.decode_preset and self.cfg.image else ()
        return (*(f"{m}_emb" for m in self._consumed()), *decoded)

    def drops(self) -> tuple[str, ...]:
        consumed = {c for cols in self._consumed().values() for c in cols} - {"error"}
        return (*sorted(consumed), "text_bow", "audio_frames_mask")

    def setup(self) -> None:
        import torch

        c = self.cfg
        self.device = local_device(c.device)
        torch.set_num_threads(self.threads)
        self.encoders: dict[str, Any] = {
            m: load_encoder(m, getattr(c, m), n_mels=c.log_mel().n_mels)
            for m in MODALITIES
            if getattr(c, m) is not None
        }
        if self.decode_preset is not None:
            self.image_pre = ImagePreprocess(self.decode_preset, device=self.device, dtype="uint8")
        for m, enc in self.encoders.items():
            enc.to(self.device)
            if m == "image":  # NHWC convolutions: 1.6x on 2 CPUs for EfficientNet-Lite0 too
                enc.model = enc.model.to(memory_format=torch.channels_last)
        for m, graph in (self.graphs(self.device, self.threads) if self.graphs else {}).items():
            self.encoders[m].model = graph

    def __call__(self, batch: Batch) -> Batch:
        import torch

        self.ensure_setup()
        maybe_fail("encode")  # the error-contract tests: a GPU out of memory in the encoders
        with torch.inference_mode(), autocast(self.cfg.amp, self.device):
            if "image" in self.encoders:
                enc = self.encoders["image"]
                if "pixel_values" in batch:
                    x = torch.from_numpy(np.ascontiguousarray(batch.pop("pixel_values")))
                    x = x.to(self.device, non_blocking=True)
                else:
                    x = self._decode(batch)
                if x.dtype == torch.uint8:
                    x = normalize_uint8(x, enc.preset or "imagenet")
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
                enc = self.encoders["audio"]
                cols = enc.inputs or ("log_mel",)
                xs = [torch.from_numpy(np.asarray(batch.pop(c))).to(self.device) for c in cols]
                batch.pop("audio_frames_mask", None)
                batch["audio_emb"] = enc.model(*xs).float().cpu().numpy()
        return batch

    def _decode(self, batch: Batch) -> Any:
        x, mask, errors = self.image_pre.tensors(list(batch.pop("image")))
        batch["image_mask"] = mask
        merged = list(batch["error"])
        for i, err in enumerate(errors):
            if err and not merged[i]:
                merged[i] = Reject("encode_image", Reason.DECODE_ERROR, err).to_json()
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


class FeatureWriter(PartWriter):
    """Features parts: one fixed-size list per modality, its mask, and the sample's metadata."""

    name = "feature_writer"

    def inputs(self) -> tuple[str, ...]:
        dims = self.dims
        return (*self.reads, *(f"{m}_emb" for m in dims), *(f"{m}_mask" for m in dims))

    def __init__(self, cfg: FeaturesConfig, metadata: dict[str, str]) -> None:
        self.cfg = cfg
        # Measured here, on the driver: a worker must not load a user's model to learn a width.
        self.dims = cfg.dims()
        schema = features_schema(self.dims).with_metadata(
            {k.encode(): v.encode() for k, v in metadata.items()}
        )
        super().__init__(cfg.output, schema, "features", FEATURE_REJECTS_SCHEMA, "feature_rejects")

    def rows_table(self, batch: Batch, ok: list[int], keys: np.ndarray, shard: str) -> pa.Table:
        cols: dict[str, Any] = {"key": keys[ok].tolist(), "shard": [shard] * len(ok)}
        for m, dim in self.dims.items():
            emb = np.asarray(batch[f"{m}_emb"], dtype=np.float32)[ok].reshape(len(ok), dim)
            present = np.asarray(batch[f"{m}_mask"], dtype=bool)[ok]
            flat = pa.array(emb.reshape(-1), pa.float32())
            cols[f"{m}_emb"] = pa.FixedSizeListArray.from_arrays(flat, dim, mask=pa.array(~present))
        meta = batch.get("meta")
        # An all-null column reaches us from Ray's numpy conversion as NaN floats: strings only.
        cols["meta"] = [None] * len(ok) if meta is None else [as_text(meta[i]) for i in ok]
        for m in MODALITIES:
            mask = batch.get(f"{m}_mask")
            cols[f"has_{m}"] = (
                np.asarray(mask, dtype=bool)[ok].tolist() if mask is not None else [False] * len(ok)
            )
        return pa.table(cols, schema=self.schema)
