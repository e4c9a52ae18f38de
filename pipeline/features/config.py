"""Typed configuration of ``mmpipe features``, loaded from YAML and CLI options."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class EncoderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    # "default" (offline package), a path/URL, "torchvision" (registry, online) or "random".
    # For name "hf" or "open_clip": the model itself, as a folder, an fsspec URL or a hub id.
    weights: str | None = "default"
    # Our image encoders only: "grid" (global average plus a 2x2 grid: keeps where things
    # are) or "avg" (the global average alone). A user's own model pools as it does itself.
    pool: Literal["avg", "grid"] = "grid"


class FeaturesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    section: ClassVar[str] = "features"
    label: ClassVar[str] = "features config"

    shards: str
    output: str
    # Every modality has an encoder that needs no download (docs/features.md, "Defaults").
    image: EncoderConfig | None = EncoderConfig(name="efficientnet_lite0")
    text: EncoderConfig | None = EncoderConfig(name="minilm_bow")
    # resemblyzer's weights ship in its wheel; mel_stats takes none; the audio CNN needs a
    # path/URL or ``weights: random``.
    audio: EncoderConfig | None = EncoderConfig(name="resemblyzer")
    # Modalities left out on purpose. Any other modality that the samples hold must have an
    # encoder: the features stage stops with the fix rather than drop it without a word.
    ignore: list[Literal["image", "text", "audio"]] = []
    tokenizer: str = "minilm"
    max_text_tokens: int = Field(64, ge=4, le=4096)
    # The front end of mel_stats and audio_cnn; resemblyzer fixes its own (16 kHz, 40 bands).
    audio_sample_rate: int = Field(16000, ge=1000)
    audio_n_mels: int = Field(64, ge=8, le=512)
    audio_frames: int = Field(200, ge=16)
    batch_size: int = Field(64, ge=1, le=65536)
    # Encoded bytes per read block; decoded tensors are bounded by batch_size x sample size.
    max_block_bytes: int = Field(64 * 1024 * 1024, ge=1 << 20)
    actors: int = Field(1, ge=1, le=1024)
    actor_num_cpus: float = Field(1.0, gt=0)
    preprocess_num_cpus: float = Field(1.0, gt=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    # Where JPEGs are decoded: "gpu" inside the encoder actor (nvJPEG, no host round trip),
    # "cpu" in preprocessing tasks; "auto" picks gpu when the encoders get GPUs.
    image_decode: Literal["auto", "cpu", "gpu"] = "auto"
    # A sample's error becomes its reject row; "raise" fails the run on the first one instead.
    on_error: Literal["reject", "raise"] = "reject"

    @model_validator(mode="after")
    def _encoders(self) -> FeaturesConfig:
        """Known encoders with weights to load, and at least one modality on."""
        from pipeline.models.encoders import (
            AUDIO_ENCODERS,
            FOREIGN,
            IMAGE_ENCODERS,
            LEARNED_AUDIO,
            TEXT_ENCODERS,
        )

        tables = {"image": IMAGE_ENCODERS, "text": TEXT_ENCODERS, "audio": AUDIO_ENCODERS}
        for off in self.ignore:
            setattr(self, off, None)
        for m, table in tables.items():
            enc = getattr(self, m)
            if enc is None:
                continue
            if enc.name not in table and enc.name not in FOREIGN[m]:
                allowed = sorted(table) + list(FOREIGN[m])
                raise ValueError(f"{m}.name = {enc.name!r} is unknown; allowed: {allowed}")
            if enc.name in FOREIGN[m] and enc.weights in (None, "default", "random"):
                raise ValueError(
                    f"{m}.weights must name the {enc.name} model (a folder, an fsspec URL or a "
                    f"hub id{', or ARCH:TAG' if enc.name == 'open_clip' else ''}), not "
                    f"{enc.weights!r}"
                )
        audio = self.audio
        if audio is not None and audio.name in LEARNED_AUDIO and audio.weights in (None, "default"):
            raise ValueError(
                f"audio.weights is {audio.weights!r} but {audio.name} has no bundled "
                "weights; set a path/URL, or 'random' to ask for random weights explicitly"
            )
        if all(getattr(self, m) is None for m in tables):
            raise ValueError("every modality is off; enable at least one of image, text, audio")
        return self

    def dims(self) -> dict[str, int]:
        """Each enabled modality's feature width. A user's own model is loaded (once per
        process) to measure it, so call this on the driver and hand the result on."""
        from pipeline.models.encoders import (
            AUDIO_ENCODERS,
            IMAGE_ENCODERS,
            POOLS,
            TEXT_ENCODERS,
            is_foreign,
            load_encoder,
        )

        out = {}
        for m, table in (
            ("image", IMAGE_ENCODERS),
            ("text", TEXT_ENCODERS),
            ("audio", AUDIO_ENCODERS),
        ):
            enc = getattr(self, m)
            if enc is None:
                continue
            if is_foreign(enc.name):
                out[m] = load_encoder(m, enc).dim
            else:
                out[m] = table[enc.name] * (POOLS[enc.pool] if m == "image" else 1)
        return out

    def with_absolute_weights(self) -> FeaturesConfig:
        """Weights given as local paths, made absolute: workers may run in another directory.
        Names that are no local path (``default``, ``random``, URLs, hub ids) stay as they are."""
        import os

        from pipeline.io.fs import absolute, is_remote

        update = {}
        for m in ("image", "text", "audio"):
            enc = getattr(self, m)
            w = enc.weights if enc is not None else None
            if w and not is_remote(w) and os.path.exists(w.removeprefix("file://")):
                update[m] = enc.model_copy(update={"weights": absolute(w)})
        return self.model_copy(update=update)

    def decodes_jpeg_in_actor(self) -> bool:
        """Whether images may be decoded next to the encoder (nvJPEG): our own image encoders
        only; a user's model takes its library's preprocessing, on CPUs."""
        from pipeline.models.encoders import is_foreign

        return self.image is not None and not is_foreign(self.image.name)

    def log_mel(self) -> Any:
        """The audio front end (``LogMelConfig``) that the audio encoder takes."""
        from pipeline.models.encoders import AUDIO_FRONT_ENDS
        from pipeline.preprocess.audio import LogMelConfig

        fixed = AUDIO_FRONT_ENDS.get(self.audio.name, {}) if self.audio is not None else {}
        mine = {"sample_rate": self.audio_sample_rate, "n_mels": self.audio_n_mels}
        return LogMelConfig(**{**mine, **fixed, "num_frames": self.audio_frames})

    def audio_seconds(self) -> float:
        """The clip length every audio encoder sees: ``audio_frames`` frames of 10 ms."""
        return self.audio_frames / 100.0


def load_features_config(overrides: dict[str, Any], yaml_path: str | None = None) -> FeaturesConfig:
    """``load_config`` for features."""
    from pipeline.config import load_config

    return load_config(FeaturesConfig, overrides, yaml_path)
