"""Config loading for every job (YAML plus CLI options, one-line errors) and the build config."""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipeline.errors import UserError
from pipeline.fingerprint import fingerprint

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def parse_size(value: int | str) -> int:
    """Parse ``1000``, ``"64MB"`` or ``"1GiB"`` into bytes."""
    if isinstance(value, int):
        return value
    m = _SIZE_RE.match(str(value))
    if not m:
        raise ValueError(f"{value!r} is not a size; write e.g. 256MB or 1GiB")
    unit = (m.group(2) or "").lower()
    binary = "i" in unit
    base = unit[:1] if unit[:1] in "kmgt" and unit[:1] else ""
    factor = (1024 ** "_kmgt".index(base)) if (binary and base) else _UNITS[base]
    return int(float(m.group(1)) * factor)


class BuildConfig(BaseModel):
    """Everything that decides what ``mmpipe build`` writes. Field names match the YAML keys."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    section: ClassVar[str] = "build"  # its mapping in a job's YAML
    label: ClassVar[str] = "config"  # how its errors begin

    input: str
    output: str
    input_format: Literal["auto", "jsonl", "csv", "parquet", "sidecar", "tar"] = "auto"
    image_column: str = "image"
    audio_column: str = "audio"
    text_column: str = "text"
    key_column: str = "key"
    # Manifests usually hold captions inline; "auto" treats a value as a path only when it
    # is a single token ending in .txt, so that a real caption is never fetched as a file.
    text_source: Literal["auto", "inline", "path"] = "auto"
    shard_samples: int = Field(1000, ge=1, le=1_000_000)
    shard_bytes: int = Field(parse_size("512MB"), ge=1024)
    resize: int | None = Field(None, ge=1, le=65535)
    resize_mode: Literal["no", "keep_ratio", "keep_ratio_largest", "center_crop", "border"] = (
        "keep_ratio"
    )
    upscale: bool = False
    # "area" = box average when shrinking (img2dataset's INTER_AREA), Lanczos when enlarging.
    resize_filter: Literal["area", "bilinear", "bicubic", "lanczos"] = "area"
    image_format: Literal["keep", "jpg", "png", "webp"] = "keep"
    image_quality: int = Field(95, ge=1, le=100)
    min_image_size: int = Field(8, ge=1)
    max_image_size: int = Field(16384, ge=1)
    # PIL's own default bomb threshold (~89.5 Mpx); images over it are never decoded.
    max_image_pixels: int = Field(89_478_485, ge=1)
    audio_rate: int | None = Field(None, ge=1000, le=384_000)
    # One audio member type per build: HF datasets' WebDataset loader refuses mixed types.
    audio_format: Literal["flac", "keep"] = "flac"
    min_audio_seconds: float = Field(0.0, ge=0)
    max_audio_seconds: float = Field(3600.0, gt=0)
    max_text_chars: int = Field(100_000, ge=1)
    max_file_bytes: int = Field(parse_size("256MB"), ge=1)
    sample_timeout_s: float = Field(30.0, gt=0)
    on_modality_error: Literal["reject", "drop"] = "reject"
    # A sample's error becomes its reject row; "raise" fails the run on the first one instead
    # (tests, debugging a corpus). Our own bugs fail the run under either.
    on_error: Literal["reject", "raise"] = "reject"
    allow_local_refs: bool = False
    # URLs from the data reach public addresses only: a manifest nobody here wrote must not
    # make the cluster fetch its own metadata service, dashboard or internal stores. Networks
    # (10.0.0.0/8, 127.0.0.1) or host names (minio.internal, *.corp) listed here are let through.
    allow_hosts: list[str] = Field(default_factory=list)
    # The most HTTP requests in flight per host from one chunk task: a politeness ceiling.
    # Below it the fetcher finds the number itself, from latency and errors (docs/build.md).
    fetch_concurrency: int = Field(128, ge=1, le=1024)
    num_cpus: float = Field(1.0, gt=0, le=64)
    # Rows one dedup task holds: above it, dedup runs as passes over hash partitions of at
    # most this many rows each (docs/build.md). It changes the work split, never the output.
    dedup_partition_rows: int = Field(1_000_000, ge=1)
    # Reject images whose pHash is within near_dup_distance bits of an earlier image's. Off
    # by default: pHash sees grey structure only, so images that differ in colour collide
    # (half of the sample corpus would), and choosing what is "the same" is a curation call.
    near_duplicates: bool = False
    # 4 keeps every resized, re-encoded or brightened copy of scikit-image's photos and no
    # pair of different ones; 5 bands of 12-13 bits keep buckets small (docs/build.md).
    near_dup_distance: int = Field(4, ge=0, le=16)

    @field_validator("shard_bytes", "max_file_bytes", mode="before")
    @classmethod
    def _sizes(cls, v: Any) -> int:
        return parse_size(v)

    @field_validator("allow_hosts", mode="before")
    @classmethod
    def _allow_hosts(cls, v: Any) -> Any:
        from pipeline.io.netguard import parse_allow

        items = v.split(",") if isinstance(v, str) else v  # --allow-hosts 10.0.0.0/8,minio
        if isinstance(items, list):
            items = [str(i).strip() for i in items if str(i).strip()]
            parse_allow(items)  # a ValueError here names the entry and the two forms
        return items

    @field_validator("input", "output")
    @classmethod
    def _nonempty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v.strip()

    def fingerprint(self) -> str:
        """Hash of every field that changes the output (not where it is written)."""
        from schemas import BUILD_SCHEMA_VERSION
        from schemas.work import WORK_LAYOUT_VERSION

        fields = self.model_dump(
            exclude={
                "output",
                "fetch_concurrency",
                "num_cpus",
                "dedup_partition_rows",
                "on_error",
            }
        )
        # A schema bump changes the fingerprint, so staged chunks are never reused across it.
        fields["_schema_version"] = BUILD_SCHEMA_VERSION
        fields["_work_layout"] = WORK_LAYOUT_VERSION
        return fingerprint(fields)


Config = TypeVar("Config", bound=BaseModel)


def explain(
    err: ValidationError,
    model: type[BaseModel],
    cli: set[str] | None = None,
    yaml_path: str | None = None,
) -> str:
    """Turn pydantic's report into one line that names the field, the value and the fix.
    ``cli``: the fields the command line set (None: any may have been); a bad value from
    the YAML file names the file, not a flag the command may not have."""
    label = getattr(model, "label", "config")
    first = err.errors()[0]
    field = ".".join(str(p) for p in first["loc"])
    value = first.get("input")
    msg = first["msg"]
    ctx = first.get("ctx") or {}
    if not field:  # a check across fields (a model validator): its own message says it all
        return f"{label}: {msg.removeprefix('Value error, ')}"
    if first["type"] == "literal_error" and "expected" in ctx:
        msg = f"allowed: {ctx['expected']}"
    elif first["type"] == "extra_forbidden":
        allowed = ", ".join(sorted(model.model_fields))
        return f"{label}: unknown field {field!r}; known fields: {allowed}"
    flag = "--" + field.replace("_", "-")
    if first["type"] == "missing":  # pydantic's input here is the whole mapping: not shown
        return f"{label}: {field} is required; pass {flag} or set {field}: in the YAML file"
    if len(first["loc"]) > 1:  # inside a mapping or a list: only the YAML file can set it
        return f"{label}: {field} = {value!r} is invalid: {msg}"
    if cli is not None and field not in cli and yaml_path:
        return f"{label}: {field} = {value!r} in {yaml_path} is invalid: {msg}"
    return f"{label}: {field} ({flag}) = {value!r} is invalid: {msg}"


def load_config(
    model: type[Config], overrides: dict[str, Any], yaml_path: str | None = None
) -> Config:
    """Merge the YAML file's mapping for ``model.section`` (or the whole file) with the CLI
    options given, and validate: the one loader every job and ``mmpipe submit`` use.

    Raises:
        UserError: with one line naming the bad field, its value and what is allowed.
    """
    data = merged_section(overrides, yaml_path, getattr(model, "section", ""))
    try:
        return model(**data)
    except ValidationError as e:
        cli = {k for k, v in overrides.items() if v is not None}
        raise UserError(explain(e, model, cli, yaml_path)) from None


def options(args: Any, names: tuple[str, ...]) -> dict[str, Any]:
    """The CLI options ``names`` as config overrides (an option not given is None: not set)."""
    return {name: getattr(args, name, None) for name in names}


def merged_section(
    overrides: dict[str, Any], yaml_path: str | None, section: str
) -> dict[str, Any]:
    """The YAML file's ``section:`` mapping (or the whole file), then the CLI options given."""
    data: dict[str, Any] = {}
    if yaml_path:
        data = load_yaml(yaml_path)
        data = data.get(section, data)
    data.update({k: v for k, v in overrides.items() if v is not None})
    return data


def load_build_config(overrides: dict[str, Any], yaml_path: str | None = None) -> BuildConfig:
    """``load_config`` for the build."""
    return load_config(BuildConfig, overrides, yaml_path)


def load_yaml(path: str) -> dict[str, Any]:
    """Read a YAML mapping safely (never ``yaml.load``), from any fsspec URL."""
    import fsspec
    import yaml

    try:
        with fsspec.open(path, "r", encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}; check the --config path") from None
    except yaml.YAMLError as e:
        raise UserError(f"config file {path} is not valid YAML: {e}".splitlines()[0]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of field: value")
    return data
