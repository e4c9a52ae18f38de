"""AdaptiveLimit against simulated hosts: it finds the concurrency a host and its caller sustain."""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable

from pipeline.io.limits import ERROR, OK, SLOW_DOWN, AdaptiveLimit


def simulate(
    lim: AdaptiveLimit,
    rate: Callable[[int], float],
    *,
    seconds: float,
    demand: int = 10**9,
    outcome: Callable[[random.Random], str] = lambda _r: OK,
    seed: int = 0,
    start: float = 0.0,
) -> list[int]:
    """Drive ``lim`` against a host that serves ``rate(n)`` requests/s with ``n`` in flight.

    A request started with ``n`` in flight takes ``n / rate(n)`` seconds (Little's law),
    +-10% of noise. ``demand``: the most the caller ever wants in flight. Returns the
    limit after every finished request. The requests still in flight at the end finish
    then, so a second call can go on from ``start`` = this one's end.
    """
    rng = random.Random(seed)
    now, done, trace = start, [], []
    while now < start + seconds:
        while lim.has_room() and lim.in_flight < demand:
            n = lim.in_flight + 1
            lim.started(now=now)
            heapq.heappush(done, now + n / rate(n) * rng.uniform(0.9, 1.1))
        lim.set_waiting(int(demand > lim.in_flight), now=now)  # the caller wants more
        now = heapq.heappop(done)
        lim.finished(outcome(rng), now=now)
        trace.append(lim.allowed)
    while done:
        lim.finished(outcome(rng), now=heapq.heappop(done))
    return trace


def far_host(n: int) -> float:
    """80 ms away, and serves up to 2,000 requests/s."""
    return min(n / 0.08, 2000.0)


def near_host(n: int) -> float:
    """On the same cores: 300 requests/s at best, and slower as connections pile up."""
    return 300.0 / (1 + 0.05 * max(0, n - 2))


def test_a_far_host_gets_enough_requests_in_flight_fast():
    lim = AdaptiveLimit(ceiling=128)
    trace = simulate(lim, far_host, seconds=20)
    # 2,000 requests/s at 80 ms needs 160 in flight: the ceiling, reached within seconds.
    assert lim.allowed == 128
    assert max(trace[:3000]) >= 64


def test_a_saturated_host_gets_few():
    lim = AdaptiveLimit(ceiling=128)
    trace = simulate(lim, near_host, seconds=60)
    # More than a few requests only slow this host down: the limit stays small.
    assert max(trace[len(trace) // 2 :]) <= 8
    assert lim.allowed <= 6


def test_the_callers_pace_caps_the_limit():
    lim = AdaptiveLimit(ceiling=128)
    simulate(lim, far_host, seconds=20, demand=10)
    assert lim.allowed <= 20  # never above twice what the caller kept in flight


def test_429_and_timeouts_halve_at_once():
    lim = AdaptiveLimit(ceiling=128, start=64)
    for _ in range(3):
        lim.started(now=0.0)
    lim.finished(SLOW_DOWN, now=0.1)
    assert lim.allowed == 32


def test_a_steady_share_of_errors_does_not_collapse_the_limit():
    lim = AdaptiveLimit(ceiling=128)
    simulate(lim, far_host, seconds=20, outcome=lambda r: ERROR if r.random() < 0.1 else OK, seed=1)
    assert lim.allowed >= 64
    # Most requests failing: the host is in trouble, so it gets fewer.
    bad = simulate(
        lim, far_host, seconds=5, start=25, outcome=lambda r: ERROR if r.random() < 0.6 else OK
    )
    assert bad[-1] <= 16  # from 128, a quarter less every round


def test_bounds_hold():
    lim = AdaptiveLimit(ceiling=3, start=50)
    assert lim.allowed == 3
    trace = simulate(lim, far_host, seconds=5)
    assert max(trace) <= 3 and min(trace) >= 1


def test_a_small_limit_still_climbs_one_at_a_time():
    lim = AdaptiveLimit(ceiling=128, start=2)
    lim.started(now=0.0)
    lim.finished(SLOW_DOWN, now=0.1)  # a 429 ends the slow start at a limit of 1
    assert lim.allowed == 1

    def host(n: int) -> float:  # 10 ms a request; the host serves 300/s at most
        return min(n / 0.01, 300.0)

    trace = simulate(lim, host, seconds=30, start=1.0)
    assert max(trace[-200:]) >= 3
