"""NetGuard: which addresses a URL taken from the data may reach (public ones, plus what is allowed)."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import os
import socket
import urllib.request
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Instance-metadata services, named in the reject so a reader sees what was at stake. AWS's
# and GCP's answer on 169.254.169.254 (and AWS's on fd00:ec2::254), Alibaba's on 100.100.100.200.
METADATA = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)


def as_address(text: str) -> Address | None:
    """``text`` as an IP address (an IPv6 zone such as ``%eth0`` dropped), or None for a name."""
    try:
        return ipaddress.ip_address(text.strip("[]").split("%")[0])
    except ValueError:
        return None


class BlockedAddressError(ConnectionError):
    """A URL's host is (or resolves to) an address that data may not make us reach."""


def address_kind(ip: Address) -> str | None:
    """Why ``ip`` is off limits to URLs from the data ("loopback", …), or None if public."""
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1 reaches 127.0.0.1
    if mapped is not None:
        return address_kind(mapped)
    if ip in METADATA:
        return "cloud metadata"
    for kind in ("loopback", "link_local", "unspecified", "multicast", "private", "reserved"):
        if getattr(ip, f"is_{kind}"):
            return kind.replace("_", "-")
    # Carrier-grade NAT (100.64.0.0/10) and the like: not private, not global either.
    return None if ip.is_global else "non-public"


def parse_allow(entries: Iterable[str]) -> tuple[tuple[Network, ...], tuple[str, ...]]:
    """Split ``allow_hosts`` into networks (``10.0.0.0/8``, ``127.0.0.1``) and host names.

    Raises:
        ValueError: an entry that is neither (a URL, a port, an empty string).
    """
    nets: list[Network] = []
    names: list[str] = []
    for raw in entries:
        entry = str(raw).strip().lower()
        try:
            nets.append(ipaddress.ip_network(entry, strict=False))
            continue
        except ValueError:
            pass
        bare = entry.removeprefix("*.")
        if not bare or any(c in bare for c in "/:@ ") or bare.startswith("."):
            raise ValueError(
                f"allow_hosts entry {raw!r} is neither a network (10.0.0.0/8, 127.0.0.1) "
                "nor a host name (minio.internal, *.corp.example)"
            )
        names.append(entry)
    return tuple(nets), tuple(names)


class NetGuard:
    """The rule for one fetcher: public addresses pass; the allowed networks and names pass too.

    The rule is applied to the addresses the connection is made to (``GuardedResolver``
    below), so a name that resolves to a public address when checked and to a private one
    when connected (DNS rebinding) cannot pass; IP literals, which need no lookup, are
    checked by ``check_url`` before every request and every redirect hop.
    """

    def __init__(self, allow: Iterable[str] = ()) -> None:
        self.networks, self.names = parse_allow(allow)

    def name_allowed(self, host: str) -> bool:
        host = host.rstrip(".").lower()
        return any(
            host == name or (name.startswith("*.") and host.endswith(name[1:]))
            for name in self.names
        )

    def refuse(self, host: str, ip: Address) -> BlockedAddressError | None:
        """The error for connecting to ``ip`` (found for ``host``), or None when it may."""
        kind = address_kind(ip)
        if kind is None or any(ip in net for net in self.networks):
            return None
        via = "" if host == str(ip) else f" resolves to {ip}, which"
        return BlockedAddressError(
            f"host {host}{via} is a {kind} address; data may not reach it "
            "(build.allow_hosts opens a network or a host on purpose)"
        )

    async def check_url(self, host: str | None) -> BlockedAddressError | None:
        """Check a request's host before it is sent: IP literals, and names a proxy will resolve.

        Other names are checked by the resolver, on the addresses that are connected to.
        """
        if not host or self.name_allowed(host):
            return None
        ip = as_address(host)
        if ip is not None:
            return self.refuse(host.strip("[]"), ip)
        name = host.rstrip(".").lower()
        if _proxied(name):
            # The proxy resolves and connects to the target, not us: the best we can do is
            # check what the name resolves to here. A name we cannot resolve is the proxy's
            # to judge (clusters behind a proxy often have no public DNS of their own).
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(name, None)
            except OSError:
                return None
            for info in infos:
                err = self.refuse(name, as_address(str(info[4][0])))  # type: ignore[arg-type]
                if err is not None:
                    return err
        return None


def _proxied(host: str) -> bool:
    """Whether the environment sends requests for ``host`` through a proxy (by either scheme):
    asked for every request to a name, so it reads the cached decision of ``env_proxy``."""
    return env_proxy("http", host) is not None or env_proxy("https", host) is not None


def env_proxy(scheme: str, host: str) -> str | None:
    """The proxy the environment names for a request (``HTTP(S)_PROXY``, ``NO_PROXY``), read as
    curl, requests and aiohttp's ``trust_env`` read it; None: connect directly.

    Read at each request from the environment only: aiohttp's ``trust_env`` also re-read
    ~/.netrc and hopped to a thread twice per request, most of the client's CPU (0.8 of
    ~1.0 ms a request on loopback, docs/benchmarks.md). HTTPS proxies are skipped, as there.
    """
    # The variables that decide it, as the key of what was decided: scanning the whole
    # environment at each request cost ~0.05 ms.
    return _env_proxy(tuple(os.environ.get(k) for k in _PROXY_ENV), scheme, host)


# REQUEST_METHOD: under CGI, urllib ignores HTTP_PROXY.
_PROXY_ENV = (
    *("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY"),
    "REQUEST_METHOD",
)


@functools.lru_cache(maxsize=4096)
def _env_proxy(_env: tuple[str | None, ...], scheme: str, host: str) -> str | None:
    proxies = urllib.request.getproxies_environment()
    url = proxies.get(scheme)
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
    if not url or bypass(host, proxies):
        return None
    url = url if "://" in url else f"http://{url}"
    return None if url.lower().startswith("https://") else url


def proxy_hosts() -> set[str]:
    """The hosts of the proxies the environment configures: the user chose them, so they pass."""
    hosts = set()
    for url in urllib.request.getproxies().values():
        host = urlsplit(url if "://" in url else f"http://{url}").hostname
        if host:
            hosts.add(host.lower())
    return hosts


def guarded_resolver(guard: NetGuard) -> Any:
    """An aiohttp resolver that refuses names resolving to an address ``guard`` blocks."""
    from aiohttp.abc import AbstractResolver

    # The system's resolver (getaddrinfo: /etc/hosts, the cluster's DNS), as aiohttp's default
    # is without aiodns; named, so that installing aiodns changes nothing here.
    from aiohttp.resolver import ThreadedResolver

    class GuardedResolver(AbstractResolver):
        """Resolve with aiohttp's own resolver, then check every address it answered."""

        def __init__(self) -> None:
            self.inner = ThreadedResolver()

        async def resolve(
            self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
        ) -> list[Any]:
            answers = await self.inner.resolve(host, port, family)
            if guard.name_allowed(host) or host.lower() in proxy_hosts():
                return answers
            # One blocked answer blocks the name: aiohttp would try the others in turn, and a
            # public name that also answers 127.0.0.1 is an attack, not a fallback.
            for a in answers:
                err = guard.refuse(host, as_address(a["host"]))  # type: ignore[arg-type]
                if err is not None:
                    raise err
            return answers

        async def close(self) -> None:
            await self.inner.close()

    return GuardedResolver()
