"""The runner: turns stages into map_batches calls and streams results back (the Ray session
itself is pipeline/session.py)."""

from __future__ import annotations

import functools
import itertools
import re
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from pipeline.errors import UserError
from pipeline.session import cluster_is_fixed, small_cluster
from pipeline.stage import Batch, Stage, check_plan

# Per-process cache so that a stage's setup() runs once per worker, not once per task.
_READY: dict[str, Stage] = {}
# What one of Ray Data's read tasks asks for (its default), which an actor pool must leave.
READ_TASK_CPUS = 1.0


def task_concurrency(num_cpus: float) -> int | None:
    """The most tasks of one operator in flight at once on a small cluster (None elsewhere).

    With the operator reservation off (``configure_data_context``) nothing else bounds them,
    and the driver kept ~58 KB per task for good: 58 MB per 1,000 chunks. A cap of twice the
    tasks the CPUs run keeps ~9 KB (Ray's own per-task record) and the throughput: 1,000 x
    150 ms tasks on 2 CPUs took 89 s against 82 s uncapped and 165 s with the reservation;
    a cap of the CPUs alone took 125 s, each launch waiting on the scheduling loop
    (bench/bench_driver.py, docs/benchmarks.md). Every operator of a fused chain must carry
    the same cap, or Ray runs them as separate operators.
    """
    import ray

    if not small_cluster():
        return None
    cpus = float(ray.cluster_resources().get("CPU", 1))
    return max(2, int(2 * cpus / max(num_cpus, 0.05)))


def _run_stage(stage: Stage, token: str, batch: Batch) -> Batch:
    inst = _READY.get(token)
    if inst is None:
        inst = stage
        inst.ensure_setup()
        _READY[token] = inst
    return inst.run(batch)


def _stage_fn(stage: Stage, token: str) -> Callable[[Batch], Batch]:
    """The task function: the stage is set up once per worker process, not once per task.

    A partial of a module-level function: cloudpickle sends it by reference, so ``_READY``
    is this module's own. A nested function would travel by value with a fresh copy of
    its globals, and every task would set the stage up again (measured: every chunk).
    """
    return functools.partial(_run_stage, stage, token)


class _ActorStage:
    """Actor wrapper: the stage is set up once when the actor starts (models load once)."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage
        self.error: UserError | None = None
        try:
            self.stage.ensure_setup()
        except UserError as e:
            # Raised from __init__ it would reach the driver as a bare ActorDiedError; from
            # the first batch it arrives as a task error that `stream` unwraps to one line.
            self.error = e

    def __call__(self, batch: Batch) -> Batch:
        if self.error is not None:
            raise self.error
        return self.stage.run(batch)


def map_stages(
    ds: Any,
    stages: list[Stage],
    *,
    columns: list[str] | tuple[str, ...],
    batch_size: int | None = None,
    on_error: str = "reject",
) -> Any:
    """Apply each stage with its declared resources: tasks, or an actor pool of fixed size.

    ``columns`` are the source's: the chain's ``reads`` and ``adds`` are checked against them
    before anything runs. ``batch_size`` overrides the stages' own (None: whole blocks).
    ``on_error``: the job's policy for a sample's error (``pipeline/errors.py``).
    Task stages carry ``task_concurrency``; a read fused into the first must carry it too.
    """
    from ray.data import ActorPoolStrategy

    check_plan(stages, columns)
    _check_pools_fit(stages)
    for i, stage in enumerate(stages):
        stage.on_error = on_error
        res = stage.resources
        common: dict[str, Any] = {
            "batch_size": batch_size if batch_size is not None else stage.batch_size,
            "batch_format": stage.batch_format,
            "num_cpus": res.num_cpus,
            "zero_copy_batch": False,
        }
        if res.num_gpus:
            common["num_gpus"] = res.num_gpus
        if res.memory:
            common["memory"] = res.memory
        if res.actors:
            ds = ds.map_batches(
                _ActorStage,
                fn_constructor_args=(stage,),
                compute=(
                    ActorPoolStrategy(min_size=res.actors, max_size=res.max_actors)
                    if res.max_actors and res.max_actors > res.actors
                    else ActorPoolStrategy(size=res.actors)
                ),
                **common,
            )
        else:
            # Not before an actor stage: Ray fuses uncapped tasks into the pool that follows,
            # and the pool's size already bounds what is in flight.
            feeds_actors = any(s.resources.actors for s in stages[i + 1 :])
            ds = ds.map_batches(
                _stage_fn(stage, uuid.uuid4().hex),
                concurrency=None if feeds_actors else task_concurrency(res.num_cpus),
                **common,
            )
    return ds


def _check_pools_fit(stages: list[Stage]) -> None:
    """Refuse an actor pool that leaves its own read and write tasks no CPU on a cluster that
    cannot grow: Ray Data starts every actor of the pool first, and the tasks that feed it
    would then wait for ever (measured: ``--actors 2`` on 2 CPUs never left the first phase).

    Raises:
        UserError: naming the pool's settings and what fits.
    """
    import ray

    pools = [s for s in stages if s.resources.actors]
    if not pools or not cluster_is_fixed():
        return
    cpus = float(ray.cluster_resources().get("CPU", 0))
    feed = max([READ_TASK_CPUS] + [s.resources.num_cpus for s in stages if not s.resources.actors])
    held = sum(s.resources.actors * s.resources.num_cpus for s in pools)
    if held + feed <= cpus + 1e-9:
        return
    pool = pools[0].resources
    fit = int((cpus - feed) // pool.num_cpus) if cpus > feed else 0
    share = (cpus - feed) / pool.actors if cpus > feed else 0.0
    fixes = [f"actors: {fit}"] if fit >= 1 else []
    if share >= 0.05:
        fixes.append(f"actor_num_cpus: {int(share * 20) / 20:g}")
    raise UserError(
        f"{pool.actors} actors x actor_num_cpus {pool.num_cpus:g} hold {held:g} of the "
        f"{cpus:g} CPUs Ray has here, leaving less than the {feed:g} its read and write "
        "tasks need, so the run would wait for ever; "
        + (f"set {' or '.join(fixes)}" if fixes else "run on a machine with more CPUs")
    )


def map_groups(
    ds: Any,
    column: str,
    stage: Stage,
    *,
    columns: list[str],
    partitions: int | None = None,
    map_input_bytes: int | None = None,
) -> Any:
    """Apply ``stage`` to each whole group of rows that share ``column``, after a hash
    shuffle (Ray Data's groupby): the way to give one task everything of one partition.
    ``partitions``: the shuffle's reduce tasks (Ray's default is 200, too many for a few
    groups). ``map_input_bytes``: at most this much input joined in one map task, for
    this shuffle (the session's cap, ``SHUFFLE_INPUT_BYTES``, otherwise)."""
    check_plan([stage], columns)
    if map_input_bytes is not None:
        ds.context.shuffle_input_batch_bytes = map_input_bytes
    return ds.groupby(column, num_partitions=partitions).map_groups(
        _stage_fn(stage, uuid.uuid4().hex),
        batch_format=stage.batch_format,
        num_cpus=stage.resources.num_cpus,
    )


def unwrap(err: BaseException) -> BaseException:
    """Find a UserError raised inside a Ray task, so the CLI prints it as one line."""
    seen = 0
    cur: BaseException | None = err
    while cur is not None and seen < 10:
        if isinstance(cur, UserError):
            return cur
        cause = getattr(cur, "cause", None)
        cur = cause if isinstance(cause, BaseException) else cur.__cause__
        seen += 1
    # Ray Data re-raises a UDF's exception as UserCodeException without its cause; the
    # original survives only in the text of the remote traceback.
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))  # Ray colours its tracebacks
    found = re.findall(r"pipeline\.errors\.UserError: ([^\n]+)", text)
    if found:
        return UserError(found[-1].strip())
    # An I/O failure inside a task (a full disk, a store that stayed down after its retries)
    # comes back the same way; surface it as the OSError it was, for one clear line.
    io_errors = re.findall(
        r"^\s*(?:\w+\.)*(\w*Error): (\[Errno \d+\][^\n]*)", text, flags=re.MULTILINE
    )
    if io_errors:
        name, msg = io_errors[-1]
        return OSError(f"{name}: {msg.strip()}")
    return err


def stream(ds: Any) -> Iterator[Any]:
    """Iterate a dataset's output blocks as Arrow tables (small summaries, never the data)."""
    try:
        yield from ds.iter_batches(batch_size=None, batch_format="pyarrow")
    except Exception as e:
        found = unwrap(e)
        if found is not e:
            raise found from None
        raise


def run_remote(fn: Callable[..., Any], *args: Any, num_cpus: float = 1.0) -> Any:
    """Run ``fn`` as one Ray task (driver-side work stays small) and return its result."""
    import ray

    try:
        return ray.get(ray.remote(num_cpus=num_cpus)(fn).remote(*args))
    except Exception as e:
        found = unwrap(e)
        if found is not e:
            raise found from None
        raise


def run_each(
    fn: Callable[..., Any], calls: Iterable[tuple[Any, ...]], *, num_cpus: float = 1.0
) -> Iterator[Any]:
    """Run ``fn(*args)`` for each ``args`` as a Ray task, yielding results as they finish.

    For steps of a few thousand small tasks over files (finalize's per-chunk steps): Ray
    Data ran those at half the cores' worth of CPU (profiled: 22 s of wall for 11 s of
    CPU at 1,000 chunks). Twice as many tasks as fit at once are in flight, so no core
    waits for the driver; the driver holds only those refs. Tasks are retried when a
    worker dies, as Ray Data's are."""
    import ray

    remote = ray.remote(num_cpus=num_cpus)(fn)
    fit = int(ray.cluster_resources().get("CPU", 1) / num_cpus)
    limit = 2 * max(1, fit)
    todo = iter(calls)
    pending: list[Any] = []
    try:
        while True:
            for args in itertools.islice(todo, limit - len(pending)):
                pending.append(remote.remote(*args))
            if not pending:
                return
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
    except Exception as e:
        found = unwrap(e)
        if found is not e:
            raise found from None
        raise
