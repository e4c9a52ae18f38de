"""Stage base class: setup() once per worker, __call__(batch) -> batch, declared resources."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

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


class Stage:
    """A plain, picklable processing step that runs with or without Ray.

    Subclasses set ``reads``/``adds`` (the columns they need and produce), override
    ``setup`` for expensive per-worker state and ``__call__`` for the batch transform.
    """

    name: ClassVar[str] = "stage"
    reads: ClassVar[tuple[str, ...]] = ()
    adds: ClassVar[tuple[str, ...]] = ()
    # None: one whole input block per call. Stages that must see whole chunks rely on it.
    batch_size: ClassVar[int | None] = None
    batch_format: ClassVar[str] = "pyarrow"

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

    def __call__(self, batch: Batch) -> Batch:
        raise NotImplementedError

    def check_columns(self, batch: Batch) -> None:
        """Fail loudly (a bug, not a sample error) when an upstream stage broke the contract."""
        names = batch.column_names if hasattr(batch, "column_names") else list(batch)
        missing = [c for c in self.reads if c not in names]
        if missing:
            raise KeyError(f"stage {self.name} needs columns {missing}; got {sorted(names)}")
