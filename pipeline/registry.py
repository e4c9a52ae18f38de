"""The jobs: each one's entrypoint module, typed config and run function (one table that the
CLI, ``jobs/`` and ``mmpipe submit`` read)."""

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
    runner: str  # "module:function": run(cfg, *, address, quiet, **flags) -> summary
    # What the run function takes besides the config: always-on keyword arguments, and the
    # flags (--overwrite, --resume) its entrypoint offers.
    fixed: tuple[tuple[str, Any], ...] = ()
    flags: tuple[str, ...] = ()
    # The config's fields that an entrypoint may override on its command line (paths).
    paths: tuple[str, ...] = ()

    def run(self, cfg: Any, **kwargs: Any) -> Any:
        """The job's run function on ``cfg`` (imported when asked for)."""
        import importlib

        mod, fn = self.runner.split(":")
        return getattr(importlib.import_module(mod), fn)(cfg, **dict(self.fixed), **kwargs)

    @property
    def section(self) -> str:
        return str(self.config.section)

    def load_config(self, yaml_path: str, overrides: dict[str, Any] | None = None) -> Any:
        """Exactly what the entrypoint validates (``pipeline.config.load_config``)."""
        from pipeline.config import load_config

        return load_config(self.config, overrides or {}, yaml_path)


# name, entrypoint module, config class and run function ("module:name", imported when the
# job is asked for), then what the run function takes besides the config.
_ROWS: tuple[tuple[str, str, str, str, dict[str, Any]], ...] = (
    (
        "build",
        "jobs.build_dataset",
        "pipeline.config:BuildConfig",
        "pipeline.build.job:run_build",
        {"flags": ("overwrite",), "paths": ("input", "output")},
    ),
    (
        "curate",
        "jobs.curate",
        "pipeline.curate.config:CurateConfig",
        "pipeline.curate.job:run_curate",
        {"flags": ("overwrite",), "paths": ("build", "output")},
    ),
    (
        "features",
        "jobs.extract_features",
        "pipeline.features.config:FeaturesConfig",
        "pipeline.features.job:run_features",
        {"flags": ("overwrite",), "paths": ("shards", "output")},
    ),
    (
        "train",
        "jobs.train_fusion",
        "pipeline.train.config:TrainConfig",
        "pipeline.train.job:run_train",
        {"flags": ("resume",), "paths": ("data", "output")},
    ),
    (
        "embed",
        "jobs.embed_bulk",
        "pipeline.embed.config:EmbedConfig",
        "pipeline.embed.job:run_embed",
        {
            "fixed": (("kind", "embed"), ("incremental", False)),
            "paths": ("shards", "model", "output"),
        },
    ),
    (
        "refresh",
        "jobs.nightly_refresh",
        "pipeline.embed.config:EmbedConfig",
        "pipeline.embed.job:run_embed",
        {
            "fixed": (("kind", "refresh"), ("incremental", True)),
            "paths": ("shards", "model", "output"),
        },
    ),
)
JOB_NAMES = tuple(row[0] for row in _ROWS)


def job(name: str) -> Job:
    """The job called ``name``.

    Raises:
        UserError: no such job.
    """
    import importlib

    for row, module, config, runner, more in _ROWS:
        if row == name:
            # Config modules are pydantic only (no torch, no Ray): cheap to import.
            mod, cls = config.split(":")
            return Job(name, module, getattr(importlib.import_module(mod), cls), runner, **more)
    raise UserError(f"unknown job {name!r}; choose one of {sorted(JOB_NAMES)}")


def run_from_args(name: str, args: Any, **extra: Any) -> Any:
    """A job as a command runs it: its config from ``--config`` and the options of its fields,
    then its run function with ``--address``, ``--quiet`` and its flags."""
    from pipeline.options import overrides

    spec = job(name)
    cfg = spec.load_config(args.config, overrides(args, spec.config))
    flags = {f: getattr(args, f) for f in spec.flags}
    return spec.run(cfg, address=args.address, quiet=args.quiet, **flags, **extra)
