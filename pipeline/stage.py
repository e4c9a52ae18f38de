"""Stage base class: setup() once per worker, __call__(batch) -> batch, declared resources."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from pipeline.errors import sample_policy

# A batch is a dict of equal-length columns (Python lists, numpy or Arrow arrays).
Batch = dict[str, Any]


@dataclass(frozen=True)
class Resources:
    """What one instance of a stage needs; the runner turns it into Ray arguments.

    ``actors`` > 0 runs the stage on an actor pool of that size (models that load once);
    otherwise it runs as stateless tasks whose per-process instance is set up once.
    Fractional ``num_cpus`` lets an actor pool share a small machine with its read tasks.
    """

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    actors: int = 0
    memory: int | None = None
    # > actors: the pool grows up to this many while the cluster has room (autoscaling).
    max_actors: int | None = None


def column_names(batch: Any) -> list[str]:
    return list(batch.column_names) if hasattr(batch, "column_names") else list(batch)


class Stage:
    """A plain, picklable processing step that runs with or without Ray.

    Subclasses set ``reads``/``adds`` (the columns they need and produce; ``inputs()`` and
    ``outputs()`` when they depend on the config), override ``setup`` for expensive
    per-worker state and ``__call__`` for the batch transform. ``run`` checks the columns;
    ``check_plan`` checks a whole chain before anything runs.
    """

    name: ClassVar[str] = "stage"
    reads: ClassVar[tuple[str, ...]] = ()
    adds: ClassVar[tuple[str, ...]] = ()
    # False: the stage returns only the columns it adds (a writer's summary rows).
    passthrough: ClassVar[bool] = True
    # None: one whole input block per call. Stages that must see whole chunks rely on it.
    batch_size: ClassVar[int | None] = None
    batch_format: ClassVar[str] = "pyarrow"
    # What a sample's error does while this stage runs: its reject row, or (``raise``) a
    # failed task. The runner sets the job's ``on_error`` on every stage it maps.
    on_error: str = "reject"

    def __init__(self) -> None:
        self._ready = False

    @property
    def resources(self) -> Resources:
        return Resources()

    def setup(self) -> None:
        """Load heavy state. Called once per worker before the first batch."""

    def ensure_setup(self) -> None:
        if not getattr(self, "_ready", False):
            self.setup()
            self._ready = True

    def inputs(self) -> tuple[str, ...]:
        """The columns this stage reads."""
        return self.reads

    def outputs(self) -> tuple[str, ...]:
        """The columns this stage adds (or, without ``passthrough``, returns)."""
        return self.adds

    def drops(self) -> tuple[str, ...]:
        """The input columns this stage removes (encoded bytes once decoded, say)."""
        return ()

    def __call__(self, batch: Batch) -> Batch:
        raise NotImplementedError

    def run(self, batch: Batch) -> Batch:
        """``__call__`` with the declared columns checked on the way in and on the way out."""
        self.check_columns(batch)
        with sample_policy(self.on_error):
            out = self(batch)
        missing = [c for c in self.outputs() if c not in column_names(out)]
        if missing:
            raise KeyError(f"stage {self.name} declares {missing} but did not add them")
        return out

    def check_columns(self, batch: Batch) -> None:
        """Fail loudly (a bug, not a sample error) when an upstream stage broke the contract."""
        names = column_names(batch)
        missing = [c for c in self.inputs() if c not in names]
        if missing:
            raise KeyError(f"stage {self.name} needs columns {missing}; got {sorted(names)}")


def check_plan(stages: list[Stage], columns: list[str] | tuple[str, ...]) -> list[str]:
    """Check that each stage's inputs are there when it runs, starting from ``columns``;
    return the columns the chain ends with. A failure is a bug in how stages were chained.

    Raises:
        ValueError: a stage reads a column that neither the source nor an earlier stage has.
    """
    have = set(columns)
    for stage in stages:
        missing = [c for c in stage.inputs() if c not in have]
        if missing:
            raise ValueError(
                f"stage {stage.name} reads {missing}, which nothing before it adds "
                f"(available: {sorted(have)})"
            )
        kept = have - set(stage.drops()) if stage.passthrough else set()
        have = kept | set(stage.outputs())
    return sorted(have)
