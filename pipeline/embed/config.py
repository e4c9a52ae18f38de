"""Typed configuration of ``mmpipe embed`` and ``mmpipe refresh``, loaded from YAML and options."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.embeddings import RESERVED


class EmbedConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    section: ClassVar[str] = "embed"  # refresh shares it
    label: ClassVar[str] = "embed config"

    shards: str  # a build output (its index gives per-sample hashes) or a tar pattern
    model: str  # a run directory of mmpipe train, or its export (RUN/export/model.onnx, .pt)
    output: str
    # Recorded in every row; default: the run directory's name and fusion.
    model_id: str | None = None
    batch_size: int = Field(64, ge=1, le=65536)
    # Encoder+model actors. "auto" lets the pool grow to what the cluster has free.
    actors: int | Literal["auto"] = 1
    max_actors: int = Field(8, ge=1, le=1024)  # the ceiling of "auto"
    actor_num_cpus: float = Field(1.0, gt=0)
    preprocess_num_cpus: float = Field(1.0, gt=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    # float16 halves the files; values are L2-normalised so their range suits it.
    storage: Literal["float32", "float16"] = "float32"
    # Fields of each sample's metadata (its .json) copied into string columns.
    metadata_fields: list[str] = Field(default_factory=list)
    row_group_mb: int = Field(32, ge=1, le=1024)
    keep_versions: int = Field(3, ge=1, le=1000)
    max_block_bytes: int = Field(64 * 1024 * 1024, ge=1 << 20)
    # A sample's error becomes its reject row; "raise" fails the run on the first one instead.
    on_error: Literal["reject", "raise"] = "reject"

    @field_validator("metadata_fields")
    @classmethod
    def _fields(cls, v: list[str]) -> list[str]:
        bad = [f for f in v if f in RESERVED or not f.isidentifier()]
        if bad:
            raise ValueError(
                f"{bad} cannot be column names (reserved or not identifiers); rename or drop them"
            )
        if len(set(v)) != len(v):
            raise ValueError("lists a field twice")
        return v


def load_embed_config(overrides: dict[str, Any], yaml_path: str | None = None) -> EmbedConfig:
    """``load_config`` for embed and refresh."""
    from pipeline.config import load_config

    return load_config(EmbedConfig, overrides, yaml_path)
