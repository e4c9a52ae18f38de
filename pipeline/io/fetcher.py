"""Fetcher: HTTP(S) GETs on one asyncio loop per process, an adaptive number in flight per host."""

from __future__ import annotations

import asyncio
import functools
import random
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from pipeline.io.limits import ERROR, OK, SLOW_DOWN, AdaptiveLimit
from pipeline.io.netguard import BlockedAddressError, NetGuard, env_proxy, guarded_resolver

# Status codes worth a retry (with backoff); anything else is final at once.
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
USER_AGENT = "mmpipe/0.1 (+https://github.com/mmpipe)"
Result = bytes | Exception


class TooLargeError(Exception):
    """The body is over the size cap (known from Content-Length or from reading past it)."""

    def __init__(self, size: int | None) -> None:
        super().__init__(f"{size} bytes" if size is not None else "over the size cap")
        self.size = size


@dataclass(frozen=True)
class FetchPolicy:
    """What every request of one fetcher obeys; equal policies share a fetcher in a process."""

    max_bytes: int
    # Requests in flight per host, at most (politeness); the fetcher adapts below it.
    ceiling: int = 128
    start: int = 4
    connect_timeout: float = 10.0
    read_timeout: float = 60.0  # per socket read, as urllib3's was: large bodies may take long
    retries: int = 2
    backoff: float = 0.25
    max_redirects: int = 5
    # Networks and host names that URLs from the data may reach besides public addresses
    # (netguard.parse_allow): loopback, private and metadata addresses are refused otherwise.
    allow_hosts: tuple[str, ...] = ()


class _Host:
    """One host's limit and the requests waiting for a slot (FIFO, so input order is kept)."""

    def __init__(self, policy: FetchPolicy) -> None:
        self.limit = AdaptiveLimit(ceiling=policy.ceiling, start=policy.start)
        self.waiting: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> None:
        if self.limit.has_room() and not self.waiting:
            self.limit.started()
            return
        slot: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting.append(slot)
        self.limit.set_waiting(len(self.waiting))
        await slot  # resolved by release() with the slot already taken for us

    def release(self, outcome: str) -> None:
        self.limit.finished(outcome)
        while self.waiting and self.limit.has_room():
            slot = self.waiting.popleft()
            if not slot.done():  # a cancelled request's slot goes to the next one
                self.limit.started()
                slot.set_result(None)
        self.limit.set_waiting(len(self.waiting))


class Fetcher:
    """GET many URLs concurrently from any thread; results are bytes or the error, never raised.

    One event loop on a daemon thread holds every connection (keep-alive, pooled), so a
    thousand requests in flight cost sockets and small buffers, not threads.
    """

    def __init__(self, policy: FetchPolicy) -> None:
        self.policy = policy
        self.guard = NetGuard(policy.allow_hosts)
        self.hosts: dict[str, _Host] = {}
        self.loop = asyncio.new_event_loop()
        self._session: Any = None
        self._thread = threading.Thread(target=self._run, name="mmpipe-fetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, url: str, done: Callable[[Result], None] | None = None) -> Future[Result]:
        """Start fetching ``url``; ``done(result)`` runs on the loop thread when it ends."""
        fut = asyncio.run_coroutine_threadsafe(self._get(url), self.loop)
        if done is not None:
            fut.add_done_callback(lambda f: done(_outcome(f)))
        return fut

    def fetch(self, url: str) -> Result:
        return self.submit(url).result()

    def allowed(self) -> int:
        """Requests the fetcher would have in flight now: the sum of the hosts' limits."""
        return sum(h.limit.allowed for h in list(self.hosts.values())) or self.policy.start

    def close(self) -> None:
        if self._session is not None:
            asyncio.run_coroutine_threadsafe(self._session.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    async def _client(self) -> Any:
        if self._session is None:
            import aiohttp

            p = self.policy
            self._session = aiohttp.ClientSession(
                # Limits are ours, per host; aiohttp's own pool limit would queue beneath them.
                # Every name is checked on the addresses it resolves to, the ones connected to.
                connector=aiohttp.TCPConnector(
                    limit=0, ttl_dns_cache=300, resolver=guarded_resolver(self.guard)
                ),
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=p.connect_timeout, sock_read=p.read_timeout
                ),
                headers={"User-Agent": USER_AGENT},
                # The environment's proxies are applied per request (_proxy); aiohttp's own
                # trust_env reads ~/.netrc and hops threads twice a request to do the same.
                trust_env=False,
            )
        return self._session

    async def _get(self, url: str) -> Result:
        try:
            parts = urlsplit(url)
        except ValueError as e:  # an unbalanced [ in the host, found by fuzzing
            return ConnectionError(f"invalid URL: {e}")
        host = self.hosts.setdefault(f"{parts.scheme}://{parts.netloc}", _Host(self.policy))
        result: Result = ConnectionError("not attempted")
        for attempt in range(self.policy.retries + 1):
            await host.acquire()
            outcome, wait = OK, 0.0
            try:
                result, outcome, wait = await self._attempt(url)
            except asyncio.CancelledError:
                host.release(OK)
                raise
            host.release(outcome)
            if outcome == OK or attempt == self.policy.retries:
                break
            # Exponential backoff with jitter, or what the server asked for (bounded).
            delay = self.policy.backoff * 2**attempt * random.uniform(0.5, 1.5)
            await asyncio.sleep(min(max(delay, wait), 10.0))
        return result

    async def _attempt(self, url: str) -> tuple[Result, str, float]:
        """One GET: (result, what it says about the host, seconds the server asked to wait).

        Redirects are followed here, not by aiohttp, so that every hop's host is checked
        before anything is sent to it.
        """
        import aiohttp
        from yarl import URL

        session = await self._client()
        try:
            target = URL(url)
        except ValueError as e:  # final: another try cannot fix the URL
            return ConnectionError(f"invalid URL: {e}"[:300]), OK, 0.0
        try:
            for _hop in range(self.policy.max_redirects + 1):
                blocked = await self.guard.check_url(target.raw_host)
                if blocked is not None:
                    return blocked, OK, 0.0
                proxy, proxy_auth = _proxy(target.scheme, target.raw_host or "")
                async with session.get(
                    target, allow_redirects=False, proxy=proxy, proxy_auth=proxy_auth
                ) as r:
                    location = r.headers.get("Location")
                    if r.status in REDIRECT_STATUS and location:
                        target = r.url.join(URL(location))
                        if target.scheme not in ("http", "https"):
                            return ConnectionError(f"redirect to {target.scheme}:"), OK, 0.0
                        continue
                    return await self._read(r)
            return ConnectionError("too many redirects"), OK, 0.0
        except asyncio.TimeoutError:
            return ConnectionError("timed out"), SLOW_DOWN, 0.0
        except aiohttp.ClientConnectorError as e:
            if isinstance(e.os_error, BlockedAddressError):  # raised by the guarded resolver
                return e.os_error, OK, 0.0
            return ConnectionError(f"{type(e).__name__}: {e}"[:300]), ERROR, 0.0
        except aiohttp.InvalidURL as e:  # final: another try cannot fix the URL
            return ConnectionError(f"invalid URL: {e}"[:300]), OK, 0.0
        except (aiohttp.ClientError, OSError, ValueError) as e:
            # Refused or reset connections, truncated bodies (ClientPayloadError), bad URLs.
            return ConnectionError(f"{type(e).__name__}: {e}"[:300]), ERROR, 0.0

    async def _read(self, r: Any) -> tuple[Result, str, float]:
        """A final response's body, or what its status says."""
        cap = self.policy.max_bytes
        if r.status in RETRY_STATUS:
            after = _retry_after(r.headers.get("Retry-After"))
            slow = r.status == 429
            return ConnectionError(f"HTTP {r.status}"), SLOW_DOWN if slow else ERROR, after
        if r.status in (404, 410):
            return FileNotFoundError(f"HTTP {r.status}"), OK, 0.0
        if r.status != 200:
            return ConnectionError(f"HTTP {r.status}"), OK, 0.0
        if r.content_length is not None and r.content_length > cap:
            return TooLargeError(r.content_length), OK, 0.0
        if r.content_length is not None and r.headers.get("Content-Encoding", "identity") in (
            "identity",
            "",
        ):
            # Its length is the body's (not a compressed one's, which may inflate past the
            # cap), within the cap, and aiohttp fails a shorter body: one read.
            return await r.read(), OK, 0.0
        body = bytearray()
        while len(body) <= cap:
            piece = await r.content.read(min(1 << 20, cap + 1 - len(body)))
            if not piece:
                return bytes(body), OK, 0.0
            body += piece
        return TooLargeError(None), OK, 0.0


_CANCELLED = ConnectionError("cancelled")


def _proxy(scheme: str, host: str) -> tuple[Any, Any]:
    """HTTP(S)_PROXY and NO_PROXY, as curl, requests and img2dataset honour them (clusters
    behind a proxy reach the web only through it): a request's proxy and its credentials."""
    url = env_proxy(scheme, host)
    return _parsed_proxy(url) if url else (None, None)


@functools.lru_cache(maxsize=16)
def _parsed_proxy(url: str) -> tuple[Any, Any]:
    """The proxy's URL without credentials, and those as aiohttp's ``proxy_auth`` (what its
    own ``trust_env`` passes; deprecated for callers in aiohttp 3.14, warned only with them)."""
    import aiohttp
    from yarl import URL

    proxy = URL(url)
    if proxy.user is None:
        return proxy, None
    return proxy.with_user(None), aiohttp.BasicAuth(proxy.user, proxy.password or "")


def _outcome(f: Future[Result]) -> Result:
    """What a finished request gives its caller: a bug of ours is an error, never a hang."""
    if f.cancelled():
        return _CANCELLED
    err = f.exception()
    if err is not None:  # _get returns errors; whatever escapes it still reaches the row
        return ConnectionError(f"{type(err).__name__}: {err}"[:300])
    return f.result()


def _retry_after(value: str | None) -> float:
    try:
        return max(0.0, float(value)) if value else 0.0
    except ValueError:  # an HTTP date: not worth parsing for a bounded wait
        return 0.0


_SHARED: dict[FetchPolicy, Fetcher] = {}
_SHARED_LOCK = threading.Lock()


def shared_fetcher(policy: FetchPolicy) -> Fetcher:
    """This process's fetcher for ``policy``: chunks after the first start from what it learned."""
    with _SHARED_LOCK:
        f = _SHARED.get(policy)
        if f is None:
            f = _SHARED[policy] = Fetcher(policy)
        return f
