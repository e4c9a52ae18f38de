"""AdaptiveLimit: how many requests one host gets in flight, learned from latency and errors."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

# What a finished request says about the host.
OK, ERROR, SLOW_DOWN = "ok", "error", "slow_down"


@dataclass
class AdaptiveLimit:
    """How many requests one host gets in flight: hill climbing on measured throughput.

    A round lasts at least ``round_s`` and ``2 x limit`` finished requests (fewer are too
    noisy to compare). When the limit held requests back (some waited for a slot for half
    the round, or those in flight averaged ``busy`` x limit), the round's rate is compared
    with the best rate seen at the limit in force:

    - slow start: double while doubling raises the rate by ``start_gain``;
    - then hold, and every ``probe_rounds`` rounds probe up (x1.25, kept if the rate rises
      by ``gain``, else undone) or down (x0.75, kept if it keeps ``1 - loss`` of the best
      rate), in turn. A host gets the fewest requests that give the speed: a server on the
      same cores, or cores busy decoding, shows as no gain and ends near the floor;
    - when the caller, not the limit, was the bottleneck: undo a step up under way, and come
      down towards twice the mean in flight (at most a quarter a round). Time with nothing
      to fetch (between a worker's chunks) does not count;
    - HTTP 429, or timeouts: halve at once. Other failures (5xx, resets) cut by a quarter
      only when they are over a quarter of the round: a host that fails a steady share of
      requests at any load is not helped by fewer of them.

    Always within ``[floor, ceiling]``; ``ceiling`` is the politeness limit.
    """

    ceiling: int
    start: int = 4
    floor: int = 1
    round_s: float = 0.5
    busy: float = 0.8
    start_gain: float = 0.3
    gain: float = 0.15
    loss: float = 0.05
    probe_rounds: int = 6
    limit: float = field(init=False)
    in_flight: int = field(default=0, init=False)
    _best: tuple[float, float] | None = field(default=None, init=False)  # (limit, rate)
    _probe: int = field(default=0, init=False)  # +1 stepped up, -1 stepped down, 0 holding
    _slow_start: bool = field(default=True, init=False)
    _hold: int = field(default=0, init=False)
    _next_probe: int = field(default=1, init=False)
    _n: int = field(default=0, init=False)
    _errors: int = field(default=0, init=False)
    _slow_downs: int = field(default=0, init=False)
    _started: bool = field(default=False, init=False)
    _last: float = field(default=0.0, init=False)
    _area: float = field(default=0.0, init=False)  # integral of in_flight over the round
    _peak: int = field(default=0, init=False)
    waiting: int = field(default=0, init=False)  # requests waiting for a slot now
    _waited: float = field(default=0.0, init=False)  # time in the round with any waiting
    _active: float = field(default=0.0, init=False)  # time in the round with any request

    def __post_init__(self) -> None:
        self.ceiling = max(1, int(self.ceiling))
        self.floor = max(1, min(int(self.floor), self.ceiling))
        self.limit = float(min(max(self.start, self.floor), self.ceiling))

    @property
    def allowed(self) -> int:
        return max(self.floor, int(self.limit))

    def has_room(self) -> bool:
        return self.in_flight < self.allowed

    def set_waiting(self, n: int, now: float | None = None) -> None:
        """How many requests wait for a slot: the limit, not the caller, holds them back."""
        self._tick(time.monotonic() if now is None else now)
        self.waiting = n

    def _tick(self, now: float) -> None:
        if not self._started:
            self._started, self._last = True, now
        span = now - self._last
        self._area += self.in_flight * span
        self._waited += span if self.waiting else 0.0
        # Time with nothing to fetch (between a worker's chunks) is no part of a round: it
        # would read as a slow host and a caller that needs few requests.
        self._active += span if self.waiting or self.in_flight else 0.0
        self._last = now

    def started(self, now: float | None = None) -> None:
        self._tick(time.monotonic() if now is None else now)
        self.in_flight += 1
        self._peak = max(self._peak, self.in_flight)

    def finished(self, outcome: str = OK, now: float | None = None) -> None:
        """Record one finished request and what it said about the host."""
        now = time.monotonic() if now is None else now
        self._tick(now)
        self.in_flight = max(0, self.in_flight - 1)
        self._n += 1
        self._slow_downs += outcome == SLOW_DOWN
        self._errors += outcome == ERROR
        elapsed = max(self._active, 1e-9)
        if self._slow_downs or (self._n >= max(16, 2 * self.allowed) and elapsed >= self.round_s):
            # The limit was the bottleneck if requests waited for it most of the round (a
            # caller that hands over rows in slices makes short waits that say nothing).
            busy = self._waited >= 0.5 * elapsed or self._area / elapsed >= self.busy * self.allowed
            self._update(self._n / elapsed, busy, self._area / elapsed)
            self._area, self._n, self._waited, self._active = 0.0, 0, 0.0, 0.0
            self._errors = self._slow_downs = 0
            self._peak = self.in_flight

    def _set(self, limit: float) -> None:
        self.limit = min(float(self.ceiling), max(float(self.floor), limit))

    def _update(self, rate: float, busy: bool, mean_in_flight: float) -> None:
        if self._slow_downs or self._errors * 4 > self._n:
            self._set(self.limit * (0.5 if self._slow_downs else 0.75))
            self._best, self._probe, self._slow_start = None, 0, False
            self._hold = self.probe_rounds
            return
        if not busy:
            # The caller is the bottleneck: a step up under way was not needed, and twice
            # what the caller kept in flight is enough (approached by a quarter a round).
            if self._probe > 0 and self._best is not None:
                self._set(self._best[0])
            self._set(min(self.limit, max(2.0 * mean_in_flight, 0.75 * self.limit)))
            self._best, self._probe = None, 0
            return
        best = self._best
        if best is None or (self._probe == 0 and best[0] != self.limit):
            # A first busy round at this limit sets the bar; the next one compares.
            self._best = (self.limit, rate)
            return
        elif self._probe > 0:
            need = self.start_gain if self._slow_start else self.gain
            if rate > best[1] * (1 + need):
                # A gain near the step's own size: the host is far from its limit, so go
                # back to doubling.
                step = self.limit / best[0] - 1
                self._slow_start = self._slow_start or rate >= best[1] * (1 + 0.8 * step)
                self._best = (self.limit, rate)
                self._step(up=True)
                return
            self._set(best[0])  # no gain: undo, hold, and probe down next
            self._probe, self._slow_start, self._hold, self._next_probe = 0, False, 0, -1
            return
        elif self._probe < 0:
            if rate >= best[1] * (1 - self.loss):
                self._best = (self.limit, best[1])  # the best rate stays the bar
                self._step(up=False)
                return
            self._set(best[0])
            self._probe, self._hold, self._next_probe = 0, self.probe_rounds, 1
            return
        else:
            self._best = (best[0], max(best[1], rate))
        if self._slow_start:
            self._step(up=True)
        elif self._hold > 0:
            self._hold -= 1
        else:
            self._step(up=self._next_probe > 0 or self.limit <= self.floor)

    def _step(self, up: bool) -> None:
        if (up and self.limit >= self.ceiling) or (not up and self.limit <= self.floor):
            self._probe, self._slow_start, self._hold = 0, False, self.probe_rounds
            self._next_probe = -1 if up else 1
            return
        self._probe = 1 if up else -1
        if up:
            # At least one more: x1.25 of a small limit would not change the whole number.
            grown = self.limit * 2.0 if self._slow_start else self.limit * 1.25
            self._set(max(grown, float(self.allowed + 1)))
        else:
            self._set(min(self.limit * 0.75, float(self.allowed - 1)))
