"""Where the proxy may connect: global unicast addresses, and the networks the operator allows.

A subscriber in `allowed_clients` must not get the proxy to open connections
into places the subscriber cannot reach itself: the proxy's host (its admin
endpoint, sshd, the resolver), cloud metadata (169.254.169.254), the ISP's
private networks. So by default every address the proxy connects to must be
global unicast:

- refused: the proxy's own addresses (every interface's, `resolver.proxy_address(6)`,
  the listen addresses), loopback, unspecified, link-local, multicast,
  private (RFC 1918, fc00::/7), shared (100.64.0.0/10), documentation,
  reserved, site-local, and whatever else `ipaddress` does not call global;
- an IPv4-mapped (::ffff:a.b.c.d) or NAT64 (64:ff9b::a.b.c.d) address is
  judged by the IPv4 address it carries, a 6to4 one (2002::/16) by both;
- `proxy.allow_private_destinations: true` lets every address through; a list
  of networks lets the addresses in them through (own addresses included).

The rule is the same for every client, the proxy's own host included.

Every address is checked where the connection is made, after resolution:
tunnels resolve the name once and connect to the addresses they checked
(forward.open_tunnel); aiohttp connects to the addresses its resolver returns,
so the forwarding session gets `PolicyResolver`, which drops refused ones; an
IP literal, which aiohttp connects to without a resolver, is checked by
`host_allowed` first. A name that re-resolves elsewhere later (DNS rebinding)
is checked again at that resolution.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215: local use, not global
_CACHE_SIZE = 4096


class DestinationRefused(OSError):
    """Every address a name resolves to is one the proxy does not connect to."""


def parse_address(text: str) -> Address | None:
    """An address as written in a URL host or by getaddrinfo ("[v6]", "fe80::1%eth0"); None if not one."""
    try:
        addr = ipaddress.ip_address(text.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    return _unwrap(addr)


def _unwrap(addr: Address) -> Address:
    """The IPv4 address an IPv4-mapped or NAT64 IPv6 address reaches; else the address."""
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return addr.ipv4_mapped
        if addr in _NAT64:
            return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return addr


def is_global_unicast(addr: Address) -> bool:
    """Whether `addr` is an address of the public internet a connection can go to."""
    if addr.is_multicast or addr.is_unspecified or addr.is_loopback or addr.is_link_local or addr.is_private:
        return False
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.is_site_local or addr in _NAT64_LOCAL:
            return False
        if addr.sixtofour is not None and not is_global_unicast(addr.sixtofour):
            return False
    return addr.is_global and not addr.is_reserved


class Destinations:
    """The destination policy of one proxy: `allowed(address)` for every address it connects to."""

    def __init__(self, allow: bool | Iterable[str], own: Iterable[str] = ()) -> None:
        self.allow_all = allow is True
        nets = () if isinstance(allow, bool) else allow
        self.networks = tuple(ipaddress.ip_network(n, strict=False) for n in nets)
        self._configured_own = tuple(own)
        self.own: frozenset[Address] = frozenset()
        self._cache: dict[str, bool] = {}
        self.refresh()

    def refresh(self) -> None:
        """Read the host's own addresses again (an interface may have gained one)."""
        own = {parse_address(a) for a in (*self._configured_own, *local_addresses())}
        self.own = frozenset(a for a in own if a is not None)
        self._cache = {}

    def allowed(self, address: str) -> bool:
        """Whether the proxy may connect to `address` (an IP address as text; anything else: no)."""
        if self.allow_all:
            return True
        verdict = self._cache.get(address)
        if verdict is None:
            verdict = self._judge(address)
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            self._cache[address] = verdict
        return verdict

    def _judge(self, address: str) -> bool:
        addr = parse_address(address)
        if addr is None:
            return False
        if any(addr in net for net in self.networks):
            return True
        return addr not in self.own and is_global_unicast(addr)

    def host_allowed(self, host: str) -> bool:
        """For a URL's host: False for an IP literal the policy refuses. A name is judged
        where it is resolved (PolicyResolver). The IP test is aiohttp's own, so every host
        aiohttp connects to without resolving is judged here."""
        if self.allow_all or not (":" in host or host.replace(".", "").isdigit()):
            return True
        return self.allowed(host)

    def resolver(self) -> AbstractResolver | None:
        """The resolver for the forwarding session: None (aiohttp's own) when everything is allowed."""
        return None if self.allow_all else PolicyResolver(self)


class PolicyResolver(AbstractResolver):
    """aiohttp's threaded resolver without the addresses the policy refuses; DestinationRefused
    when none is left."""

    def __init__(self, destinations: Destinations) -> None:
        self._inner = aiohttp.ThreadedResolver()
        self._destinations = destinations

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[Any]:
        kept = [r for r in await self._inner.resolve(host, port, family) if self._destinations.allowed(r["host"])]
        if not kept:
            raise DestinationRefused("resolves only to addresses the proxy does not connect to")
        return kept

    async def close(self) -> None:
        await self._inner.close()


def local_addresses() -> list[str]:
    """This host's addresses (Linux /proc; nothing elsewhere): the kernel's local IPv4 routes
    and the IPv6 interface addresses."""
    found: list[str] = []
    try:
        lines = Path("/proc/net/fib_trie").read_text().splitlines()
    except OSError:
        lines = []
    for previous, line in zip(lines, lines[1:], strict=False):
        if line.strip() == "/32 host LOCAL" and "|--" in previous:
            found.append(previous.split("|--", 1)[1].strip())
    try:
        rows = Path("/proc/net/if_inet6").read_text().splitlines()
    except OSError:
        rows = []
    for row in rows:
        digits = row.split(" ", 1)[0]
        if len(digits) == 32:
            found.append(str(ipaddress.IPv6Address(int(digits, 16))))
    return found
