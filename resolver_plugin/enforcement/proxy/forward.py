"""Forwarding for the proxy: an allowed request to its origin (aiohttp client), and CONNECT tunnels.

Bodies stream both ways with back-pressure and are never held whole: the
request body is an async iterator over the client's stream (aiohttp sends it
with the client's Content-Length, or chunked), the response body is copied
piece by piece and each write is drained before the next read.

Header rules (RFC 9110 7.6): hop-by-hop fields are removed both ways
(Connection and every field it names, Keep-Alive, Proxy-Connection, Proxy-*,
TE, Trailer, Transfer-Encoding, Upgrade), `Via: 1.1 blocklist` is appended
both ways and the client's address is appended to X-Forwarded-For (or as
`proxy.forwarded_for` says). Host comes from the absolute-form target (RFC
9112 3.2.2), never from the client's Host.
The response is re-framed for the client: its Content-Length when the origin
gave one, else chunked (HTTP/1.1) or close-delimited (HTTP/1.0).

Destinations: every address a request or tunnel is connected to is first
judged by the proxy's destination policy (resolver_plugin.enforcement.proxy.destinations).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from resolver_plugin.config import ForwardedFor
from resolver_plugin.enforcement.proxy.destinations import DestinationRefused, Destinations
from resolver_plugin.enforcement.proxy.head import RequestError, RequestHead

VIA = "1.1 blocklist"
COPY_SIZE = 65536
DRAIN_QUIET = 65536  # bytes waiting for the client below which a write does not wait for it
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "proxy-authenticate",
                        "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade"})
_DROP_UPSTREAM = HOP_BY_HOP | {"host", "expect", "content-length"}
_NO_BODY_STATUS = frozenset({204, 304})
_T = TypeVar("_T")


class UpstreamError(Exception):
    """The origin could not be reached or answered badly, before any response byte was sent."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status  # 502 or 504


@dataclass
class Forwarded:
    status: int
    body_bytes: int
    keep_alive: bool


def client_address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A client's address as ipaddress reads it (an IPv4-mapped IPv6 one as IPv4); None if unreadable."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _connection_named(pairs: list[tuple[str, str]]) -> set[str]:
    named: set[str] = set()
    for name, value in pairs:
        if name.lower() == "connection":
            named.update(t.strip().lower() for t in value.split(",") if t.strip())
    return named


def upstream_headers(head: RequestHead, client_ip: str,
                     forwarded_for: ForwardedFor = ForwardedFor.APPEND) -> CIMultiDict[str]:
    """The headers to send to the origin for `head` from `client_ip`, X-Forwarded-For as `forwarded_for` says."""
    return CIMultiDict(upstream_pairs(head, client_ip, forwarded_for))


def upstream_pairs(head: RequestHead, client_ip: str,
                   forwarded_for: ForwardedFor = ForwardedFor.APPEND) -> list[tuple[str, str]]:
    """upstream_headers as (name, value) pairs in their order: the client's fields less hop-by-hop
    ones, Host, Expect and X-Forwarded-For, then Content-Length, Via and X-Forwarded-For."""
    mode = ForwardedFor(forwarded_for)  # its value names a mode too ("append")
    # Content-Length is re-added from the parsed value (its repeated or listed forms collapse to one).
    drop = _DROP_UPSTREAM
    if any(name.lower() == "connection" for name, _ in head.headers):
        drop = drop | _connection_named(head.headers)
    out: list[tuple[str, str]] = []
    forwarded_for_chain: list[str] = []
    for name, value in head.headers:
        lname = name.lower()
        if lname in drop:
            continue
        if lname == "x-forwarded-for":
            forwarded_for_chain.append(value)
            continue
        out.append((name, value))
    if head.content_length is not None:
        out.append(("Content-Length", str(head.content_length)))
    out.append(("Via", VIA))
    if mode is ForwardedFor.APPEND:
        out.append(("X-Forwarded-For", ", ".join([*forwarded_for_chain, client_ip])))
    elif mode is ForwardedFor.TRUNCATE:
        out.append(("X-Forwarded-For", client_ip))
    elif mode is ForwardedFor.TRANSPARENT:
        out += [("X-Forwarded-For", value) for value in forwarded_for_chain]
    return out


def upstream_url(target: str) -> URL:
    """The origin URL of an absolute-form target, without userinfo; RequestError if unusable."""
    try:
        url = URL(target, encoded=True)
        host = url.host
    except (ValueError, TypeError):
        raise RequestError(400, "bad target") from None
    if url.scheme not in ("http", "https") or not host:
        raise RequestError(400, "bad target")
    # aiohttp would turn userinfo into an Authorization header: browsers never send it to proxies.
    return url.with_user(None) if url.raw_user or url.raw_password else url


def _response_head(resp: aiohttp.ClientResponse, chunked: bool, keep_alive: bool) -> bytes:
    pairs = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in resp.raw_headers]
    return response_head(resp.status, resp.reason or "", pairs, chunked, keep_alive)


def response_head(status: int, reason: str, pairs: list[tuple[str, str]], chunked: bool, keep_alive: bool) -> bytes:
    """The response head for the client: the origin's fields less hop-by-hop ones, our Via and framing."""
    drop = HOP_BY_HOP | _connection_named(pairs)
    if chunked:
        drop = drop | {"content-length"}
    lines = [f"HTTP/1.1 {status} {reason}".rstrip()]
    lines += [f"{n}: {v}" for n, v in pairs if n.lower() not in drop]
    lines.append(f"Via: {VIA}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    if not keep_alive:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class BodyStream:
    """The client's request body as aiohttp's upload source; remembers why it failed.

    aiohttp wraps an exception raised by an upload source into its own error,
    so the original (a RequestError such as a bad chunk, or the client going
    away) is kept here for the caller to answer.
    """

    def __init__(self, pieces: AsyncIterator[bytes]) -> None:
        self._pieces = pieces
        self.error: BaseException | None = None

    async def stream(self) -> AsyncIterator[bytes]:
        try:
            async for piece in self._pieces:
                yield piece
        except (RequestError, asyncio.IncompleteReadError, OSError) as exc:
            self.error = exc
            raise


async def forward(session: aiohttp.ClientSession, head: RequestHead, url: URL,
                  body: BodyStream | None, writer: asyncio.StreamWriter, client_ip: str,
                  timeout: aiohttp.ClientTimeout, forwarded_for: ForwardedFor = ForwardedFor.APPEND) -> Forwarded:
    """Send `head` to its origin and stream the answer to `writer`.

    Before any response byte is sent, failures raise UpstreamError (the caller
    answers 502/504) or the request body's own error (RequestError, or
    IncompleteReadError when the client went away). Once the response head is
    sent, every failure raises ConnectionResetError: the caller can only close.
    """
    headers = upstream_headers(head, client_ip, forwarded_for)
    started = False
    try:
        async with session.request(head.method, url, headers=headers,
                                   data=body.stream() if body is not None else None,
                                   timeout=timeout, allow_redirects=False, compress=None) as resp:
            no_body = head.method == "HEAD" or resp.status in _NO_BODY_STATUS or resp.status < 200
            has_length = "Content-Length" in resp.headers and "Transfer-Encoding" not in resp.headers
            keep_alive = head.keep_alive and (no_body or has_length or head.version == "HTTP/1.1")
            chunked = not no_body and not has_length and head.version == "HTTP/1.1"
            out_head = _response_head(resp, chunked, keep_alive)
            # Body bytes already here go out with the head: one write, one packet for small answers.
            first = b"" if no_body else resp.content.read_nowait(COPY_SIZE)
            started = True
            writer.write(out_head + frame(first, chunked) if first else out_head)
            sent = len(first)
            if not no_body:
                sent += await _copy_body(resp, writer, chunked, timeout.sock_read)
            await drain(writer, timeout.sock_read)
            return Forwarded(resp.status, sent, keep_alive)
    except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
        # ValueError: e.g. UnicodeError from getaddrinfo for a host label IDNA cannot encode.
        if started or writer.is_closing():
            raise ConnectionResetError(f"forwarding stopped: {type(exc).__name__}") from None
        if body is not None and body.error is not None:
            raise body.error from None
        if isinstance(exc, asyncio.TimeoutError):
            raise UpstreamError(504, f"timeout: {type(exc).__name__}") from None
        if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(exc.os_error, DestinationRefused):
            raise UpstreamError(403, "destination refused") from None
        raise UpstreamError(502, type(exc).__name__) from None


async def drain(writer: asyncio.StreamWriter, timeout: float | None) -> None:
    """Wait until the client took what we wrote; a client that stops reading is dropped."""
    if writer.transport.get_write_buffer_size() <= DRAIN_QUIET:
        await writer.drain()  # not paused: returns at once (raises if the connection is lost)
        return
    async with asyncio.timeout(timeout):
        await writer.drain()


def frame(piece: bytes, chunked: bool) -> bytes:
    return b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece


async def _copy_body(resp: aiohttp.ClientResponse, writer: asyncio.StreamWriter, chunked: bool,
                     timeout: float | None) -> int:
    sent = 0
    async for piece in resp.content.iter_chunked(COPY_SIZE):
        if piece:
            sent += len(piece)
            writer.write(frame(piece, chunked))
            await drain(writer, timeout)
    if chunked:
        writer.write(b"0\r\n\r\n")
    return sent


async def open_tunnel(host: str, port: int, connect_timeout: float, destinations: Destinations,
                      loop_addresses: frozenset[str] = frozenset()
                      ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection to host:port for a tunnel; UpstreamError 403/502/504/508 if it cannot be opened.

    The name is resolved here, once: a name that resolves to one of
    `loop_addresses` (the proxy's own, where stage 1 points listed hosts) is a
    loop (508); the addresses `destinations` refuses are dropped (403 when none
    is left); the connection goes to the remaining addresses in turn, never to
    the name, so what was checked is what is connected to.
    """
    async def connect(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(address, port, limit=COPY_SIZE)

    return await _open_checked(host, port, connect_timeout, destinations, loop_addresses, connect)


_P = TypeVar("_P", bound=asyncio.Protocol)


async def open_origin(host: str, port: int, connect_timeout: float, destinations: Destinations,
                      factory: Callable[[], _P]) -> _P:
    """open_tunnel's connection, by the same rules, with a protocol of `factory` (the fast way's)."""
    loop = asyncio.get_running_loop()

    async def connect(address: str) -> _P:
        _, protocol = await loop.create_connection(factory, address, port)
        return protocol

    return await _open_checked(host, port, connect_timeout, destinations, frozenset(), connect)


async def _open_checked(host: str, port: int, connect_timeout: float, destinations: Destinations,
                        loop_addresses: frozenset[str], connect: Callable[[str], Awaitable[_T]]) -> _T:
    try:
        async with asyncio.timeout(connect_timeout):
            if destinations.allow_all and not loop_addresses:
                return await connect(host)
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
            addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
            if loop_addresses.intersection(addresses):
                raise UpstreamError(508, "resolves to the proxy itself")
            addresses = [a for a in addresses if destinations.allowed(a)]
            if not addresses:
                raise UpstreamError(403, "destination refused")
            for address in addresses[:-1]:
                try:
                    return await connect(address)
                except OSError:
                    continue
            return await connect(addresses[-1])
    except TimeoutError:
        raise UpstreamError(504, "connect timeout") from None
    except (OSError, UnicodeError, ValueError) as exc:
        raise UpstreamError(502, type(exc).__name__) from None


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, activity: list[float]) -> int:
    moved = 0
    loop = asyncio.get_running_loop()
    try:
        while True:
            piece = await src.read(COPY_SIZE)
            if not piece:
                break
            activity[0] = loop.time()
            moved += len(piece)
            dst.write(piece)
            await dst.drain()
        if dst.can_write_eof():
            dst.write_eof()  # half-close: the other direction may still be talking
    except OSError:
        dst.close()
    return moved


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


async def tunnel(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter,
                 up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter,
                 idle_timeout: float) -> tuple[int, int]:
    """Copy bytes both ways until both sides are done or the tunnel is idle for `idle_timeout`.

    Idleness is for the tunnel as a whole: a long download with a silent client
    direction is not idle. Returns (client->origin, origin->client) byte counts.
    """
    loop = asyncio.get_running_loop()
    activity = [loop.time()]
    pipes = asyncio.gather(_pipe(client_reader, up_writer, activity),
                           _pipe(up_reader, client_writer, activity))
    pipes.add_done_callback(_retrieve)  # a cancelled pipe (idle, shutdown) is expected: no "never retrieved"
    try:
        while True:
            done, _ = await asyncio.wait({pipes}, timeout=min(1.0, idle_timeout))
            if done:
                return pipes.result()
            if loop.time() - activity[0] > idle_timeout:
                pipes.cancel()
                return (0, 0)
    finally:
        if not pipes.done():
            pipes.cancel()
        up_writer.close()
