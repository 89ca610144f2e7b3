"""CONNECT: which tunnels the proxy opens, and what it lets through them.

A tunnel carries bytes the proxy does not read, so it must carry nothing the
proxy could have checked. `CONNECT host:port`:

1. `port` must be one of `proxy.connect_ports` (default 443): any other gets
   403, `refused port=N` in the access log (the host is not logged) and
   refused{reason="connect_port"} in /metrics. A tunnel to port 80 would carry
   plain HTTP, whose URLs the proxy checks, past the check.
2. The host is checked (`check_host`): a host listed whole, or any host while
   fail-closed without lists, gets the block page.
3. The connection goes only to addresses the destination policy allows
   (resolver_plugin.enforcement.proxy.destinations): else 403, `refused destination`.
4. A host that carries listed pages (PROXY): after `200 Connection
   established` the proxy reads the client's first bytes, as the TLS listener
   does (resolver_plugin.enforcement.proxy.tls). A TLS ClientHello is passed on
   and the tunnel runs; anything else (plain HTTP asking for a listed page,
   any other protocol, nothing within `header_timeout`) gets a 403 answer
   inside the tunnel, `refused not-tls` and refused{reason="not_tls"}, and the
   tunnel closes before a byte reaches the origin. Refused, not parsed as
   HTTP: a client that wants plain HTTP to such a host asks the proxy for it
   with GET, where every URL is checked.
5. An IP literal (`CONNECT 192.0.2.7:443`, `CONNECT [2001:db8::7]:443`): an
   address names no site, and a server on it may host many, so the tunnel is
   read as in 4 (TLS only), and the server name the ClientHello asks for (SNI)
   is checked as the TLS listener checks it: a name listed whole, or any name
   while fail-closed, gets a TLS access_denied alert, `blocked list=NAME` in
   the access log (target `-`), and nothing reaches the origin. A ClientHello
   naming no server passes (an address certificate names none); one naming
   something no URL could name gets the alert and `refused server-name`.
   Hosts that carry entries (4) get the same server-name check.
6. A host that carries no entries: tunnelled at once, nothing read (no cost).
   A client could send another site's name in its ClientHello through such a
   tunnel; where one server answers for both, it reaches that site. Squid
   without ssl_bump has the same gap; stage 1 still blocks the listed name
   itself when the client resolves it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from blocklist.core.digests import is_ip
from blocklist.core.errors import InvalidURL
from blocklist.core.matcher import HostAction, HostVerdict
from blocklist.core.urls import canonicalize_host
from resolver_plugin.config import ProxyConfig
from resolver_plugin.enforcement.proxy.blockpage import BlockPage, error_response
from resolver_plugin.enforcement.proxy.destinations import Destinations
from resolver_plugin.enforcement.proxy.forward import UpstreamError, open_tunnel, tunnel
from resolver_plugin.enforcement.proxy.head import RequestHead
from resolver_plugin.enforcement.proxy.tls import read_hello
from resolver_plugin.enforcement.proxy.tls_hello import ACCESS_DENIED_ALERT, ClientHelloError
from resolver_plugin.operations import metrics

COMPONENT = "proxy"
ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"
PORT_REFUSED = "This proxy opens tunnels to a few ports only (HTTPS), not to this one."
DESTINATION_REFUSED = "This proxy does not connect to private, local or internal addresses."
NOT_TLS = "Only TLS may pass through a tunnel to this site; ask the proxy for plain HTTP pages."


class ConnectServer(Protocol):
    """What CONNECT needs of the proxy it belongs to (server.ProxyServer)."""

    proxy: ProxyConfig
    page: BlockPage
    header_timeout: float
    destinations: Destinations
    connect_ports: frozenset[int]

    def tunnel_verdict(self, host: str) -> HostVerdict | None: ...

    async def block(self, writer: asyncio.StreamWriter, head: RequestHead, client_ip: str, list_name: str,
                    started: float) -> None: ...

    async def error(self, writer: asyncio.StreamWriter, status: int, client_ip: str, method: str, target: str,
                    outcome: str = "error", text: str | None = None) -> bool: ...

    def access(self, client_ip: str, method: str, target: str, status: int, size: int, seconds: float,
               outcome: str) -> None: ...


async def serve_connect(server: ConnectServer, head: RequestHead, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter, client_ip: str, started: float) -> None:
    """Answer one CONNECT request and run its tunnel, if any, to the end."""
    host, _, port_text = head.target.rpartition(":")  # an IPv6 literal keeps its brackets here
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536 or len(port_text) > 5:
        await server.error(writer, 400, client_ip, "CONNECT", "-")
        return
    port = int(port_text)
    if port not in server.connect_ports:
        metrics.observe_refused(COMPONENT, "connect_port")
        await server.error(writer, 403, client_ip, "CONNECT", "-", f"refused port={port}", PORT_REFUSED)
        return
    verdict = server.tunnel_verdict(host)
    if verdict is None:
        await server.error(writer, 400, client_ip, "CONNECT", "-")
        return
    if verdict.action is HostAction.BLOCK or verdict.fail_closed:
        await server.block(writer, head, client_ip, verdict.list or "unknown", started)
        return
    try:
        up_reader, up_writer = await open_tunnel(host.removeprefix("[").removesuffix("]"), port,
                                                 server.proxy.connect_timeout, server.destinations)
    except UpstreamError as exc:
        refused = exc.status == 403
        if refused:
            metrics.observe_refused(COMPONENT, "destination")
        await server.error(writer, exc.status, client_ip, "CONNECT", head.target,
                           "refused destination" if refused else "error", DESTINATION_REFUSED if refused else None)
        return
    writer.write(ESTABLISHED)
    inspect = verdict.action is HostAction.PROXY or _is_address(host)
    try:
        passed = not inspect or await _tls_first(server, reader, writer, up_writer, client_ip, head.target, started)
    except BaseException:  # the client went away, a shutdown: the origin connection goes too
        up_writer.close()
        raise
    if not passed:
        up_writer.close()
        return
    _, received = await tunnel(reader, writer, up_reader, up_writer, server.proxy.upstream_timeout)
    server.access(client_ip, "CONNECT", head.target, 200, received, time.monotonic() - started, "tunnel")


async def _tls_first(server: ConnectServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     up_writer: asyncio.StreamWriter, client_ip: str, target: str, started: float) -> bool:
    """Pass on the client's ClientHello and say True; refuse anything else (False)."""
    try:
        hello, data = await read_hello(reader, server.header_timeout)
    except (ClientHelloError, TimeoutError):
        metrics.observe_refused(COMPONENT, "not_tls")
        writer.write(error_response(403, text=NOT_TLS))
        server.access(client_ip, "CONNECT", target, 403, 0, time.monotonic() - started, "refused not-tls")
        await asyncio.wait_for(writer.drain(), 5)
        return False
    if hello is None:  # the client left before a whole ClientHello
        server.access(client_ip, "CONNECT", target, 200, 0, time.monotonic() - started, "tunnel")
        return False
    if hello.server_name is not None:
        named = server.tunnel_verdict(hello.server_name)
        refusal = None
        if named is None:
            refusal = (400, "refused server-name")
        elif named.action is HostAction.BLOCK or named.fail_closed:
            refusal = (server.page.status, f"blocked list={named.list or 'unknown'}")
        if refusal is not None:
            writer.write(ACCESS_DENIED_ALERT)
            server.access(client_ip, "CONNECT", "-", refusal[0], 0, time.monotonic() - started, refusal[1])
            await asyncio.wait_for(writer.drain(), 5)
            return False
    up_writer.write(data)
    return True


def _is_address(host: str) -> bool:
    """Whether a CONNECT target's host is an IP literal, in any form canonicalization reads as one."""
    try:
        return is_ip(canonicalize_host(host))
    except InvalidURL:
        return False
