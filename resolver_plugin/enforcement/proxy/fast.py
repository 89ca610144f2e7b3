"""The proxy's common case in callbacks: no coroutine, no stream and no timer per request.

Most requests a proxy sees are a GET in one packet on a kept-alive connection, answered by a
block page or by an origin's answer with a Content-Length. For those, `ClientProtocol` (an
asyncio.Protocol per client connection) and `OriginProtocol` (per kept-alive origin
connection) do the whole exchange in `data_received` callbacks: the request head is parsed
in one go from the bytes received, checked, answered or written to a pooled origin
connection, and the origin's response head parsed in one go and re-framed for the client.

Everything else goes the coroutine way (server.py's `_stream`, head.py, origin.py, forward.py),
which stays the reference for every rule:
- the request head: only one that arrived whole, CRLF-terminated lines, within
  `max_header_bytes`, `MAX_HEADERS` fields, every line matching head.py's grammar (and
  head._framing accepting it) is parsed here; for anything else (a partial head past
  the limit, an LF-only line, a bare CR, obs-fold, a bad field, a bad framing, CONNECT,
  a body, another scheme, a target head.py or target.py refuses, end of input) the
  connection is handed, before any side effect, to the coroutine way with the bytes
  received so far (`transport.set_protocol` with a StreamReaderProtocol): it answers
  exactly as it always did (400/413/414/431/...), since it parses the same bytes;
- the response: one whose head arrived whole with CRLF lines matching origin.py's grammar,
  a final status (not 1xx) and a Content-Length or no body (HEAD, 204, 304), or none of
  those (to the close), is passed on here; any other (chunked, LF-only lines, 1xx, a line
  origin.py refuses, a head past MAX_HEAD) is handed to origin.py's coroutine with the
  bytes received (`origin.deliver`), which answers it as before.

Timeouts are deadlines, checked by one timer per connection that fires at most every
`step` seconds (the shortest configured timeout) and re-arms itself: a request moves the
deadline (a float), it does not create a timer. The deadlines are those of the coroutine
way: header_timeout for a connection's first head (then 408), idle_timeout between
requests (then a quiet close), upstream_timeout for each wait on the origin (504 before
the response head was sent, then a close) and for a client that stops reading.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from blocklist.core.errors import InvalidURL
from resolver_plugin.enforcement.proxy import origin as slow_origin
from resolver_plugin.enforcement.proxy.blockpage import error_response
from resolver_plugin.enforcement.proxy.connect import DESTINATION_REFUSED
from resolver_plugin.enforcement.proxy.destinations import Destinations
from resolver_plugin.enforcement.proxy.forward import (
    HOP_BY_HOP,
    VIA,
    UpstreamError,
    frame,
    open_origin,
    upstream_url,
)
from resolver_plugin.enforcement.proxy.head import MAX_HEADERS, RequestError, RequestHead
from resolver_plugin.enforcement.proxy.target import absolute_target, intercepted_url
from resolver_plugin.operations import metrics

COMPONENT = "proxy"
LINGER_SECONDS = 2.0
LINGER_BYTES = 1 << 20

# head.py's grammar, a whole line at a time (CR and LF are in none of the classes)
_REQUEST_LINE = re.compile(r"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([\x21-\x7e]+) (HTTP/1\.[01])")
_FIELD = re.compile(r"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*((?:[^\x00-\x08\x0a-\x1f\x7f]*[^\x00-\x20\x7f])?)[ \t]*")
_CONNECTION_FIELDS = frozenset({"connection", "proxy-connection"})
_FRAMING_FIELDS = frozenset({"content-length", "transfer-encoding", "expect"})
# origin.py's grammar for a response head's lines
_STATUS = re.compile(rb"HTTP/1\.([01]) ([2-9][0-9][0-9])(?: ([\t\x20-\x7e\x80-\xff]*))?")
_RFIELD = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*((?:[^\x00-\x08\x0a-\x1f\x7f]*[^\x00-\x20\x7f])?)[ \t]*")
_NO_BODY_STATUS = frozenset({204, 304})
# An http:// target yarl reads as it stands (forward.upstream_url): a plain host, a port 1-65535
# without leading zeros, a path without a fragment. Others (IDNA, IPv6, userinfo, ...) go to yarl.
_SIMPLE_HTTP = re.compile(r"http://([A-Za-z0-9][A-Za-z0-9.\-]*)(?::([1-9][0-9]{0,4}))?(/[^#]*)?")

IDLE, BUSY, SLOW, LINGER, CLOSED = range(5)


def parse_request(data: bytes, end: int) -> RequestHead | None:
    """The head in data[:end] (end: where its CRLFCRLF starts) if it is one the fast way takes, else None.

    None means "let head.py read it": every head this accepts, head.py accepts alike and
    reads the same (its framing included: a head this takes has no Content-Length,
    Transfer-Encoding or Expect field and at most one Host, so head._framing finds no body
    and only the Connection and Proxy-Connection tokens), so a None costs a second parse."""
    try:
        text = data[:end].decode("utf-8")
    except UnicodeDecodeError:
        return None
    lines = text.split("\r\n")
    match = _REQUEST_LINE.fullmatch(lines[0])
    if match is None or len(lines) > MAX_HEADERS + 1:
        return None
    headers: list[tuple[str, str]] = []
    hosts = 0
    tokens: set[str] = set()
    for line in lines[1:]:
        field = _FIELD.fullmatch(line)
        if field is None:
            return None
        name, value = pair = field.groups()
        headers.append(pair)  # type: ignore[arg-type]  # two groups: (name, value)
        lname = name.lower()
        if lname == "host":
            hosts += 1
        elif lname in _CONNECTION_FIELDS:
            for token in value.split(","):
                token = token.strip().lower()
                if token:
                    tokens.add(token)
        elif lname in _FRAMING_FIELDS:
            return None
    if hosts > 1:
        return None
    method, target, version = match.groups()
    return RequestHead(method, target, version, headers, connection_tokens=frozenset(tokens))


def simple_http(target: str) -> tuple[str, int, str, str] | None:
    """(host, port, path and query, Host field) of a plain http:// target, as forward.upstream_url's
    URL gives them (raw_host, port, raw_path_qs, host_port_subcomponent); None for any other."""
    match = _SIMPLE_HTTP.fullmatch(target)
    if match is None:
        return None
    host, port_text, path = match.groups()
    if "xn--" in host.lower():
        return None
    port = int(port_text) if port_text else 80
    if port > 65535:
        return None
    return host, port, path or "/", host if port == 80 else f"{host}:{port}"


_SPECIAL = frozenset({b"transfer-encoding", b"content-length", b"connection"})
_HOP_BY_HOP = frozenset(name.encode() for name in HOP_BY_HOP)
_VIA_LINE = f"Via: {VIA}".encode()
_status_lines: dict[bytes, bytes] = {}


class Reframed:
    """An origin's response head as the client gets it, and how its body is framed."""

    __slots__ = ("head", "status", "length", "chunked", "keep_alive", "reusable")

    def __init__(self, head: bytes, status: int, length: int | None, chunked: bool, keep_alive: bool,
                 reusable: bool) -> None:
        self.head, self.status, self.length = head, status, length  # length None: to the close
        self.chunked, self.keep_alive, self.reusable = chunked, keep_alive, reusable


def _status_line(raw: bytes, match: re.Match[bytes]) -> bytes:
    """The client's status line for the origin's `raw` one, as forward.response_head writes it (remembered)."""
    reason = (match.group(3) or b"").decode("latin-1")
    line = f"HTTP/1.1 {int(match.group(2))} {reason}".rstrip().encode("latin-1")
    if len(_status_lines) > 256:
        _status_lines.clear()
    _status_lines[raw] = line
    return line


def reframe(data: bytes, end: int, request: RequestHead) -> Reframed | None:
    """The final response head in data[:end] re-framed for `request`'s client, exactly as origin.py
    reads it (read_response_head, _framing) and forward.response_head writes it; None for a head
    the fast way leaves to them (1xx, Transfer-Encoding, a line they refuse, an odd Content-Length
    or Connection value)."""
    lines = data[:end].split(b"\r\n")
    status_match = _STATUS.fullmatch(lines[0])
    if status_match is None or len(lines) > slow_origin.MAX_FIELDS + 1 or status_match.group(2) == b"101":
        return None
    minor = status_match.group(1)
    fields: list[tuple[bytes, bytes, bytes]] = []
    lengths: set[bytes] = set()
    named: set[bytes] = set()
    close = minor == b"0"
    for line in lines[1:]:
        field = _RFIELD.fullmatch(line)
        if field is None:
            return None
        name, value = field.groups()
        lname = name.lower()
        if lname in _SPECIAL:
            if lname == b"transfer-encoding" or not value.isascii():
                return None
            if lname == b"content-length":
                lengths.update(v.strip() for v in value.split(b","))
            else:
                tokens = {t.strip().lower() for t in value.split(b",")}
                named |= tokens
                close = close or b"close" in tokens
                if minor == b"0" and b"keep-alive" in tokens:
                    close = False
        fields.append((name, value, lname))
    status = int(status_match.group(2))
    no_body = request.method == "HEAD" or status in _NO_BODY_STATUS
    length: int | None = None
    if no_body:
        length = 0
    elif lengths:
        value = next(iter(lengths))
        if len(lengths) != 1 or not value.isdigit() or len(value) > 18:
            return None
        length = int(value)
    version11 = request.version == "HTTP/1.1"
    keep_alive = request.keep_alive and (length is not None or version11)
    chunked = length is None and version11
    drop = _HOP_BY_HOP | named if named else _HOP_BY_HOP
    if chunked:
        drop = drop | {b"content-length"}
    out = [_status_lines.get(lines[0]) or _status_line(lines[0], status_match)]
    out += [name + b": " + value for name, value, lname in fields if lname not in drop]
    out.append(_VIA_LINE)
    if chunked:
        out.append(b"Transfer-Encoding: chunked")
    if not keep_alive:
        out.append(b"Connection: close")
    out.append(b"\r\n")
    return Reframed(b"\r\n".join(out), status, length, chunked, keep_alive, length is not None and not close)


class _ClientWriter:
    """What origin.deliver writes to: the client's transport, with its flow control (no StreamWriter)."""

    def __init__(self, protocol: ClientProtocol) -> None:
        self.protocol = protocol
        assert protocol.transport is not None
        self.transport = protocol.transport

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    async def drain(self) -> None:
        if self.transport.is_closing():
            await asyncio.sleep(0)
        await self.protocol.writable()


class OriginProtocol(asyncio.Protocol):
    """One connection to an origin; its bytes go to the client connection it serves now."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.client: ClientProtocol | None = None
        self.dead = False
        self.used = 0.0
        self.key: tuple[str, int] = ("", 0)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is None:  # something unasked: never reused
            self.dead = True
            self.close()
            return
        try:
            client.origin_data(data)
        except Exception as exc:  # noqa: BLE001 - the edge: no traceback to a client, the server goes on
            client._internal_error(exc)  # noqa: SLF001 - its own module

    def eof_received(self) -> bool:
        self.dead = True
        if self.client is not None:
            self.client.origin_closed()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.dead = True
        client = self.client
        if client is not None:
            client.origin_closed()

    def reusable(self, now: float) -> bool:
        return (not self.dead and now - self.used < slow_origin.IDLE_SECONDS and self.transport is not None
                and not self.transport.is_closing())

    def close(self) -> None:
        self.dead = True
        if self.transport is not None:
            self.transport.close()


class FastPool(slow_origin.IdlePool["OriginProtocol"]):
    """Idle kept-alive OriginProtocol connections, by (host, port): origin.IdlePool's rules."""

    def __init__(self, destinations: Destinations) -> None:
        super().__init__()
        self.destinations = destinations

    def put(self, conn: OriginProtocol, now: float) -> None:
        conn.client = None
        self.keep(conn.key, conn, now)


class ClientProtocol(asyncio.Protocol):
    """One client connection served the fast way until something needs the coroutine way."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.paused = False  # the transport's write buffer is full: the client is not reading
        self._lost = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self.state = IDLE
        self.buf = b""
        self.first = True
        self.eof = False
        self.transport: asyncio.Transport | None = None
        self.client_ip = "-"
        self.timer: asyncio.TimerHandle | None = None
        self.deadline = 0.0
        self.lingered = 0
        # the request in flight (BUSY)
        self.head: RequestHead | None = None
        self.target = ""
        self.started = 0.0
        self.host = ""
        self.port = 80
        self.request = b""
        self.origin: OriginProtocol | None = None
        self.reused = False
        self.rbuf = b""
        self.sent_head = False
        self.remaining: int | None = None  # body bytes still to come; None: to the close
        self.chunked = False
        self.keep_alive = False
        self.reusable = False
        self.status = 0
        self.sent = 0

    # -- the connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        server = self.server
        peer = transport.get_extra_info("peername")
        self.client_ip = str(peer[0]) if peer else "-"
        server.open_connections += 1
        server.fast_clients.add(self)
        if server.open_connections > server.proxy.max_connections or not server.allowed(self.client_ip):
            self._slow(screened=False)  # the coroutine way refuses it, as ever
            return
        self._arm(server.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_exception(ConnectionResetError("connection lost"))
        if self.state != SLOW:
            self.server.open_connections -= 1
        self.server.fast_clients.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.origin is not None:
            self.origin.client = None
            self.origin.close()
            self.origin = None
        self.state = CLOSED

    def data_received(self, data: bytes) -> None:
        try:
            self._received(data)
        except Exception as exc:  # noqa: BLE001 - the edge: no traceback to a client, the server goes on
            self._internal_error(exc)

    def _internal_error(self, exc: Exception) -> None:
        """As the coroutine way ends a connection on a bug: logged without a traceback (debug has it), closed."""
        self.server.internal_error(exc, self.client_ip)
        self._close()

    def _received(self, data: bytes) -> None:
        state = self.state
        if state == IDLE:
            self.buf = self.buf + data if self.buf else data
            self._serve()
        elif state == BUSY:
            self.buf += data  # pipelined: served after this answer
            if len(self.buf) > 65536 and self.transport is not None:
                self.transport.pause_reading()
        elif state == LINGER:
            self.lingered += len(data)
            if self.lingered > LINGER_BYTES:
                self._close()

    def eof_received(self) -> bool:
        self.eof = True
        if self.state == IDLE:
            self._slow()  # an EOF between requests or inside a head: as the coroutine way sees it
        elif self.state == LINGER:
            self._close()
        return True  # keep the transport: an answer may still be on its way

    async def writable(self) -> None:
        """Wait until the client took enough of what was written (StreamWriter.drain's wait)."""
        if self._lost:
            raise ConnectionResetError("connection lost")
        if not self.paused:
            return
        waiter = self.server.loop.create_future()
        self._drain_waiters.append(waiter)
        try:
            await waiter
        finally:
            self._drain_waiters.remove(waiter)

    def resume_writing(self) -> None:
        self.paused = False
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        if self.origin is not None and self.origin.transport is not None:
            self.origin.transport.resume_reading()

    def pause_writing(self) -> None:
        self.paused = True
        loop = self.server.loop
        if self.state == BUSY:
            self.deadline = loop.time() + self.server.proxy.upstream_timeout  # the client's drain timeout
            if self.origin is not None and self.origin.transport is not None:
                self.origin.transport.pause_reading()

    # -- deadlines: one timer per connection, re-armed at most every `step` seconds

    def _arm(self, seconds: float) -> None:
        loop = self.server.loop
        now = loop.time()
        self.deadline = now + seconds
        if self.timer is None:
            self.timer = loop.call_at(min(self.deadline, now + self.server.step), self._tick)

    def _tick(self) -> None:
        self.timer = None
        if self.state in (SLOW, CLOSED, LINGER):
            return
        loop = self.server.loop
        now = loop.time()
        if now < self.deadline:
            self.timer = loop.call_at(min(self.deadline, now + self.server.step), self._tick)
            return
        if self.state == IDLE:
            if self.first:  # nothing or a partial head within header_timeout: tell the client
                self._error(408, "-", "-")
            else:  # an idle keep-alive connection: close quietly
                self._linger()
        elif self.state == BUSY:
            if self.sent_head or self.paused:
                self._close()  # mid-answer: the client can only see the close
            else:
                self._upstream_failed(UpstreamError(504, "timeout: TimeoutError"))

    # -- requests

    def _serve(self) -> None:
        """Serve the complete heads received; hand off to the coroutine way what this does not take."""
        server = self.server
        while self.state == IDLE:
            buf = self.buf
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > server.proxy.max_header_bytes or buf[:1] in (b"\r", b"\n"):
                    self._slow()
                return
            if end + 4 > server.proxy.max_header_bytes or self.paused:
                self._slow()
                return
            head = parse_request(buf, end)
            if head is None or head.method == "CONNECT" or head.has_body:
                self._slow()
                return
            target = absolute_target(head)
            if not isinstance(target, str) or not target.startswith(("http://", "https://")):
                self._slow()
                return
            self.buf = buf[end + 4:]
            self._request(head, target)

    def _request(self, head: RequestHead, target: str) -> None:
        server = self.server
        started = time.monotonic()
        live = server.live
        simple = simple_http(target)
        try:
            t0 = time.perf_counter()
            verdict = live.check(target)
            metrics.observe_check(COMPONENT, verdict, time.perf_counter() - t0)
            url = upstream_url(target) if simple is None else None
        except InvalidURL:
            metrics.observe_invalid(COMPONENT)
            self._error(400, head.method, "-")
            return
        except RequestError as exc:
            self._error(exc.status, head.method, "-")
            return
        self.first = False
        if verdict.blocked:
            keep_alive = head.keep_alive and "keep-alive" in head.connection_tokens
            self._block(head, verdict.list or "unknown", started, keep_alive)
            return
        if simple is None:
            assert url is not None
            simple = (url.raw_host or "", url.port or 80, url.raw_path_qs, url.host_port_subcomponent or "")
            lean = slow_origin.lean(head, url)
        else:
            lean = head.method in slow_origin.LEAN_METHODS
        host, port, path_qs, host_port = simple
        if not server.destinations.host_allowed(host):
            metrics.observe_refused(COMPONENT, "destination")
            self._error(403, head.method, target, "refused destination", DESTINATION_REFUSED)
            return
        if not lean:  # https://, other methods: aiohttp's client, as a coroutine
            self._slow(pending=(head, target, url or upstream_url(target), started))
            return
        self.state = BUSY
        self.head, self.target, self.started = head, target, started
        self.host, self.port = host, port
        self.request = slow_origin.head_bytes(head, path_qs, host_port, self.client_ip, server.proxy.forwarded_for)
        self._send_upstream()

    def _block(self, head: RequestHead, list_name: str, started: float, keep_alive: bool) -> None:
        server = self.server
        response = server.page.response(list_name, head_only=head.method == "HEAD", keep_alive=keep_alive)
        assert self.transport is not None
        self.transport.write(response)
        target = "-"
        if server.proxy.log_blocked_urls:
            target = (intercepted_url(head) or "-") if head.target.startswith("/") else head.target
        server.access(self.client_ip, head.method, target, server.page.status, len(response),
                      time.monotonic() - started, f"blocked list={list_name}")
        if keep_alive:
            self._arm(server.idle_timeout)
        else:
            self._linger()

    def _error(self, status: int, method: str, target: str, outcome: str = "error", text: str | None = None) -> None:
        assert self.transport is not None
        self.transport.write(error_response(status, head_only=method == "HEAD", text=text))
        self.server.access(self.client_ip, method, target, status, 0, 0.0, outcome)
        self._linger()

    # -- the origin

    def _send_upstream(self) -> None:
        server = self.server
        key = (self.host, self.port)
        conn = server.fast_origins.take(key, time.monotonic())
        self.rbuf, self.sent_head, self.sent = b"", False, 0
        self._arm(server.proxy.upstream_timeout)
        if conn is None:
            self.reused = False
            server.track(self._connect(key))
            return
        self.reused = True
        self._attach(conn)

    def _attach(self, conn: OriginProtocol) -> None:
        conn.client = self
        self.origin = conn
        assert conn.transport is not None
        if self.paused:
            conn.transport.pause_reading()
        conn.transport.write(self.request)

    async def _connect(self, key: tuple[str, int]) -> None:
        server = self.server
        try:
            conn = await open_origin(key[0], key[1], server.proxy.connect_timeout, server.destinations,
                                     OriginProtocol)
        except UpstreamError as exc:
            if self.state == BUSY:
                self._upstream_failed(exc)
            return
        conn.key = key
        if self.state != BUSY or self.origin is not None:
            conn.close()
            return
        self._attach(conn)

    def origin_data(self, data: bytes) -> None:
        loop = self.server.loop
        self.deadline = loop.time() + self.server.proxy.upstream_timeout
        if self.sent_head:
            self._body(data)
            return
        rbuf = self.rbuf + data if self.rbuf else data
        end = rbuf.find(b"\r\n\r\n")
        if end < 0:
            self.rbuf = rbuf
            if len(rbuf) > slow_origin.MAX_HEAD or b"\n" in rbuf.replace(b"\r\n", b""):
                self._slow_response(rbuf)
            return
        if end + 4 > slow_origin.MAX_HEAD:
            self._slow_response(rbuf)
            return
        head = self.head
        assert head is not None
        got = reframe(rbuf, end, head)
        if got is None:
            self._slow_response(rbuf)
            return
        self.keep_alive, self.chunked, self.reusable = got.keep_alive, got.chunked, got.reusable
        self.remaining = got.length
        self.status = got.status
        self.sent_head = True
        self.rbuf = b""
        rest = rbuf[end + 4:]
        if got.length == 0:
            assert self.transport is not None
            self.transport.write(got.head)
            if rest:
                self.reusable = False
            self._done()
            return
        out = got.head
        self._body(rest, out)

    def _body(self, data: bytes, out: bytes = b"") -> None:
        remaining = self.remaining
        if remaining is not None:
            if len(data) >= remaining:
                if len(data) > remaining:
                    self.reusable = False  # more than it framed: never reused
                    data = data[:remaining]
                self.remaining = 0
            else:
                self.remaining = remaining - len(data)
        assert self.transport is not None
        if data:
            self.sent += len(data)
            piece = frame(data, self.chunked)
            self.transport.write(out + piece if out else piece)
        elif out:
            self.transport.write(out)
        if self.remaining == 0:
            self._done()

    def origin_closed(self) -> None:
        """The origin closed (EOF or lost) while serving this client."""
        if self.state != BUSY:
            return
        if not self.sent_head:
            conn = self.origin
            if self.rbuf:
                self._drop_origin()
                self._upstream_failed(UpstreamError(502, "IncompleteReadError"))
            elif self.reused:  # a kept-alive connection the origin closed meanwhile: once more, on another
                self._drop_origin()
                self._send_upstream()
            else:
                self._drop_origin()
                self._upstream_failed(UpstreamError(502, "IncompleteReadError" if conn is not None
                                                    and conn.transport is not None else "ConnectionResetError"))
            return
        if self.remaining is None:  # to the close: this is the end
            assert self.transport is not None
            if self.chunked:
                self.transport.write(b"0\r\n\r\n")
            self.reusable = False
            self._done()
            return
        self._drop_origin()
        self._close()  # cut short mid-body: the client can only see the close

    def _drop_origin(self) -> None:
        conn = self.origin
        self.origin = None
        if conn is not None:
            conn.client = None
            conn.close()

    def _done(self) -> None:
        """The answer is out: the origin connection back to the pool, the client's next request."""
        server = self.server
        conn = self.origin
        self.origin = None
        now = time.monotonic()
        if conn is not None:
            if self.reusable and not conn.dead:
                if conn.transport is not None:
                    conn.transport.resume_reading()
                server.fast_origins.put(conn, now)
            else:
                conn.client = None
                conn.close()
        head = self.head
        assert head is not None
        server.access(self.client_ip, head.method, self.target, self.status, self.sent, now - self.started, "allowed")
        self.head = None
        self._next(self.keep_alive)

    def _next(self, keep_alive: bool) -> None:
        if not keep_alive:
            self._linger()
            return
        self.state = IDLE
        self._arm(self.server.idle_timeout)
        assert self.transport is not None
        self.transport.resume_reading()
        if self.buf or self.eof:
            if self.eof and not self.buf:
                self._slow()
            else:
                self._serve()

    def _upstream_failed(self, exc: UpstreamError) -> None:
        """Before any byte of an answer: 403, 502 or 504 to the client, as server._forward answers them."""
        head = self.head
        assert head is not None
        self.state = IDLE  # for _error's linger
        self._drop_origin()
        server = self.server
        if exc.status == 403:
            metrics.observe_refused(COMPONENT, "destination")
            self._error(403, head.method, self.target, "refused destination", DESTINATION_REFUSED)
            return
        server.upstream_warning(exc, self.client_ip)
        self._error(exc.status, head.method, self.target)

    def _slow_response(self, received: bytes) -> None:
        """An answer the fast way does not take: origin.py's coroutine reads it from the bytes received."""
        conn = self.origin
        self.origin = None
        self.rbuf = b""
        if conn is None or conn.transport is None:
            self._close()
            return
        conn.client = None
        transport = conn.transport
        reader = asyncio.StreamReader(limit=slow_origin.COPY_SIZE, loop=self.server.loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=self.server.loop)
        protocol.connection_made(transport)
        transport.set_protocol(protocol)
        transport.resume_reading()
        reader.feed_data(received)
        origin_writer = asyncio.StreamWriter(transport, protocol, reader, self.server.loop)
        stream = slow_origin.Connection(reader, origin_writer)
        self.server.track(self._deliver(stream))

    async def _deliver(self, conn: slow_origin.Connection) -> None:
        server = self.server
        head = self.head
        assert head is not None and self.transport is not None
        writer = _ClientWriter(self)
        self.sent_head = True  # from here the coroutine owns the timing
        self.deadline = float("inf")
        try:
            try:
                async with asyncio.timeout(server.proxy.upstream_timeout):
                    resp = await slow_origin.read_response_head(conn.reader)
            except TimeoutError:
                conn.close()
                raise UpstreamError(504, "timeout: TimeoutError") from None
            except (OSError, asyncio.IncompleteReadError) as exc:
                conn.close()
                raise UpstreamError(502, type(exc).__name__) from None
            except slow_origin.BadResponse:
                conn.close()
                raise UpstreamError(502, "BadResponse") from None
            result = await slow_origin.deliver(server.origins, conn, resp, head, writer, self.host, self.port,
                                               server.proxy.upstream_timeout)
        except UpstreamError as exc:
            if self.state == BUSY:
                self._upstream_failed(exc)
            return
        except (ConnectionError, asyncio.CancelledError):
            self._close()
            return
        if self.state != BUSY:
            return
        server.access(self.client_ip, head.method, self.target, result.status, result.body_bytes,
                      time.monotonic() - self.started, "allowed")
        self.head = None
        self._next(result.keep_alive)

    # -- ends

    def _linger(self) -> None:
        """Close politely: our last answer goes out, what the client still sends is dropped for a moment."""
        self.state = LINGER
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.resume_reading()
        if transport.can_write_eof():
            transport.write_eof()
        if self.eof:
            transport.close()
            return
        self.server.loop.call_later(LINGER_SECONDS, self._close)

    def _close(self) -> None:
        self._drop_origin()
        if self.transport is not None:
            self.transport.close()
        if self.state != SLOW:
            self.state = CLOSED

    def _slow(self, screened: bool = True, pending: tuple[Any, ...] | None = None) -> None:
        """Hand the connection to the coroutine way, with the bytes received and not yet served."""
        transport = self.transport
        assert transport is not None
        self.state = SLOW
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.server.fast_clients.discard(self)
        loop = self.server.loop
        reader = asyncio.StreamReader(limit=self.server.stream_limit, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        protocol.connection_made(transport)
        if self.paused:  # the transport's write flow state goes with it
            protocol.pause_writing()
        transport.set_protocol(protocol)
        transport.resume_reading()
        if self.buf:
            reader.feed_data(self.buf)
            self.buf = b""
        if self.eof:
            reader.feed_eof()
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        self.server.stream(reader, writer, self.client_ip, first=self.first, screened=screened, pending=pending)
