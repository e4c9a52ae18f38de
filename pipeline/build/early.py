"""Chunks of a local build built on the driver, while its Ray starts and beside Ray's tasks."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence

import pyarrow as pa

from pipeline.build.chunk import BuildChunkStage
from pipeline.config import BuildConfig
from pipeline.ingest.sources import ReadUnit, read_unit


class DriverChunks:
    """Build chunks on a driver thread, with the same stage a chunk task runs.

    Starting a local Ray costs seconds of CPU, much of it in Ray's helper processes, and
    Ray Data's first tasks start seconds after that (docs/benchmarks.md): cores the build
    could use sit idle meanwhile. So this thread builds the first chunk while Ray starts,
    then takes chunks from the end of the input until Ray's tasks have claimed one, and
    finishes the one under way. Once Ray's tasks run, a third builder on the machine only
    adds contention (measured), so it takes no more. A chunk is built by whichever side
    claims it first (``chunk.claim``, in a folder of this run's: the tasks of a Ray this
    command started share the driver's machine); the other skips it. Pillow and the
    fetcher release the GIL. A chunk's output depends only on its input, so where it was
    built changes no byte. ``done(summary)`` is called on this thread as each is staged.
    """

    def __init__(
        self,
        units: Sequence[ReadUnit],
        cfg: BuildConfig,
        work: str,
        done: Callable[[pa.Table], None],
        claims: str | None = None,
    ) -> None:
        self.units, self.cfg, self.work, self.done = units, cfg, work, done
        # One run's claims: a rerun starts with none (what resumes is the chunks' metadata).
        self.claims = claims or tempfile.mkdtemp(prefix="mmpipe-claims-")
        self.summaries: list[pa.Table] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mmpipe-driver-chunks", daemon=True)
        self._thread.start()

    def _order(self) -> list[ReadUnit]:
        # The first chunk while Ray starts, then from the end: Ray's tasks go from the front.
        units = list(self.units)
        return units[:1] + units[:0:-1]

    def _run(self) -> None:
        try:
            stage = BuildChunkStage(self.cfg, self.work, claims=self.claims, side="driver")
            stage.on_error = self.cfg.on_error
            stage.ensure_setup()
            for n, unit in enumerate(self._order()):
                # Ray's tasks have started once a claim is not this thread's: stop. The first
                # chunk is never given to them, so it is always built here.
                if n and (self._stop.is_set() or len(os.listdir(self.claims)) > n):
                    return
                summary = pa.concat_tables([stage.run(t) for t in read_unit(unit, self.cfg)])
                if summary.num_rows == 0:  # a task claimed it meanwhile
                    return
                self.summaries.append(summary)
                self.done(summary)
        except BaseException as e:  # raised on the main thread by result()
            self.error = e

    def close(self) -> None:
        """Take no new chunk (the chunk under way finishes) and remove the claims."""
        self._stop.set()
        shutil.rmtree(self.claims, ignore_errors=True)

    def result(self) -> list[pa.Table]:
        """The summaries of the chunks built here, once the thread ends; its error, raised."""
        self._thread.join()
        if self.error is not None:
            raise self.error
        return self.summaries
