"""`blocklist-plugin proxy`: the filtering forward proxy (Cleanfeed stage 2) and its block page.

A shell over the core: every decision is `LiveMatcher.check(url)` or, for
CONNECT, `LiveMatcher.check_host(host)`; this module only speaks HTTP.

Stack: every connection starts on the fast way (resolver_plugin.enforcement.proxy.fast: an
asyncio Protocol that serves a GET or HEAD whose head arrived whole, by a block page or an
origin's answer, in callbacks), which hands anything else, before any side effect, to the
coroutine way here (`_stream`): our strict HTTP/1.1 request parser
(resolver_plugin.enforcement.proxy.head) on the client side, origin.py's lean way and
aiohttp's client towards origins (resolver_plugin.enforcement.proxy.forward). Not aiohttp's web server, because a
forward proxy needs what it does not give: CONNECT with a raw bidirectional
tunnel on the client's socket, a 403 before any byte is parsed for clients
outside `allowed_clients`, our own answers (400/413/414/431) to every
ambiguous request framing, and per-phase timeouts (head, body, idle).

Per connection: refuse when over `max_connections` (503) or not in
`allowed_clients` (403), then serve requests (keep-alive) until an error, a
block or the client closes:

- absolute-form `http://` or `https://` target: checked; listed -> the block page
  (`block_status`, default 451), then the next request if the blocked one had no body
  and said `keep-alive` (Connection or Proxy-Connection, as browsers do), else close;
  else forwarded, bodies streamed;
- origin-form `/path` with one Host: the request of a client that stage 1's
  DNS answer (resolver.proxy_address) or an interception rule sent here as
  if we were the origin; checked and forwarded as `http://Host/path`. One that
  already carries our Via came from us (our own resolver points at us): 508;
- CONNECT host:port: only to `connect_ports`; `check_host`; a host listed
  whole (domain scope) -> the block page; else a TCP tunnel, which to a host
  that carries listed pages carries TLS only (resolver_plugin.enforcement.proxy.connect);
- absolute-form of another scheme: checked as the Squid helper checks it
  (`LiveMatcher.check_any_scheme`: ws/wss as http/https, ftp and the rest by
  host); listed -> the block page, else 400 (only http(s) is forwarded);
- anything else (`*`, bad framing) -> 400 and close.

Every connection to an origin goes only to addresses the destination policy
allows (resolver_plugin.enforcement.proxy.destinations: global unicast, or what
`allow_private_destinations` names), whoever the client.

With `proxy.tls_listen`, a second listener takes the HTTPS that stage 1 steers
here and tunnels it by the host it names (resolver_plugin.enforcement.proxy.tls).

SIGHUP re-reads plugin.yaml (resolver_plugin.operations.reload): the matcher and
then the server take the new settings between two requests, and the access log is
reopened.

Privacy: the access log shows blocked requests as `- blocked list=NAME`
without their URL unless `proxy.log_blocked_urls`; the error log never names
URLs or hosts.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import math
import os
import signal
import socket
import time
from collections.abc import Coroutine
from typing import Any

import aiohttp
from yarl import URL

from blocklist.core.errors import InvalidURL
from blocklist.core.matcher import HostVerdict
from resolver_plugin.cache import LiveMatcher
from resolver_plugin.config import PluginConfig, parse_listen, proxy_workers
from resolver_plugin.enforcement.proxy.blockpage import BlockPage, error_response
from resolver_plugin.enforcement.proxy.connect import DESTINATION_REFUSED, serve_connect
from resolver_plugin.enforcement.proxy.destinations import Destinations
from resolver_plugin.enforcement.proxy.fast import ClientProtocol, FastPool
from resolver_plugin.enforcement.proxy.forward import (
    BodyStream,
    UpstreamError,
    client_address,
    drain,
    forward,
    upstream_url,
)
from resolver_plugin.enforcement.proxy.head import RequestError, RequestHead, iter_body, read_head
from resolver_plugin.enforcement.proxy.origin import OriginPool, fetch, lean
from resolver_plugin.enforcement.proxy.target import OTHER_SCHEME, absolute_target, intercepted_url
from resolver_plugin.enforcement.proxy.tls import sni_tunnel
from resolver_plugin.enforcement.proxy.tls_hello import ACCESS_DENIED_ALERT
from resolver_plugin.enforcement.proxy.workers import Listeners, run_workers
from resolver_plugin.operations import logsetup, metrics
from resolver_plugin.operations.reload import reread, sighup_event

log = logging.getLogger("blocklist.plugin.proxy")
access_log = logging.getLogger("blocklist.plugin.proxy.access")

COMPONENT = "proxy"
RELOAD_INTERVAL = 1.0    # seconds between checks for a new cached list version
OWN_ADDRESS_TICKS = 60   # reload ticks between reads of the host's own addresses
LINGER_SECONDS = 2.0     # lingering close: how long to drain a client after our last answer
LINGER_BYTES = 1 << 20
# What a reload cannot change: the listening sockets, bound at start and carrying connections,
# the cache directory, the one every process of the node shares, and the destination policy,
# which the upstream connection pool's resolver holds from the start.
RESTART_ONLY = ("cache_dir", "proxy.listen", "proxy.tls_listen", "proxy.allow_private_destinations",
                "proxy.workers")
_ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class ProxyServer:
    """One listening proxy: its client networks, limits, block page and upstream session."""

    def __init__(self, config: PluginConfig, live: LiveMatcher, *, header_timeout: float | None = None,
                 idle_timeout: float | None = None) -> None:
        self.live = live
        self._timeouts = (header_timeout, idle_timeout)  # a test's overrides of the configured ones
        self.reconfigure(config)
        self.open_connections = 0
        listening = [parse_listen(a)[0] for a in (self.proxy.listen, self.proxy.tls_listen) if a]
        self.destinations = Destinations(self.proxy.allow_private_destinations, [*self.own_addresses, *listening])
        self.origins = OriginPool(self.destinations)
        self.fast_origins = FastPool(self.destinations)
        self.fast_clients: set[ClientProtocol] = set()
        self.stream_limit = 65536
        self._loop_warned = -math.inf
        self.server: asyncio.Server | None = None
        self.tls_server: asyncio.Server | None = None
        self._more_servers: list[asyncio.Server] = []  # a worker's second address of a listener
        self.session: aiohttp.ClientSession | None = None
        self._handlers: set[asyncio.Task[Any]] = set()

    def reconfigure(self, config: PluginConfig) -> None:
        """Take every setting from `config`; ConfigError (and nothing changed) if its block page is unusable.

        Used at start and on a reload: a request already being served finishes with the settings it
        started with, the next one gets the new ones. The listening addresses and the upstream
        connection pools stay as they were started.
        """
        page = BlockPage(config.proxy, self.live.list_meta)
        header_timeout, idle_timeout = self._timeouts
        self.config, self.proxy, self.page = config, config.proxy, page
        self.header_timeout = header_timeout or config.proxy.header_timeout
        self.idle_timeout = idle_timeout or config.proxy.idle_timeout
        self.networks = [ipaddress.ip_network(n, strict=False) for n in config.proxy.allowed_clients]
        self.timeout = aiohttp.ClientTimeout(total=None, sock_connect=config.proxy.connect_timeout,
                                             sock_read=config.proxy.upstream_timeout)
        # where stage 1 points listed hosts: an origin resolving there is a loop back to us
        r = config.resolver
        self.own_addresses = frozenset(str(ipaddress.ip_address(a)) for a in (r.proxy_address, r.proxy_address6) if a)
        self.connect_ports = frozenset(config.proxy.connect_ports)

    # -- lifecycle

    async def start(self, host: str | None = None, port: int | None = None,
                    sockets: list[socket.socket] | None = None) -> asyncio.Server:
        """The proxy listener: on `sockets` already listening (a worker's), else on host:port or `proxy.listen`."""
        self.session = self._session()
        self.loop = asyncio.get_running_loop()
        self.stream_limit = max(self.proxy.max_header_bytes, 65536)
        # Each connection starts the fast way (resolver_plugin.enforcement.proxy.fast), which hands
        # what it does not take to the coroutine way (`_stream`).
        factory = functools.partial(ClientProtocol, self)
        if sockets:
            self.server, *more = [await self.loop.create_server(factory, sock=s) for s in sockets]
            self._more_servers += more
            return self.server
        if host is None or port is None:
            host, port = parse_listen(self.proxy.listen, "proxy.listen")
        self.server = await self.loop.create_server(factory, host, port, backlog=1024, reuse_address=True)
        return self.server

    async def start_tls(self, host: str | None = None, port: int | None = None,
                        sockets: list[socket.socket] | None = None) -> asyncio.Server:
        """The TLS listener (resolver_plugin.enforcement.proxy.tls), on `sockets`, host:port or `proxy.tls_listen`."""
        serve_tls = functools.partial(self._connection, tls=True)
        if sockets:
            self.tls_server, *more = [await asyncio.start_server(serve_tls, sock=s) for s in sockets]
            self._more_servers += more
            return self.tls_server
        if host is None or port is None:
            host, port = parse_listen(self.proxy.tls_listen or "", "proxy.tls_listen")
        self.tls_server = await asyncio.start_server(serve_tls, host, port, backlog=1024, reuse_address=True)
        return self.tls_server

    def _session(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=self.proxy.max_connections, limit_per_host=0, ttl_dns_cache=60,
                                         resolver=self.destinations.resolver())
        return aiohttp.ClientSession(
            connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            max_line_size=32768, max_field_size=32768, trust_env=False)

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        servers = [s for s in (self.server, self.tls_server, *self._more_servers) if s is not None]
        for server in servers:
            server.close()
        for client in list(self.fast_clients):
            if client.transport is not None:
                client.transport.close()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=5)
        for server in servers:
            await server.wait_closed()
        if self.session is not None:
            await self.session.close()
        self.origins.close()
        self.fast_origins.close()

    # -- one connection

    def allowed(self, ip: str) -> bool:
        """Whether `ip` is in `allowed_clients`."""
        addr = client_address(ip)
        return addr is not None and any(addr in net for net in self.networks)

    @property
    def step(self) -> float:
        """How often at most the fast way's deadline timer of a connection fires: the shortest timeout."""
        return min(self.header_timeout, self.idle_timeout, self.proxy.upstream_timeout)

    def warn_loop(self) -> None:
        """Log, at most once a minute, that an origin resolved to our own address (no host named)."""
        now = time.monotonic()
        if now - self._loop_warned >= 60:
            self._loop_warned = now
            log.error("proxy: an origin resolves to the proxy's own address (resolver.proxy_address): "
                      "this host must resolve names with a resolver other than the filtering Unbound",
                      extra={"event": "proxy_loop"})

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                          tls: bool = False) -> None:
        """A connection of the TLS listener (asyncio.start_server's callback)."""
        peer = writer.get_extra_info("peername")
        self.open_connections += 1
        await self._stream(reader, writer, str(peer[0]) if peer else "-", tls=tls)

    def internal_error(self, exc: BaseException, client_ip: str) -> None:
        log.error("proxy: internal error %s on a connection from %s", type(exc).__name__, client_ip,
                  extra={"event": "proxy_internal_error", "kind": "internal", "reason": type(exc).__name__,
                         "client": client_ip}, exc_info=None)
        log.debug("proxy: internal error", exc_info=exc)

    def track(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` as a task the server keeps (and cancels when it closes)."""
        task = self.loop.create_task(coro)
        self._handlers.add(task)
        task.add_done_callback(self._tracked_done)

    def _tracked_done(self, task: asyncio.Task[None]) -> None:
        self._handlers.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.internal_error(task.exception(), "-")  # type: ignore[arg-type]

    def stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client_ip: str, *,
               first: bool, screened: bool, pending: tuple[Any, ...] | None = None) -> None:
        """Serve the rest of a connection the fast way hands over (counted in open_connections already):
        `screened` if its client was let in, `pending` (head, target, url, started) a checked request
        to forward first."""
        self.track(self._stream(reader, writer, client_ip, first=first, screened=screened, pending=pending))

    async def _stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client_ip: str, *,
                      tls: bool = False, first: bool = True, screened: bool = False,
                      pending: tuple[Any, ...] | None = None) -> None:
        """The coroutine way: serve requests (keep-alive) until an error, a block or the client closes."""
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            if not screened and self.open_connections > self.proxy.max_connections:
                await self._refuse(writer, 503, client_ip, tls)
            elif not screened and not self.allowed(client_ip):
                await self._refuse(writer, 403, client_ip, tls)
            elif tls:
                await sni_tunnel(self, reader, writer, client_ip)
            else:
                more = True
                if pending is not None:
                    head, target, url, started = pending
                    more = await self._forward(reader, writer, head, target, url, client_ip, started)
                    first = False
                while more and await self._request(reader, writer, client_ip, first):
                    first = False
            await _linger(reader, writer)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # shutting down
        except Exception as exc:  # noqa: BLE001 - the edge: no traceback to a client, the server goes on
            # Close without a word: we cannot know how much of a response was already sent.
            self.internal_error(exc, client_ip)
        finally:
            self.open_connections -= 1
            self._handlers.discard(task)
            writer.close()

    async def _refuse(self, writer: asyncio.StreamWriter, status: int, client_ip: str, tls: bool) -> None:
        writer.write(ACCESS_DENIED_ALERT if tls else error_response(status))
        self.access(client_ip, "-", "-", status, 0, 0.0, "refused")
        await drain(writer, 5)

    async def _request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       client_ip: str, first: bool) -> bool:
        """Serve one request; True when the connection may carry another."""
        try:
            head = await self._read_head(reader, first)
        except RequestError as exc:
            return await self.error(writer, exc.status, client_ip, "-", "-")
        except TimeoutError:
            if first:  # nothing or a partial head within header_timeout: tell the client
                return await self.error(writer, 408, client_ip, "-", "-")
            return False  # an idle keep-alive connection: close quietly
        if head is None:
            return False
        started = time.monotonic()
        if head.method == "CONNECT":
            await serve_connect(self, head, reader, writer, client_ip, started)
            return False
        target = absolute_target(head)
        if isinstance(target, int):
            if target == OTHER_SCHEME:
                return await self._other_scheme(writer, head, client_ip, started)
            return await self.error(writer, target, client_ip, head.method, "-")
        try:
            t0 = time.perf_counter()
            verdict = self.live.check(target)
            metrics.observe_check(COMPONENT, verdict, time.perf_counter() - t0)
            url = upstream_url(target)
        except InvalidURL:
            metrics.observe_invalid(COMPONENT)
            return await self.error(writer, 400, client_ip, head.method, "-")
        except RequestError as exc:
            return await self.error(writer, exc.status, client_ip, head.method, "-")
        if verdict.blocked:
            # A request without a body leaves nothing unread: its connection may carry the next one
            # when the client asked for that in so many words (browsers and curl send keep-alive in
            # Connection or Proxy-Connection); one that did not is answered and closed, as ever.
            keep_alive = head.keep_alive and not head.has_body and "keep-alive" in head.connection_tokens
            await self.block(writer, head, client_ip, verdict.list or "unknown", started, keep_alive)
            return keep_alive
        return await self._forward(reader, writer, head, target, url, client_ip, started)

    async def _other_scheme(self, writer: asyncio.StreamWriter, head: RequestHead, client_ip: str,
                            started: float) -> bool:
        """An absolute target of another scheme: checked as the Squid helper checks it
        (ws, wss as http, https; ftp and the rest by host), then refused: we forward only http(s)."""
        try:
            t0 = time.perf_counter()
            verdict = self.live.check_any_scheme(head.target)
            metrics.observe_check(COMPONENT, verdict, time.perf_counter() - t0)
        except InvalidURL:
            metrics.observe_invalid(COMPONENT)
            return await self.error(writer, 400, client_ip, head.method, "-")
        if verdict.blocked:
            await self.block(writer, head, client_ip, verdict.list or "unknown", started)
            return False
        return await self.error(writer, 400, client_ip, head.method, "-")

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: RequestHead,
                       target: str, url: URL, client_ip: str, started: float) -> bool:
        """Forward an allowed request and stream its answer; True when the connection may carry another."""
        if head.content_length is not None and head.content_length > self.proxy.max_body_bytes:
            return await self.error(writer, 413, client_ip, head.method, target)
        if not self.destinations.host_allowed(url.raw_host or ""):
            metrics.observe_refused(COMPONENT, "destination")
            return await self.error(writer, 403, client_ip, head.method, target, "refused destination",
                                    DESTINATION_REFUSED)
        body = None
        if head.has_body:
            if head.expect_continue:
                writer.write(_CONTINUE)
            body = BodyStream(iter_body(reader, head, self.proxy.max_body_bytes, self.proxy.upstream_timeout))
        assert self.session is not None
        try:
            if body is None and lean(head, url):
                result = await fetch(self.origins, head, url, writer, client_ip, self.proxy.connect_timeout,
                                     self.proxy.upstream_timeout, self.proxy.forwarded_for)
            else:
                result = await forward(self.session, head, url, body, writer, client_ip, self.timeout,
                                       self.proxy.forwarded_for)
        except UpstreamError as exc:
            if exc.status == 403:
                metrics.observe_refused(COMPONENT, "destination")
                return await self.error(writer, 403, client_ip, head.method, target, "refused destination",
                                        DESTINATION_REFUSED)
            self.upstream_warning(exc, client_ip)
            return await self.error(writer, exc.status, client_ip, head.method, target)
        except RequestError as exc:
            return await self.error(writer, exc.status, client_ip, head.method, target)
        self.access(client_ip, head.method, target, result.status, result.body_bytes,
                     time.monotonic() - started, "allowed")
        return result.keep_alive and not (body is not None and body.error is not None)

    def upstream_warning(self, exc: UpstreamError, client_ip: str) -> None:
        log.warning("proxy: upstream %s (%s) for a request from %s", exc.status, exc, client_ip,
                    extra={"event": "proxy_upstream_error", "status": exc.status, "reason": str(exc),
                           "client": client_ip})

    async def _read_head(self, reader: asyncio.StreamReader, first: bool) -> RequestHead | None:
        # A keep-alive connection may sit idle between requests: its next head gets idle_timeout.
        async with asyncio.timeout(self.header_timeout if first else self.idle_timeout):
            return await read_head(reader, self.proxy.max_header_bytes)

    async def error(self, writer: asyncio.StreamWriter, status: int, client_ip: str, method: str,
                    target: str, outcome: str = "error", text: str | None = None) -> bool:
        writer.write(error_response(status, head_only=method == "HEAD", text=text))
        self.access(client_ip, method, target, status, 0, 0.0, outcome)
        await drain(writer, 5)
        return False

    async def block(self, writer: asyncio.StreamWriter, head: RequestHead, client_ip: str, list_name: str,
                    started: float, keep_alive: bool = False) -> None:
        response = self.page.response(list_name, head_only=head.method == "HEAD", keep_alive=keep_alive)
        writer.write(response)
        target = "-"
        if self.proxy.log_blocked_urls:
            target = (intercepted_url(head) or "-") if head.target.startswith("/") else head.target
        self.access(client_ip, head.method, target, self.page.status, len(response),
                     time.monotonic() - started, f"blocked list={list_name}")
        await drain(writer, 5)

    def tunnel_verdict(self, host: str) -> HostVerdict | None:
        """check_host for a tunnel (CONNECT, TLS), counted in /metrics; None for a host no URL names."""
        try:
            t0 = time.perf_counter()
            verdict = self.live.check_host(host)
        except InvalidURL:
            metrics.observe_invalid(COMPONENT)
            return None
        metrics.observe_host_check(COMPONENT, verdict, time.perf_counter() - t0)
        return verdict

    def access(self, client_ip: str, method: str, target: str, status: int, size: int, seconds: float,
                outcome: str) -> None:
        if access_log.isEnabledFor(logging.INFO):
            what, _, listed = outcome.partition(" list=")  # "blocked list=NAME": the JSON keeps both apart
            access_log.info("%s %s %s %s %d %d %.3f %s", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                            client_ip, method, target, status, size, seconds, outcome,
                            extra={"event": "proxy_access", "client": client_ip, "method": method, "target": target,
                                   "status": status, "bytes": size, "duration_ms": round(seconds * 1000, 3),
                                   "outcome": what, "list": listed or None})


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Close politely: after our last answer, read (and drop) what the client still sends for a
    moment, so the kernel does not reset the connection before the client reads the answer."""
    if writer.is_closing():
        return
    await asyncio.wait_for(writer.drain(), LINGER_SECONDS)
    if writer.can_write_eof():
        writer.write_eof()
    deadline = asyncio.get_running_loop().time() + LINGER_SECONDS
    drained = 0
    while drained < LINGER_BYTES:
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            break
        piece = await asyncio.wait_for(reader.read(65536), remaining)
        if not piece:
            break
        drained += len(piece)


def setup_access_log(path: str | None) -> None:
    """Send access lines to `path` (one line per request), or nowhere; OSError if it cannot be
    opened, and the current destination stays."""
    handler = None
    if path is not None:
        handler = logging.FileHandler(path)  # first: a path that cannot be opened changes nothing
        handler.setFormatter(logsetup.access_formatter())
    access_log.propagate = False
    for old in list(access_log.handlers):
        access_log.removeHandler(old)
        old.close()
    if handler is None:
        access_log.setLevel(logging.CRITICAL + 1)
        return
    access_log.addHandler(handler)
    access_log.setLevel(logging.INFO)


async def _reload_loop(live: LiveMatcher, destinations: Destinations, parent: int | None = None,
                       stop: asyncio.Event | None = None) -> None:
    """Pick up new cached versions off the event loop: a big list loads in a thread. Now and
    then, read the host's own addresses again: they are refused destinations. A worker whose
    parent is gone (`parent` no longer ours) sets `stop`."""
    loop = asyncio.get_running_loop()
    ticks = 0
    while True:
        await asyncio.sleep(RELOAD_INTERVAL)
        ticks += 1
        if parent is not None and stop is not None and os.getppid() != parent:
            log.error("proxy: the supervising parent %d is gone; stopping", parent,
                      extra={"event": "proxy_parent_gone"})
            stop.set()
            return
        try:
            await loop.run_in_executor(None, live.maybe_reload)
            if ticks % OWN_ADDRESS_TICKS == 0:
                destinations.refresh()
        except Exception:  # noqa: BLE001 - keep enforcing the current lists whatever happens
            log.exception("proxy: reload failed; keeping the current lists", extra={"event": "cache_reload_failed"})


async def _start_admin(config: PluginConfig, live: LiveMatcher) -> Any:
    if config.admin.listen is None:
        return None
    try:
        from resolver_plugin.operations.admin import start_admin
    except ImportError:  # a build without the admin endpoint: the proxy works without it
        log.info("proxy: no admin endpoint in this build")
        return None
    return await start_admin(config, live)  # None when the port is taken (another process serves it)


async def serve(config: PluginConfig, sockets: Listeners | None = None, worker: int | None = None,
                parent: int | None = None) -> int:
    """Run the proxy until SIGTERM/SIGINT, re-reading plugin.yaml on SIGHUP; the exit code.

    A worker of `proxy.workers` (resolver_plugin.enforcement.proxy.workers) serves the
    `sockets` its parent bound, and stops when its `parent` is gone."""
    # check_interval=inf: requests never reload inline; _reload_loop does it in a thread.
    live = LiveMatcher(config, check_interval=math.inf, component=COMPONENT)
    server = ProxyServer(config, live)
    host, port = parse_listen(config.proxy.listen, "proxy.listen")
    try:
        await server.start(host, port, sockets.plain if sockets else None)
    except OSError as exc:
        log.error("proxy: cannot listen on %s: %s", config.proxy.listen, exc.strerror,
                  extra={"event": "proxy_listen_failed", "listen": config.proxy.listen, "reason": exc.strerror})
        await server.close()
        return 1
    if config.proxy.tls_listen is not None:
        try:
            await server.start_tls(sockets=sockets.tls if sockets else None)
        except OSError as exc:
            log.error("proxy: cannot listen on %s: %s", config.proxy.tls_listen, exc.strerror,
                      extra={"event": "proxy_listen_failed", "listen": config.proxy.tls_listen, "reason": exc.strerror})
            await server.close()
            return 1
        log.info("proxy: TLS (SNI tunnel) on %s", config.proxy.tls_listen,
                 extra={"event": "proxy_tls_started", "listen": config.proxy.tls_listen})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reload = sighup_event()
    reloader = asyncio.create_task(_reload_loop(live, server.destinations, parent, stop))
    metrics.share_counters(config.cache_dir, live)  # for whichever process serves the admin endpoint
    admin = await _start_admin(config, live)
    log.info("proxy%s: listening on %s:%d, enforcing %s", f" worker {worker} (pid {os.getpid()})"
             if worker is not None else "", host, server.port,
             ", ".join(f"{n} v{v}" for n, v in live.matcher.versions().items()) or "nothing yet",
             extra={"event": "proxy_started", "node": config.node_id, "listen": f"{host}:{server.port}",
                    "versions": live.matcher.versions()})
    while await _next_event(stop, reload) is reload:
        reload.clear()
        new = reread(server.config, RESTART_ONLY, check=lambda c: BlockPage(c.proxy))
        if new is not None:
            # The lists first, in a thread (a big list takes a while to verify); the old ones
            # answer until the new matcher is complete, and a list that fails to load keeps its
            # current version.
            await loop.run_in_executor(None, live.reconfigure, new)
            server.reconfigure(new)
            await _stop_admin(admin)
            admin = await _start_admin(new, live)
        try:
            setup_access_log(server.proxy.access_log)  # reopened on every SIGHUP, for logrotate
        except OSError as exc:
            log.error("proxy: cannot open the access log %s: %s; logging on where it did",
                      server.proxy.access_log, exc.strerror,
                      extra={"event": "access_log_failed", "file": server.proxy.access_log, "reason": exc.strerror})
    log.info("proxy: stopping", extra={"event": "proxy_stopping"})
    reloader.cancel()
    await _stop_admin(admin)
    await server.close()
    return 0


async def _next_event(*events: asyncio.Event) -> asyncio.Event:
    """Wait until one of `events` is set; the first that is."""
    waiters = {asyncio.ensure_future(e.wait()): e for e in events}
    done, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for waiter in pending:
        waiter.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return next(e for e in events if e.is_set())


async def _stop_admin(admin: Any) -> None:
    cleanup = getattr(admin, "cleanup", None)
    if cleanup is not None:
        await cleanup()


def run_proxy(config: PluginConfig) -> int:
    """`blocklist-plugin proxy`: serve until stopped; ConfigError if the block page is unusable."""
    BlockPage(config.proxy)  # fail at start, with the CLI's error message, not at the first block
    setup_access_log(config.proxy.access_log)
    count = proxy_workers(config.proxy)
    if count > 1:
        return run_workers(config, count, serve_worker, RESTART_ONLY, check=lambda c: BlockPage(c.proxy))
    return _run(serve(config))


def serve_worker(config: PluginConfig, sockets: Listeners, worker: int, parent: int) -> int:
    """One worker of `proxy.workers` (in the forked process): serve `sockets` until stopped; the exit code."""
    return _run(serve(config, sockets=sockets, worker=worker, parent=parent))


def _run(main: Coroutine[Any, Any, int]) -> int:
    """Run the proxy on asyncio's own event loop. (uvloop measured no gain here, and its resolver
    is libuv's, not the socket module's: see docs/BENCHMARKS.md.)"""
    return asyncio.run(main)
