"""Preprocessing with a user model's own processors: transformers (image processor, tokenizer,
feature extractor) and open_clip (eval transform, tokenizer), as CPU stages."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from pipeline.errors import SampleError, rejecting
from pipeline.preprocess.audio import decode_clips
from pipeline.preprocess.image import decode_pil
from pipeline.stage import Batch, Stage

# The columns each modality hands its encoder, whatever the model: fixed names keep the
# stage contracts checkable and the batches rectangular.
AUDIO_COLUMNS = ("audio_values", "audio_attention", "audio_is_longer")


def _error(e: Exception) -> str:
    return f"decode_error: {type(e).__name__}: {e}"[:300]


def _not_the_samples(e: BaseException) -> bool:
    """Out of memory (host or GPU) is the machine's, never a sample's reject."""
    return isinstance(e, MemoryError) or "out of memory" in str(e).lower()


def _target_side(proc: Any) -> int:
    """The largest side a processor resizes to: JPEG draft decoding must still cover it."""
    sides = [224]
    for attr in ("size", "crop_size"):
        value = getattr(proc, attr, None)
        if isinstance(value, dict):
            sides += [int(v) for v in value.values() if isinstance(v, int)]
        elif isinstance(value, int):
            sides.append(value)
    return max(sides)


class ModelImagePreprocess(Stage):
    """``image`` bytes -> ``pixel_values`` float32 from the model's own image transform."""

    name = "model_image_preprocess"
    reads: ClassVar[tuple[str, ...]] = ("image",)
    adds: ClassVar[tuple[str, ...]] = ("pixel_values", "image_mask", "image_error")
    batch_format: ClassVar[str] = "numpy"

    def __init__(self, kind: str, source: str) -> None:
        super().__init__()
        self.kind, self.source = kind, source

    def setup(self) -> None:
        if self.kind == "hf":
            from pipeline.models.hf import model_processor

            proc = model_processor("image", self.source)
            self.side = _target_side(proc)
            self.transform = lambda ims: proc(images=ims, return_tensors="pt")["pixel_values"]
        else:
            import torch

            from pipeline.models.openclip import load

            _, tf, _ = load(self.source, weights=False)
            self.side = 512
            self.transform = lambda ims: torch.stack([tf(im) for im in ims])
        from PIL import Image

        # What the model takes, learned once: a batch with no image still gets that shape.
        self.shape = tuple(self.transform([Image.new("RGB", (8, 8))]).shape[1:])

    def __call__(self, batch: Batch) -> Batch:
        self.ensure_setup()
        n = len(batch["image"])
        errors: list[str | None] = [None] * n
        images: dict[int, Any] = {}
        for i, data in enumerate(batch["image"]):
            if data is None or len(data) == 0:
                continue
            try:
                images[i] = decode_pil(bytes(data), self.side)
            except SampleError as e:  # this sample's reject
                errors[i] = rejecting(e).message
        out = self._transform(images, errors)
        pixels = np.zeros((n, *self.shape), dtype=np.float32)
        for i, x in out.items():
            pixels[i] = x
        mask = np.zeros(n, dtype=bool)
        mask[list(out)] = True
        batch["pixel_values"], batch["image_mask"], batch["image_error"] = pixels, mask, errors
        return batch

    def _transform(self, images: dict[int, Any], errors: list[str | None]) -> dict[int, Any]:
        if not images:
            return {}
        try:
            values = self.transform(list(images.values())).float().numpy()
            return dict(zip(images, values))
        except Exception as first:  # one bad image fails the batch call: find it one by one
            if _not_the_samples(first):
                raise
            out, failed = {}, {}
            for i, im in images.items():
                try:
                    out[i] = self.transform([im]).float().numpy()[0]
                except Exception as e:
                    if _not_the_samples(e):
                        raise
                    failed[i] = _error(e)
            if not out and len(failed) > 1:  # every image fails alone: the processor does
                raise first
            for i, msg in failed.items():
                errors[i] = msg
            return out


class ModelTokenize(Stage):
    """``text`` -> ``input_ids``/``attention_mask`` int64 [N, L] with the model's tokenizer,
    padded to L (the smaller of ``max_length`` and the model's own limit)."""

    name = "model_tokenize"
    reads: ClassVar[tuple[str, ...]] = ("text",)
    adds: ClassVar[tuple[str, ...]] = ("input_ids", "attention_mask", "text_mask")
    batch_format: ClassVar[str] = "numpy"

    def __init__(self, kind: str, source: str, max_length: int) -> None:
        super().__init__()
        self.kind, self.source, self.max_length = kind, source, max_length

    def setup(self) -> None:
        if self.kind == "hf":
            from pipeline.models.hf import model_processor

            tok = model_processor("text", self.source)
            limit = getattr(tok, "model_max_length", None) or self.max_length
            length = min(self.max_length, int(limit)) if limit < 1_000_000 else self.max_length

            def encode(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
                enc = tok(
                    texts,
                    padding="max_length",
                    truncation=True,
                    max_length=length,
                    return_tensors="np",
                )
                ids = np.asarray(enc["input_ids"], np.int64)
                att = enc.get("attention_mask")
                return ids, np.ones_like(ids) if att is None else np.asarray(att, np.int64)

        else:
            from pipeline.models.openclip import load

            _, _, tk = load(self.source, weights=False)

            def encode(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
                ids = tk(texts).numpy().astype(np.int64)  # open_clip pads with id 0
                return ids, (ids != 0).astype(np.int64)

        self.encode = encode

    def __call__(self, batch: Batch) -> Batch:
        self.ensure_setup()
        texts = [t if isinstance(t, str) and t else None for t in batch["text"]]
        ids, att = self.encode([t or "" for t in texts])
        batch["input_ids"], batch["attention_mask"] = ids, att
        batch["text_mask"] = np.asarray([t is not None for t in texts], dtype=bool)
        return batch


class ModelAudioPreprocess(Stage):
    """``audio`` bytes -> the feature extractor's input at its own sampling rate, cropped to
    ``seconds``: ``audio_values`` (raw samples or mel features), ``audio_attention`` (the mask at
    the same rate, from our own lengths where the extractor gives none) and ``audio_is_longer``
    (CLAP's flag; False for other models)."""

    name = "model_audio_preprocess"
    reads: ClassVar[tuple[str, ...]] = ("audio",)
    adds: ClassVar[tuple[str, ...]] = (*AUDIO_COLUMNS, "audio_mask", "audio_error")
    batch_format: ClassVar[str] = "numpy"

    def __init__(self, source: str, seconds: float) -> None:
        super().__init__()
        self.source, self.seconds = source, seconds

    def setup(self) -> None:
        from pipeline.models.hf import model_processor

        self.fe = model_processor("audio", self.source)
        self.rate = int(self.fe.sampling_rate)

    def _extract(self, waves: list[np.ndarray], samples: int) -> Any:
        fe = self.fe
        if hasattr(fe, "n_samples") or hasattr(fe, "nb_max_samples"):
            # Whisper and CLAP pad to a window of their own, which their encoders expect.
            kw: dict[str, Any] = {"return_attention_mask": True} if hasattr(fe, "n_samples") else {}
        else:
            kw = {"padding": "max_length", "max_length": samples, "truncation": True}
            kw["return_attention_mask"] = True
        return fe(waves, sampling_rate=self.rate, return_tensors="np", **kw)

    def __call__(self, batch: Batch) -> Batch:
        self.ensure_setup()
        n = len(batch["audio"])
        samples = max(1, round(self.seconds * self.rate))
        # CLAP crops a longer clip at random (rand_trunc): never hand it one, so that features
        # stay deterministic.
        samples = min(samples, int(getattr(self.fe, "nb_max_samples", samples)))
        clips, errors = decode_clips(batch["audio"], self.rate, samples)
        present = np.asarray([x is not None and len(x) > 0 for x in clips], dtype=bool)
        # An absent clip is a short silence: the extractor still sees a rectangular batch.
        silence = np.zeros(self.rate // 10, np.float32)
        waves = [x if x is not None and p else silence for x, p in zip(clips, present)]
        out = self._extract(waves, samples)
        values = np.asarray(out[self.fe.model_input_names[0]], np.float32)
        att = out.get("attention_mask")
        if att is None and values.ndim == 2:  # raw samples: the real ones are our own lengths
            lengths = np.asarray([len(w) for w in waves])
            att = np.arange(values.shape[-1])[None, :] < lengths[:, None]
        elif att is None:  # a fixed window of features (CLAP): the model takes no mask
            att = np.ones((n, 1), np.int64)
        longer = out.get("is_longer")
        batch["audio_values"] = values
        batch["audio_attention"] = np.asarray(att, np.int64)
        batch["audio_is_longer"] = (
            np.zeros((n, 1), bool) if longer is None else np.asarray(longer, bool).reshape(n, -1)
        )
        batch["audio_mask"], batch["audio_error"] = present, errors
        return batch
