"""The jobs: each one's entrypoint module and the typed config it validates (one table)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.errors import UserError


@dataclass(frozen=True)
class Job:
    """A job that ``python -m ENTRYPOINT --config F`` runs, locally or on a cluster."""

    name: str
    entrypoint: str
    config: type[Any]  # a pydantic model with ``section`` (its YAML mapping) and ``label``

    @property
    def section(self) -> str:
        return str(self.config.section)

    def load_config(self, yaml_path: str, overrides: dict[str, Any] | None = None) -> Any:
        """Exactly what the entrypoint validates (``pipeline.config.load_config``)."""
        from pipeline.config import load_config

        return load_config(self.config, overrides or {}, yaml_path)


# name, entrypoint module, config class ("module:Class", imported when the job is asked for).
_ROWS = (
    ("build", "jobs.build_dataset", "pipeline.config:BuildConfig"),
    ("curate", "jobs.curate", "pipeline.curate.config:CurateConfig"),
    ("features", "jobs.extract_features", "pipeline.features.config:FeaturesConfig"),
    ("train", "jobs.train_fusion", "pipeline.train.config:TrainConfig"),
    ("embed", "jobs.embed_bulk", "pipeline.embed.config:EmbedConfig"),
    ("refresh", "jobs.nightly_refresh", "pipeline.embed.config:EmbedConfig"),
)
JOB_NAMES = tuple(name for name, _, _ in _ROWS)


def job(name: str) -> Job:
    """The job called ``name``.

    Raises:
        UserError: no such job.
    """
    import importlib

    for row, module, config in _ROWS:
        if row == name:
            # Config modules are pydantic only (no torch, no Ray): cheap to import.
            mod, cls = config.split(":")
            return Job(name, module, getattr(importlib.import_module(mod), cls))
    raise UserError(f"unknown job {name!r}; choose one of {sorted(JOB_NAMES)}")
