"""FetchedRows: a chunk's rows handed out as their fetches land, with bounded rows and bytes held."""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from pipeline.stage import Batch
from pipeline.validate.fetch import FetchStage

# Rows read (local files, fsspec) or submitted (HTTP) per step of the producer.
SLICE_ROWS = 32
# Rows handed to the caller at most at once: a batch for the validate stages.
BATCH_ROWS = 32
# Fetched bytes held (landed but not yet written) before the producer waits.
MAX_HELD_BYTES = 256 << 20


def _nbytes(members: list[dict[str, Any]] | None) -> int:
    return sum(len(p["data"]) for p in members or () if p.get("data") is not None)


class FetchedRows:
    """Iterate ``(row numbers, batch)`` of rows whose members are all fetched, as they land.

    A producer thread submits rows in input order; HTTP fetches finish in any order, so
    no batch waits on its slowest URL. The caller writes rows back in input order and
    calls ``release(i)`` for each row it wrote: rows between submission and release are
    bounded by four times what the fetcher keeps in flight (at least ``min_window``), and their
    fetched bytes by ``max_bytes``. The row the caller waits for is always submitted
    first, so the bound never stalls it.
    """

    def __init__(
        self,
        fetch: FetchStage,
        rows: pa.Table,
        *,
        min_window: int = 4 * SLICE_ROWS,
        max_bytes: int = MAX_HELD_BYTES,
    ) -> None:
        self.fetch, self.rows = fetch, rows
        self.min_window, self.max_bytes = min_window, max_bytes
        self._ready: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._where: dict[int, tuple[Batch, int]] = {}
        self._cond = threading.Condition()
        self._outstanding = 0  # rows submitted and not yet released
        self._held = 0  # bytes of landed rows not yet released
        self._sizes: dict[int, int] = {}
        self._stop = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._produce, name="mmpipe-rows", daemon=True)

    def _window(self) -> int:
        fetcher = self.fetch.fetcher
        return max(self.min_window, 4 * fetcher.allowed()) if fetcher else self.min_window

    def _produce(self) -> None:
        try:
            for off in range(0, self.rows.num_rows, SLICE_ROWS):
                n = min(SLICE_ROWS, self.rows.num_rows - off)
                with self._cond:
                    # Wait for room; the first slice after a full release always fits.
                    while (
                        not self._stop
                        and self._outstanding > 0
                        and (self._outstanding + n > self._window() or self._held >= self.max_bytes)
                    ):
                        self._cond.wait(0.5)
                    if self._stop:
                        return
                    self._outstanding += n
                batch = dict(self.rows.slice(off, n).to_pydict())
                for j in range(n):
                    self._where[off + j] = (batch, j)
                self.fetch.submit(batch, functools.partial(self._landed, off))
        except BaseException as e:  # handed to the caller, which raises it
            self._error = e
            self._ready.put(-1)

    def _landed(self, off: int, j: int) -> None:
        i = off + j
        batch, _ = self._where[i]
        size = _nbytes(batch["members"][j])
        with self._cond:
            self._sizes[i] = size
            self._held += size
        self._ready.put(i)

    def release(self, i: int) -> None:
        """Row ``i`` is written: its bytes and its place in the window are free."""
        self._where.pop(i, None)
        with self._cond:
            self._outstanding -= 1
            self._held -= self._sizes.pop(i, 0)
            self._cond.notify()

    def __iter__(self) -> Iterator[tuple[list[int], Batch]]:
        self._thread.start()
        left = self.rows.num_rows
        while left:
            got = [self._next()]
            while len(got) < BATCH_ROWS:
                try:
                    got.append(self._ready.get_nowait())
                except queue.Empty:
                    break
            if -1 in got:
                assert self._error is not None
                raise self._error
            left -= len(got)
            picked = [self._where[i] for i in got]
            keys = picked[0][0].keys()
            yield got, {k: [b[k][j] for b, j in picked] for k in keys}

    def _next(self) -> int:
        while True:
            try:
                return self._ready.get(timeout=1.0)
            except queue.Empty:
                if self._error is not None:
                    raise self._error from None

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(10)

    def __enter__(self) -> FetchedRows:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
