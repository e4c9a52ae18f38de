"""The first chunk of a local build, built in the driver while the local Ray starts."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pyarrow as pa

from pipeline.build.chunk import BuildChunkStage
from pipeline.config import BuildConfig
from pipeline.ingest.sources import ReadUnit, read_unit


class EarlyChunk:
    """Build one chunk on a driver thread, with the same stage a chunk task runs.

    Starting a local Ray costs seconds of CPU, much of it in Ray's helper processes, and
    Ray Data's first tasks start only after it: the first chunk used to land 8-11 s after
    the command started (docs/benchmarks.md). Pillow and the fetcher release the GIL, so
    this thread works while Ray starts; the chunk's output depends only on its input, so
    where it was built changes no byte. A rerun finds its metadata and skips it as any
    finished chunk. ``done(summary)`` is called on this thread when the chunk is staged.
    """

    def __init__(
        self, unit: ReadUnit, cfg: BuildConfig, work: str, done: Callable[[pa.Table], None]
    ) -> None:
        self.unit, self.cfg, self.work, self.done = unit, cfg, work, done
        self.summary: pa.Table | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="mmpipe-first-chunk", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            stage = BuildChunkStage(self.cfg, self.work)
            stage.on_error = self.cfg.on_error
            stage.ensure_setup()
            tables = [stage.run(t) for t in read_unit(self.unit, self.cfg)]
            self.summary = pa.concat_tables(tables)
            self.done(self.summary)
        except BaseException as e:  # raised on the main thread by result()
            self.error = e

    def result(self) -> pa.Table:
        """The chunk's summary rows, once it is staged; its error, raised here."""
        self._thread.join()
        if self.error is not None:
            raise self.error
        assert self.summary is not None
        return self.summary
