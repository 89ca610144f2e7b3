"""A strict HTTP/1.1 request parser for the proxy: request head and body framing, with limits.

Only the client side is parsed here; upstream responses are parsed by aiohttp's
client. Being the one component that frames the request (the upstream request
is re-framed from scratch by aiohttp), the parser refuses every ambiguous shape
instead of guessing, so no upstream can read a request differently:

- request line: exactly `method SP target SP HTTP/1.0|HTTP/1.1`, method a token,
  target visible ASCII; up to 4 empty lines before it are ignored (RFC 9112 2.2);
- header fields: `token ":" OWS value OWS`; no whitespace before the colon, no
  obs-fold (a line starting with SP/HTAB), no CTL (NUL, CR, ...) in a value,
  values must be UTF-8; lines end in CRLF or LF;
- framing: Transfer-Encoding and Content-Length together, several different
  Content-Length values, a Content-Length that is not 1-18 digits, a
  Transfer-Encoding other than exactly `chunked`, more than one Host: 400;
- chunked bodies: `1*16HEXDIG [ws] [";" ext]` size lines, data followed by exactly
  CRLF, at most 64 trailer lines (dropped);
- limits: `max_header_bytes` for the whole head (the request line alone over it:
  414, else 431), at most MAX_HEADERS fields (431), `max_body_bytes` (413).

Every refusal is a `RequestError(status)`; the caller answers it and closes.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

MAX_HEADERS = 100
MAX_CHUNK_LINE = 4096
MAX_TRAILER_BYTES = 16384
READ_SIZE = 65536

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(rb"[\x21-\x7e]+")
_VERSION = re.compile(rb"HTTP/1\.[01]")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[\x09\x20-\x7e\x80-\xff]*)?")


class RequestError(Exception):
    """A request the proxy refuses; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


@dataclass
class RequestHead:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    content_length: int | None = None
    chunked: bool = False
    connection_tokens: frozenset[str] = field(default_factory=frozenset)
    expect_continue: bool = False

    @property
    def keep_alive(self) -> bool:
        if self.version == "HTTP/1.1":
            return "close" not in self.connection_tokens
        return False  # HTTP/1.0: one request per connection keeps framing simple

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)

    def values(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for n, v in self.headers if n.lower() == lname]


def _cut(raw: bytes, budget: int, status: int) -> bytes:
    """A line as read (ending in LF) without its CRLF/LF; RequestError(status) if longer than `budget`."""
    if len(raw) > budget:
        raise RequestError(status, "line too long")
    line = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
    if b"\r" in line:
        raise RequestError(400, "bare CR")
    return line


async def _line(reader: asyncio.StreamReader, budget: int, status: int) -> bytes:
    """One line without its CRLF/LF; RequestError(status) if longer than `budget` bytes."""
    try:
        raw = await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError:
        raise RequestError(status, "line too long") from None
    return _cut(raw, budget, status)


class _Head:
    """The request head, a line at a time: the same rules whether the lines come one `await`
    each or all from bytes already received."""

    def __init__(self, max_header_bytes: int) -> None:
        self.budget = max_header_bytes
        self.blank = 0
        self.head: RequestHead | None = None

    def next_line(self) -> tuple[int, int]:
        """(budget, status if over it) for the next line."""
        if self.head is None:
            return self.budget, 414
        if self.budget <= 0:
            raise RequestError(431, "header too large")
        return self.budget, 431

    def feed(self, line: bytes) -> RequestHead | None:
        """Take one line; the head once it is complete."""
        self.budget -= len(line) + 2
        if self.head is None:
            if not line:  # up to 4 empty lines before the request line (RFC 9112 2.2)
                self.blank += 1
                if self.blank == 5:
                    raise RequestError(400, "no request line")
                return None
            self.head = _request_line(line)
            return None
        if not line:
            _framing(self.head)
            return self.head
        if len(self.head.headers) >= MAX_HEADERS:
            raise RequestError(431, "too many header fields")
        self.head.headers.append(_field(line))
        return None


def _request_line(line: bytes) -> RequestHead:
    parts = line.split(b" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not _TARGET.fullmatch(parts[1]):
        raise RequestError(400, "bad request line")
    if not _VERSION.fullmatch(parts[2]):
        raise RequestError(505 if parts[2].startswith(b"HTTP/") else 400, "unsupported version")
    return RequestHead(parts[0].decode("ascii"), parts[1].decode("ascii"), parts[2].decode("ascii"), [])


async def _feed_received(reader: asyncio.StreamReader, parser: _Head) -> RequestHead | None:
    """Feed `parser` the complete lines `reader` holds already, taking them; the head if they end it."""
    data = bytes(getattr(reader, "_buffer", b"")[:max(parser.budget, 0) + 2])  # asyncio keeps them there
    pos = 0
    head = None
    while head is None:
        budget, status = parser.next_line()
        end = data.find(b"\n", pos)
        if end < 0:
            break
        line = _cut(data[pos:end + 1], budget, status)
        pos = end + 1
        head = parser.feed(line)
    if pos:
        await reader.readexactly(pos)  # already here: returns at once
    return head


async def read_head(reader: asyncio.StreamReader, max_header_bytes: int) -> RequestHead | None:
    """The next request head, or None at a clean EOF before it. Raises RequestError,
    or asyncio.IncompleteReadError when the client goes away mid-head.

    Lines already received (usually the whole head, one packet) are parsed at once, the
    others as they arrive, a line per `await`; both by the same rules (`_Head`)."""
    parser = _Head(max_header_bytes)
    while True:
        head = await _feed_received(reader, parser)
        if head is not None:
            return head
        if parser.head is None and reader.at_eof():
            return None
        budget, status = parser.next_line()
        try:
            line = await _line(reader, budget, status)
        except asyncio.IncompleteReadError as exc:
            if parser.head is None and not exc.partial:
                return None
            raise
        head = parser.feed(line)
        if head is not None:
            return head


def _field(line: bytes) -> tuple[str, str]:
    if line[:1] in (b" ", b"\t"):
        raise RequestError(400, "obs-fold")
    name, colon, value = line.partition(b":")
    if not colon or not _TOKEN.fullmatch(name):
        raise RequestError(400, "bad header field")
    value = value.strip(b" \t")
    if _BAD_VALUE.search(value):
        raise RequestError(400, "control character in header value")
    try:
        return name.decode("ascii"), value.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError(400, "header value is not UTF-8") from None


def _framing(head: RequestHead) -> None:
    """Fill in body framing and connection tokens; refuse every ambiguous combination."""
    lengths: set[str] = set()
    codings: list[str] = []
    hosts = 0
    tokens: set[str] = set()
    expect: list[str] = []
    for name, value in head.headers:
        lname = name.lower()
        if lname == "content-length":
            lengths.update(v.strip() for v in value.split(","))
        elif lname == "transfer-encoding":
            codings.extend(v.strip().lower() for v in value.split(","))
        elif lname == "host":
            hosts += 1
        elif lname in ("connection", "proxy-connection"):
            tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
        elif lname == "expect":
            expect.append(value.strip().lower())
    if hosts > 1:
        raise RequestError(400, "more than one Host")
    _body_framing(head, lengths, codings)
    if expect:
        if expect != ["100-continue"]:
            raise RequestError(417, "unsupported Expect")
        head.expect_continue = head.version == "HTTP/1.1"
    head.connection_tokens = frozenset(tokens)


def _body_framing(head: RequestHead, lengths: set[str], codings: list[str]) -> None:
    """Chunked or one Content-Length, never both nor two (request smuggling)."""
    if codings and lengths:
        raise RequestError(400, "both Transfer-Encoding and Content-Length")
    if codings:
        if head.version != "HTTP/1.1" or codings != ["chunked"]:
            raise RequestError(400, "unsupported Transfer-Encoding")
        head.chunked = True
    if lengths:
        if len(lengths) != 1:
            raise RequestError(400, "conflicting Content-Length")
        value = next(iter(lengths))
        if not (value.isascii() and value.isdigit()) or len(value) > 18:
            raise RequestError(400, "bad Content-Length")
        head.content_length = int(value)


async def iter_body(reader: asyncio.StreamReader, head: RequestHead, max_body_bytes: int,
                    read_timeout: float) -> AsyncIterator[bytes]:
    """The request body as it arrives, dechunked; RequestError on bad framing or size.

    Each read waits at most `read_timeout` seconds (TimeoutError): a client that
    stops sending in the middle of a body does not hold its connection forever.
    """
    if head.chunked:
        async for piece in _iter_chunked(reader, max_body_bytes, read_timeout):
            yield piece
        return
    remaining = head.content_length or 0
    if remaining > max_body_bytes:
        raise RequestError(413, "body too large")
    while remaining:
        piece = await asyncio.wait_for(reader.read(min(remaining, READ_SIZE)), read_timeout)
        if not piece:
            raise asyncio.IncompleteReadError(b"", remaining)
        remaining -= len(piece)
        yield piece


async def _iter_chunked(reader: asyncio.StreamReader, max_body_bytes: int,
                        read_timeout: float) -> AsyncIterator[bytes]:
    total = 0
    while True:
        line = await asyncio.wait_for(_line(reader, MAX_CHUNK_LINE, 400), read_timeout)
        match = _CHUNK_SIZE.fullmatch(line)
        if not match:
            raise RequestError(400, "bad chunk size")
        size = int(match.group(1), 16)
        if size == 0:
            break
        total += size
        if total > max_body_bytes:
            raise RequestError(413, "body too large")
        while size:
            piece = await asyncio.wait_for(reader.read(min(size, READ_SIZE)), read_timeout)
            if not piece:
                raise asyncio.IncompleteReadError(b"", size)
            size -= len(piece)
            yield piece
        if await asyncio.wait_for(reader.readexactly(2), read_timeout) != b"\r\n":
            raise RequestError(400, "bad chunk terminator")
    budget = MAX_TRAILER_BYTES
    for _ in range(64):
        line = await asyncio.wait_for(_line(reader, budget, 400), read_timeout)
        budget -= len(line) + 2
        if not line:
            return
        _field(line)  # validated, then dropped: trailers are not forwarded
    raise RequestError(400, "too many trailer fields")
