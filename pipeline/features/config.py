"""Typed configuration of ``mmpipe features``, loaded from YAML and CLI options."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.errors import UserError


class EncoderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    # "default" (offline package), a path/URL, "torchvision" (registry, online) or "random".
    weights: str | None = "default"
    # Image encoders only: "avg" (global average) or "grid" (plus a 2x2 grid: keeps position).
    pool: Literal["avg", "grid"] = "avg"


class FeaturesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    shards: str
    output: str
    image: EncoderConfig | None = EncoderConfig(name="efficientnet_lite0")
    text: EncoderConfig | None = EncoderConfig(name="minilm")
    # The audio CNN ships no weights: give a path, or say ``weights: random`` explicitly.
    audio: EncoderConfig | None = None
    tokenizer: str = "minilm"
    max_text_tokens: int = Field(64, ge=4, le=4096)
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

    def dims(self) -> dict[str, int]:
        from pipeline.models.encoders import AUDIO_ENCODERS, IMAGE_ENCODERS, POOLS, TEXT_ENCODERS

        out = {}
        for m, table in (
            ("image", IMAGE_ENCODERS),
            ("text", TEXT_ENCODERS),
            ("audio", AUDIO_ENCODERS),
        ):
            enc = getattr(self, m)
            if enc is not None:
                out[m] = table[enc.name] * (POOLS[enc.pool] if m == "image" else 1)
        return out


def load_features_config(overrides: dict[str, Any], yaml_path: str | None = None) -> FeaturesConfig:
    """Merge YAML (its ``features:`` mapping, if any) with CLI overrides and validate."""
    from pipeline.config import _explain, merged_section

    data = merged_section(overrides, yaml_path, "features")
    try:
        cfg = FeaturesConfig(**data)
    except ValidationError as e:
        raise UserError(
            _explain(e, FeaturesConfig).replace("config:", "features config:")
        ) from None
    from pipeline.models.encoders import AUDIO_ENCODERS, IMAGE_ENCODERS, TEXT_ENCODERS

    for m, table in (("image", IMAGE_ENCODERS), ("text", TEXT_ENCODERS), ("audio", AUDIO_ENCODERS)):
        enc = getattr(cfg, m)
        if enc is not None and enc.name not in table:
            raise UserError(
                f"features config: {m}.name = {enc.name!r} is unknown; allowed: {sorted(table)}"
            )
    if cfg.audio is not None and cfg.audio.weights in (None, "default"):
        raise UserError(
            f"features config: audio.weights is {cfg.audio.weights!r} but {cfg.audio.name} has no bundled "
            "weights; set a path/URL, or 'random' to ask for random weights explicitly"
        )
    if not cfg.dims():
        raise UserError(
            "features config: every modality is off; enable at least one of image, text, audio"
        )
    return cfg
