"""The proxy's TLS listener: HTTPS that stage 1 steered here, tunnelled by the host it names.

Stage 1 (the Unbound module) answers a host that carries listed pages with the
proxy's address, for every protocol. Plain HTTP arrives as origin-form requests
and is checked URL by URL. HTTPS arrives here, on `proxy.tls_listen` (port 443
of `resolver.proxy_address`): the proxy cannot see its URLs, so it reads the
host name the client asked for (SNI, from the ClientHello, resolver_plugin.enforcement.proxy.tls_hello),
checks it with `LiveMatcher.check_host` as CONNECT does, and

- a host listed whole (or fail-closed without lists): a TLS access_denied alert;
- any other host: a TCP tunnel to host:`tls_origin_port`, the ClientHello
  replayed untouched; TLS runs end to end between client and origin;
- no host name, not TLS, a malformed ClientHello, or none within the head
  timeout: an alert or a close, and nothing is connected;
- a host whose every address the destination policy refuses (loopback,
  private, the proxy's own, ...: resolver_plugin.enforcement.proxy.destinations): a close,
  `refused destination` in the access log.

These are the rules of CONNECT (resolver_plugin.enforcement.proxy.connect) too: only TLS
is tunnelled here, and only to `tls_origin_port`.

So HTTPS to a host with listed pages keeps working (without stage 2's URL
check, which TLS hides), where without this listener it would fail for the
whole host. The origin is resolved by the proxy's own resolver; a name that
resolves to `resolver.proxy_address(6)` is a loop (that resolver is the
filtering Unbound) and is refused with 508 in the access log.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from blocklist.core.matcher import HostAction, HostVerdict
from resolver_plugin.config import ProxyConfig
from resolver_plugin.enforcement.proxy.blockpage import BlockPage
from resolver_plugin.enforcement.proxy.destinations import Destinations
from resolver_plugin.enforcement.proxy.forward import UpstreamError, open_tunnel, tunnel
from resolver_plugin.enforcement.proxy.tls_hello import (
    ACCESS_DENIED_ALERT,
    ClientHello,
    ClientHelloError,
    read_client_hello,
)
from resolver_plugin.operations import metrics

COMPONENT = "proxy"
READ_SIZE = 4096


class TunnelServer(Protocol):
    """What the TLS listener needs of the proxy it belongs to (server.ProxyServer)."""

    proxy: ProxyConfig
    page: BlockPage
    header_timeout: float
    own_addresses: frozenset[str]
    destinations: Destinations

    def tunnel_verdict(self, host: str) -> HostVerdict | None: ...

    def warn_loop(self) -> None: ...

    def access(self, client_ip: str, method: str, target: str, status: int, size: int, seconds: float,
               outcome: str) -> None: ...


async def sni_tunnel(server: TunnelServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     client_ip: str) -> None:
    """Serve one connection of the TLS listener (its client already allowed)."""
    started = time.monotonic()
    try:
        hello, data = await read_hello(reader, server.header_timeout)
    except ClientHelloError:
        metrics.observe_invalid(COMPONENT)
        await _deny(server, writer, client_ip, "-", 400, started, "not a TLS ClientHello")
        return
    if hello is None:
        return  # closed before a whole ClientHello: nothing to answer
    host = hello.server_name
    if host is None:
        await _deny(server, writer, client_ip, "-", 421, started, "no server name")
        return
    verdict = server.tunnel_verdict(host)
    if verdict is None:
        await _deny(server, writer, client_ip, "-", 400, started, "invalid server name")
        return
    port = server.proxy.tls_origin_port
    if verdict.action is HostAction.BLOCK or verdict.fail_closed:
        target = f"{host}:{port}" if server.proxy.log_blocked_urls else "-"
        await _deny(server, writer, client_ip, target, server.page.status, started,
                    f"blocked list={verdict.list or 'unknown'}")
        return
    try:
        up_reader, up_writer = await open_tunnel(host, port, server.proxy.connect_timeout, server.destinations,
                                                 loop_addresses=server.own_addresses)
    except UpstreamError as exc:
        if exc.status == 508:
            server.warn_loop()
        if exc.status == 403:
            metrics.observe_refused(COMPONENT, "destination")
        server.access(client_ip, "TLS", f"{host}:{port}", exc.status, 0, time.monotonic() - started,
                      "refused destination" if exc.status == 403 else "error")
        return  # the client sees the connection close, as for an unreachable site
    up_writer.write(data)  # the ClientHello, and anything after it, untouched
    _, received = await tunnel(reader, writer, up_reader, up_writer, server.proxy.upstream_timeout)
    server.access(client_ip, "TLS", f"{host}:{port}", 200, received, time.monotonic() - started, "tunnel")


async def read_hello(reader: asyncio.StreamReader, timeout: float) -> tuple[ClientHello | None, bytes]:
    """The ClientHello at the start of `reader` and every byte read for it; (None, bytes) when the
    peer closed first. ClientHelloError for bytes that are not one, TimeoutError past `timeout`."""
    data = b""
    async with asyncio.timeout(timeout):
        while (hello := read_client_hello(data)) is None:
            chunk = await reader.read(READ_SIZE)
            if not chunk:
                return None, data
            data += chunk
    return hello, data


async def _deny(server: TunnelServer, writer: asyncio.StreamWriter, client_ip: str, target: str, status: int,
                started: float, outcome: str) -> None:
    writer.write(ACCESS_DENIED_ALERT)
    server.access(client_ip, "TLS", target, status, 0, time.monotonic() - started, outcome)
    await asyncio.wait_for(writer.drain(), 5)
