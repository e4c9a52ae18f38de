"""CurateConfig: which filters run, their thresholds, and SemDeDup's settings (docs/curate.md)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.config import load_config


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True


class ImageFilter(_Section):
    """Read from the build's index: no image is decoded."""

    # Below 32 px an encoder at 224 px sees an upsampled blur (docs/curate.md).
    min_side: int = Field(default=32, ge=1)
    # DataComp's basic filter: a long side over 3x the short one is a banner or a strip.
    max_aspect: float = Field(default=3.0, ge=1.0)


class CaptionFilter(_Section):
    """Counts and language of the sample's text member; rows without text pass."""

    min_words: int = Field(default=2, ge=0)
    max_words: int | None = Field(default=None, ge=1)
    min_chars: int = Field(default=5, ge=0)
    max_chars: int | None = Field(default=None, ge=1)
    # ISO 639-1 codes that py3langid returns (en, fr, zh...); empty: any language is kept.
    languages: list[str] = list()
    # Below this probability the identification is a guess, and the caption is kept.
    min_language_score: float = Field(default=0.5, ge=0.0, le=1.0)


class SimilarityFilter(_Section):
    """Cosine between the sample's image and text embeddings from ``vectors`` (one space)."""

    enabled: bool = False
    threshold: float | None = Field(default=None, ge=-1.0, le=1.0)
    # DataComp's best CLIP-score filter at medium scale keeps the top 30% (docs/curate.md).
    top_fraction: float | None = Field(default=0.3, gt=0.0, le=1.0)


class AudioFilter(_Section):
    min_seconds: float = Field(default=0.2, ge=0.0)
    max_seconds: float | None = Field(default=None, gt=0.0)
    # A clip whose 25 ms frames are almost all silent carries nothing to learn from.
    max_silent_fraction: float = Field(default=0.95, ge=0.0, le=1.0)
    # No SNR is safe for every corpus: measured and shown in the report, off by default.
    min_snr_db: float | None = None


class SemDedup(_Section):
    """SemDeDup over one embedding column of ``vectors``: k-means, then pairwise per cluster."""

    column: str = "auto"  # auto: image_emb, else fused_emb, else text_emb, else audio_emb
    # Measured on real photographs and their copies (docs/curate.md): the best F1 at the
    # features defaults, with precision 0.97.
    eps: float = Field(default=0.1, gt=0.0, lt=1.0)
    keep: Literal["first", "nearest", "farthest"] = "first"
    clusters: int | None = Field(default=None, ge=1)  # None: one per cluster_rows rows
    cluster_rows: int = Field(default=5000, ge=2)
    sample_rows: int = Field(default=50_000, ge=10)
    seed: int = 0


class CurateConfig(BaseModel):
    """``mmpipe curate BUILD --output CURATED``: every field, with its default."""

    model_config = ConfigDict(extra="forbid")
    section: ClassVar[str] = "curate"
    label: ClassVar[str] = "curate config"

    build: str
    output: str
    # A features output (mmpipe features) or embeddings folder (mmpipe embed): the vectors
    # that the similarity filter and SemDeDup read, joined to the build by shard and key.
    vectors: str | None = None
    image: ImageFilter = Field(default_factory=ImageFilter)
    caption: CaptionFilter = Field(default_factory=CaptionFilter)
    similarity: SimilarityFilter = Field(default_factory=SimilarityFilter)
    audio: AudioFilter = Field(default_factory=AudioFilter)
    # "module:function", given each shard's rows as a dict of lists; returns (keep, reasons).
    predicate: str | None = None
    semdedup: SemDedup = Field(default_factory=SemDedup)
    # Measure and place tasks are CPU-bound: a whole core each ran 1.3x faster than half
    # (docs/benchmarks.md, curate).
    num_cpus: float = Field(default=1.0, gt=0, le=64)

    @model_validator(mode="after")
    def _needs_vectors(self) -> CurateConfig:
        if self.similarity.enabled and self.vectors is None:
            raise ValueError(
                "similarity.enabled needs vectors: a features or embeddings folder of a paired "
                "model (mmpipe zero-shot CLIP, then mmpipe embed)"
            )
        if self.predicate is not None and ":" not in self.predicate:
            raise ValueError(f"predicate {self.predicate!r} must be module:function")
        return self

    def semdedup_on(self) -> bool:
        return self.semdedup.enabled and self.vectors is not None

    def similarity_cut(self) -> tuple[str, float] | None:
        """("threshold", t) or ("top_fraction", f): a given threshold wins over the fraction."""
        s = self.similarity
        if not s.enabled:
            return None
        if s.threshold is not None:
            return ("threshold", s.threshold)
        return ("top_fraction", float(s.top_fraction or 1.0))

    def fingerprint(self) -> str:
        """What decides the output: every field but where it goes and how it is spread."""
        from pipeline.fingerprint import fingerprint

        return fingerprint({**self.model_dump(exclude={"output", "num_cpus"}), "v": 1})


def load_curate_config(overrides: dict[str, Any], yaml_path: str | None = None) -> CurateConfig:
    """``load_config`` for curate."""
    return load_config(CurateConfig, overrides, yaml_path)
