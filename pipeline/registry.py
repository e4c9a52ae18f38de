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


def _table() -> dict[str, Job]:
    # Config modules are pydantic only (no torch, no Ray): cheap to import for the CLI.
    from pipeline.config import BuildConfig
    from pipeline.embed.config import EmbedConfig
    from pipeline.features.config import FeaturesConfig
    from pipeline.train.config import TrainConfig

    rows = [
        ("build", "jobs.build_dataset", BuildConfig),
        ("features", "jobs.extract_features", FeaturesConfig),
        ("train", "jobs.train_fusion", TrainConfig),
        ("embed", "jobs.embed_bulk", EmbedConfig),
        ("refresh", "jobs.nightly_refresh", EmbedConfig),
    ]
    return {name: Job(name, module, cfg) for name, module, cfg in rows}


JOB_NAMES = ("build", "features", "train", "embed", "refresh")


def job(name: str) -> Job:
    """The job called ``name``.

    Raises:
        UserError: no such job.
    """
    table = _table()
    if name not in table:
        raise UserError(f"unknown job {name!r}; choose one of {sorted(table)}")
    return table[name]
