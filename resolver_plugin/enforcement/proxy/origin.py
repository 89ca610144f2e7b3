"""The lean way to an origin: GET and HEAD without a body to an http:// origin, on kept-alive connections.

Most of what a browser asks a proxy for is a GET without a body. For those, the proxy
does not need a general HTTP client (aiohttp's, which forward.py uses for everything
else: bodies, https:// targets, other methods): it writes one request head and reads one
response, on a connection to the origin it keeps open for the next request to the same
host and port (at most MAX_IDLE_PER_ORIGIN idle ones per origin and MAX_IDLE in all,
closed after IDLE_SECONDS). Per request that is one write towards the origin, one read of its answer
and, for a small object, one write to the client.

The request is the one forward.upstream_headers makes (hop-by-hop fields removed, Via and
X-Forwarded-For as configured), Host from the target. The response is read strictly,
and anything ambiguous is a 502 before a byte reaches the client:
- status line `HTTP/1.0|1.1 SP 3DIGIT [SP reason]`; 1xx answers other than 101 are
  skipped (101 is refused: the proxy forwards no upgrade);
- header fields `token ":" value`, no obs-fold, no control characters, at most
  MAX_FIELDS fields and MAX_HEAD bytes;
- framing (RFC 9112 6.3): Transfer-Encoding whose last coding is chunked -> chunked (any
  Content-Length ignored, the connection not reused); another Transfer-Encoding, or
  neither field -> the body runs to the close; one Content-Length (repeated values must
  agree, digits only) -> that many bytes; HEAD, 204, 304 -> no body.
The answer is re-framed for the client exactly as forward.forward does (its
Content-Length, else chunked to an HTTP/1.1 client, else close-delimited).

A kept-alive connection the origin closed in the meantime fails before any byte of the
answer: the request is sent once more on a new connection (GET and HEAD are idempotent,
RFC 9110 9.2.2). Destinations are judged as for tunnels (forward.open_tunnel: resolved
once, every address checked by the destination policy).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from yarl import URL

from resolver_plugin.config import ForwardedFor
from resolver_plugin.enforcement.proxy.destinations import Destinations
from resolver_plugin.enforcement.proxy.forward import (
    COPY_SIZE,
    Forwarded,
    UpstreamError,
    drain,
    frame,
    open_tunnel,
    response_head,
    upstream_pairs,
)
from resolver_plugin.enforcement.proxy.head import RequestHead

MAX_IDLE_PER_ORIGIN = 128  # about as many as requests in flight to one busy origin
MAX_IDLE = 1024            # idle connections to all origins together (each holds a descriptor)
IDLE_SECONDS = 15.0
MAX_HEAD = 65536
MAX_FIELDS = 128
MAX_CHUNK_LINE = 4096
MAX_TRAILER_LINES = 64
LEAN_METHODS = frozenset({"GET", "HEAD"})

_STATUS = re.compile(rb"HTTP/1\.([01]) ([1-9][0-9][0-9])(?: ([\t\x20-\x7e\x80-\xff]*))?")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[\x09\x20-\x7e\x80-\xff]*)?")
_NO_BODY_STATUS = frozenset({204, 304})


class BadResponse(Exception):
    """The origin's answer is not one the proxy passes on."""


def lean(head: RequestHead, url: URL) -> bool:
    """Whether this request takes the lean way (the rest goes through aiohttp's client)."""
    return head.method in LEAN_METHODS and not head.has_body and url.scheme == "http"


@dataclass
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    used: float = 0.0

    def reusable(self, now: float) -> bool:
        """Not idle too long, not closed by the origin, and it sent nothing unasked."""
        return (now - self.used < IDLE_SECONDS and not self.reader.at_eof() and not self.writer.is_closing()
                and not _buffered(self.reader))

    def close(self) -> None:
        self.writer.close()


class Kept(Protocol):
    """What IdlePool keeps: a connection that knows when it was last used and whether it still serves."""

    used: float

    def reusable(self, now: float) -> bool: ...

    def close(self) -> None: ...


K = TypeVar("K", bound=Kept)


class IdlePool(Generic[K]):
    """Idle kept-alive connections to origins by (host, port), within MAX_IDLE_PER_ORIGIN and
    MAX_IDLE; one not `reusable` is closed, never handed out (the coroutine way's pool and the
    fast way's, fast.FastPool, share these rules)."""

    def __init__(self) -> None:
        self.idle: dict[tuple[str, int], list[K]] = {}
        self.idle_count = 0
        self._purged = time.monotonic()

    def take(self, key: tuple[str, int], now: float) -> K | None:
        idle = self.idle.get(key)
        while idle:
            conn = idle.pop()
            self.idle_count -= 1
            if conn.reusable(now):
                return conn
            conn.close()  # closed by the origin, or it sent something unasked: never reused
        return None

    def keep(self, key: tuple[str, int], conn: K, now: float) -> None:
        conn.used = now
        idle = self.idle.setdefault(key, [])
        if not conn.reusable(now) or len(idle) >= MAX_IDLE_PER_ORIGIN or self.idle_count >= MAX_IDLE:
            conn.close()
        else:
            idle.append(conn)
            self.idle_count += 1
        if now - self._purged > IDLE_SECONDS:
            self._purge(now)

    def _purge(self, now: float) -> None:
        self._purged = now
        for key, idle in list(self.idle.items()):
            kept = [c for c in idle if c.reusable(now)]
            for conn in idle:
                if conn not in kept:
                    conn.close()
            self.idle_count -= len(idle) - len(kept)
            if kept:
                self.idle[key] = kept
            else:
                del self.idle[key]

    def close(self) -> None:
        for idle in self.idle.values():
            for conn in idle:
                conn.close()
        self.idle.clear()
        self.idle_count = 0


class OriginPool(IdlePool[_Connection]):
    """Idle kept-alive connections to origins, by (host, port), for the coroutine way."""

    def __init__(self, destinations: Destinations) -> None:
        super().__init__()
        self.destinations = destinations

    async def get(self, host: str, port: int, connect_timeout: float) -> tuple[_Connection, bool]:
        """A connection to host:port: an idle one (True) or a new one (False); UpstreamError if none."""
        conn = self.take((host, port), time.monotonic())
        if conn is not None:
            return conn, True
        reader, writer = await open_tunnel(host, port, connect_timeout, self.destinations)
        return _Connection(reader, writer), False

    def put(self, host: str, port: int, conn: _Connection) -> None:
        self.keep((host, port), conn, time.monotonic())


def _buffered(reader: asyncio.StreamReader) -> int:
    """Bytes the reader holds already (asyncio's StreamReader keeps them in `_buffer`)."""
    return len(getattr(reader, "_buffer", b""))


def _received(reader: asyncio.StreamReader, size: int) -> bytes:
    """A copy of up to `size` bytes the reader holds already, without taking them."""
    return bytes(getattr(reader, "_buffer", b"")[:size])


@dataclass
class _Response:
    status: int
    reason: str
    minor: int
    pairs: list[tuple[str, str]]


def request_bytes(head: RequestHead, url: URL, client_ip: str, forwarded_for: ForwardedFor) -> bytes:
    return head_bytes(head, url.raw_path_qs, url.host_port_subcomponent or "", client_ip, forwarded_for)


def head_bytes(head: RequestHead, path_qs: str, host_port: str, client_ip: str, forwarded_for: ForwardedFor) -> bytes:
    """The request head for the origin: `path_qs` on `host_port` (the URL's host and port, the port
    left out when it is 80)."""
    lines = [f"{head.method} {path_qs or '/'} HTTP/1.1", f"Host: {host_port}"]
    lines += [f"{name}: {value}" for name, value in upstream_pairs(head, client_ip, forwarded_for)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def _cut(raw: bytes, budget: int) -> bytes:
    if len(raw) > budget:
        raise BadResponse("head too large")
    line = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
    if b"\r" in line:
        raise BadResponse("bare CR")
    return line


async def _line(reader: asyncio.StreamReader, budget: int) -> bytes:
    try:
        raw = await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError:
        raise BadResponse("line too long") from None
    return _cut(raw, budget)


class _Head:
    """The response head, a line at a time (the same rules for lines awaited or already here)."""

    def __init__(self) -> None:
        self.budget = MAX_HEAD
        self.status: re.Match[bytes] | None = None
        self.pairs: list[tuple[str, str]] = []

    def feed(self, line: bytes) -> _Response | None:
        """Take one line; the final response once its head is complete (1xx ones are skipped)."""
        self.budget -= len(line) + 2
        if self.status is None:
            self.status = _STATUS.fullmatch(line)
            if self.status is None:
                raise BadResponse("bad status line")
            return None
        if line:
            if len(self.pairs) >= MAX_FIELDS:
                raise BadResponse("too many fields")
            self.pairs.append(_field(line))
            return None
        status = int(self.status.group(2))
        if status == 101:
            raise BadResponse("upgrade not asked for")
        if status < 200:  # 100, 102, 103: the final answer follows
            self.status, self.pairs = None, []
            return None
        return _Response(status, (self.status.group(3) or b"").decode("latin-1"), int(self.status.group(1)),
                         self.pairs)


async def _feed_received(reader: asyncio.StreamReader, parser: _Head) -> _Response | None:
    """Feed `parser` the complete lines `reader` holds already, taking them; the response if they end its head."""
    data = _received(reader, max(parser.budget, 0) + 2)
    pos = 0
    resp = None
    while resp is None:
        end = data.find(b"\n", pos)
        if end < 0:
            break
        line = _cut(data[pos:end + 1], parser.budget)
        pos = end + 1
        resp = parser.feed(line)
    if pos:
        await reader.readexactly(pos)  # already here: returns at once
    return resp


async def read_response_head(reader: asyncio.StreamReader) -> _Response:
    """The origin's final response head (1xx skipped); BadResponse, IncompleteReadError or OSError.
    Lines already received are parsed at once, the others a line per `await`, by the same rules."""
    parser = _Head()
    while True:
        resp = await _feed_received(reader, parser)
        if resp is not None:
            return resp
        resp = parser.feed(await _line(reader, parser.budget))
        if resp is not None:
            return resp


def _field(line: bytes) -> tuple[str, str]:
    if line[:1] in (b" ", b"\t"):
        raise BadResponse("obs-fold")
    name, colon, value = line.partition(b":")
    if not colon or not _TOKEN.fullmatch(name):
        raise BadResponse("bad field")
    value = value.strip(b" \t")
    if _BAD_VALUE.search(value):
        raise BadResponse("control character")
    return name.decode("latin-1"), value.decode("latin-1")


@dataclass
class _Framing:
    length: int | None      # Content-Length; None: chunked or to the close
    chunked: bool
    reusable: bool          # the origin connection may carry another request after this body


def _framing(resp: _Response, no_body: bool) -> _Framing:
    """How the body of `resp` is framed (RFC 9112 6.3); BadResponse when ambiguous."""
    codings: list[str] = []
    lengths: set[str] = set()
    close = resp.minor == 0
    for name, value in resp.pairs:
        lname = name.lower()
        if lname == "transfer-encoding":
            codings += [c.strip().lower() for c in value.split(",") if c.strip()]
        elif lname == "content-length":
            lengths.update(v.strip() for v in value.split(","))
        elif lname == "connection":
            tokens = {t.strip().lower() for t in value.split(",")}
            close = close or "close" in tokens
            if resp.minor == 0 and "keep-alive" in tokens:
                close = False
    if no_body:
        return _Framing(0, False, not close)
    if codings:
        if codings[-1] == "chunked":
            return _Framing(None, True, not close and not lengths)
        return _Framing(None, False, False)
    if lengths:
        if len(lengths) != 1:
            raise BadResponse("conflicting Content-Length")
        value = next(iter(lengths))
        if not (value.isascii() and value.isdigit()) or len(value) > 18:
            raise BadResponse("bad Content-Length")
        return _Framing(int(value), False, not close)
    return _Framing(None, False, False)


Connection = _Connection          # for the fast way (resolver_plugin.enforcement.proxy.fast)
response_framing = _framing


async def fetch(pool: OriginPool, head: RequestHead, url: URL, writer: asyncio.StreamWriter, client_ip: str,
                connect_timeout: float, read_timeout: float,
                forwarded_for: ForwardedFor = ForwardedFor.APPEND) -> Forwarded:
    """Send a lean request (`lean()`) to its origin and stream the answer to `writer`.

    The same contract as forward.forward: before any response byte is sent, UpstreamError
    (502, 504, 403 for a refused destination); after, ConnectionResetError."""
    request = request_bytes(head, url, client_ip, forwarded_for)
    host, port = url.raw_host or "", url.port or 80
    conn, resp = await _exchange(pool, host, port, request, connect_timeout, read_timeout)
    return await deliver(pool, conn, resp, head, writer, host, port, read_timeout)


async def deliver(pool: OriginPool, conn: _Connection, resp: _Response, head: RequestHead, writer: Any,
                  host: str, port: int, read_timeout: float) -> Forwarded:
    """The rest of `fetch` once the response head is read: the answer re-framed to `writer`, the
    connection back to `pool` when it may carry another request (also for the fast way's answers
    it does not take, resolver_plugin.enforcement.proxy.fast)."""
    no_body = head.method == "HEAD" or resp.status in _NO_BODY_STATUS
    try:
        framing = _framing(resp, no_body)
    except BadResponse:
        conn.close()
        raise UpstreamError(502, "BadResponse") from None
    has_length = framing.length is not None and not no_body and not framing.chunked
    keep_alive = head.keep_alive and (no_body or has_length or head.version == "HTTP/1.1")
    chunked = not no_body and not has_length and head.version == "HTTP/1.1"
    out = response_head(resp.status, resp.reason, resp.pairs, chunked, keep_alive)
    try:
        sent = 0
        if not no_body:
            sent = await _copy(conn.reader, writer, out, framing, chunked, read_timeout)
        else:
            writer.write(out)
        await drain(writer, read_timeout)
    except (TimeoutError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, BadResponse) as exc:
        conn.close()
        raise ConnectionResetError(f"forwarding stopped: {type(exc).__name__}") from None
    except BaseException:
        conn.close()
        raise
    if framing.reusable and not _buffered(conn.reader):
        pool.put(host, port, conn)
    else:
        conn.close()
    return Forwarded(resp.status, sent, keep_alive)


async def _exchange(pool: OriginPool, host: str, port: int, request: bytes, connect_timeout: float,
                    read_timeout: float) -> tuple[_Connection, _Response]:
    """Write `request` and read the response head; once more on a new connection when a kept-alive
    one turns out to be closed."""
    while True:
        conn, reused = await pool.get(host, port, connect_timeout)
        try:
            conn.writer.write(request)
            async with asyncio.timeout(read_timeout):
                return conn, await read_response_head(conn.reader)
        except TimeoutError:  # before OSError, of which it is a subclass
            conn.close()
            raise UpstreamError(504, "timeout: TimeoutError") from None
        except (OSError, asyncio.IncompleteReadError) as exc:
            conn.close()
            stale = reused and (not isinstance(exc, asyncio.IncompleteReadError) or not exc.partial)
            if not stale:
                raise UpstreamError(502, type(exc).__name__) from None
        except BadResponse:
            conn.close()
            raise UpstreamError(502, "BadResponse") from None
        except BaseException:
            conn.close()
            raise


async def _read(reader: asyncio.StreamReader, size: int, timeout: float) -> bytes:
    if _buffered(reader):
        return await reader.read(size)
    async with asyncio.timeout(timeout):
        return await reader.read(size)


async def _copy(reader: asyncio.StreamReader, writer: Any, out: bytes, framing: _Framing,
                chunked: bool, timeout: float) -> int:
    """The body to the client, the response head `out` going out with its first piece; bytes of body sent."""
    sent = 0
    if not _buffered(reader):  # no body bytes here yet: the head goes out now, not with them
        writer.write(out)
        out = b""
    pieces = _dechunk(reader, timeout) if framing.chunked else _plain(reader, framing.length, timeout)
    async for piece in pieces:
        sent += len(piece)
        writer.write(out + frame(piece, chunked) if out else frame(piece, chunked))
        out = b""
        await drain(writer, timeout)
    if out:
        writer.write(out)
    if chunked:
        writer.write(b"0\r\n\r\n")
    return sent


async def _plain(reader: asyncio.StreamReader, length: int | None, timeout: float) -> AsyncIterator[bytes]:
    """Content-Length bytes, or everything to the close (`length` None)."""
    remaining = length
    while remaining is None or remaining > 0:
        piece = await _read(reader, COPY_SIZE if remaining is None else min(remaining, COPY_SIZE), timeout)
        if not piece:
            if remaining is None:
                return
            raise asyncio.IncompleteReadError(b"", remaining)
        if remaining is not None:
            remaining -= len(piece)
        yield piece


async def _dechunk(reader: asyncio.StreamReader, timeout: float) -> AsyncIterator[bytes]:
    while True:
        async with asyncio.timeout(timeout):
            line = await _line(reader, MAX_CHUNK_LINE)
        match = _CHUNK_SIZE.fullmatch(line)
        if match is None:
            raise BadResponse("bad chunk size")
        size = int(match.group(1), 16)
        if size == 0:
            break
        while size:
            piece = await _read(reader, min(size, COPY_SIZE), timeout)
            if not piece:
                raise asyncio.IncompleteReadError(b"", size)
            size -= len(piece)
            yield piece
        async with asyncio.timeout(timeout):
            if await reader.readexactly(2) != b"\r\n":
                raise BadResponse("bad chunk end")
    for _ in range(MAX_TRAILER_LINES):
        async with asyncio.timeout(timeout):
            if not await _line(reader, MAX_CHUNK_LINE):
                return
    raise BadResponse("too many trailer lines")
