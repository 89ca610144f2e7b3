"""Reads the server name (SNI) out of the first bytes of a TLS connection: its ClientHello.

The proxy's TLS listener (proxy.tls_listen) receives HTTPS that stage 1 steered
to it. It cannot see the URL inside TLS; it reads the host the client asked
for, checks that host, and tunnels the untouched bytes to it. This module only
parses; it never decrypts and never answers.

Grammar read (RFC 8446 5.1 and 4.1.2, RFC 6066 3), big-endian:

    record    = type:1 (22, handshake) version:2 (0x03xx) length:2 (<= 2^14) fragment
    handshake = msg_type:1 (1, client_hello) length:3 body
                (the fragments of consecutive records, concatenated)
    body      = version:2 random:32 session_id<0..32> cipher_suites<2..2^16-2>
                compression_methods<1..2^8-1> [extensions<0..2^16-1>]
    extension = type:2 data<0..2^16-1>;  server_name (type 0) data =
                server_name_list<1..2^16-1> of (name_type:1 name<1..2^16-1>)

`read_client_hello(data)` returns None while `data` is a valid prefix that is
too short, a ClientHello once it is complete, and raises ClientHelloError for
anything else (not TLS, another handshake message, a length that does not fit,
more than MAX_HELLO bytes). Every length is checked against what is there
before it is used. The host name must be 1-255 ASCII bytes (RFC 6066), else
ClientHelloError; what it names is for the caller to check (the proxy
canonicalizes it as a URL host, which refuses what no URL could name).
"""

from __future__ import annotations

from dataclasses import dataclass

from blocklist.core.errors import BlocklistError

HANDSHAKE = 22
CLIENT_HELLO = 1
SERVER_NAME = 0
HOST_NAME = 0
MAX_RECORD = 1 << 14
MAX_HELLO = 1 << 16  # handshake bytes we accept for one ClientHello (real ones: 0.5-2 KB)
MAX_NAME = 255

# A fatal alert, access_denied (RFC 8446 6.2), in a TLS 1.2-framed record: what a refused client reads.
ACCESS_DENIED_ALERT = bytes([21, 3, 3, 0, 2, 2, 49])


class ClientHelloError(BlocklistError):
    """The bytes are not the start of a TLS connection we can read a server name from."""


@dataclass(frozen=True)
class ClientHello:
    server_name: str | None  # lowercased; None when the client sent no host name
    size: int                # bytes of `data` the records carrying it took


def read_client_hello(data: bytes) -> ClientHello | None:
    """The ClientHello at the start of `data`; None if more bytes are needed."""
    handshake, size = _handshake(data)
    if handshake is None:
        return None
    return ClientHello(_server_name(handshake), size)


def _handshake(data: bytes) -> tuple[bytes | None, int]:
    """The ClientHello message's body from the records at the start of `data`, and their size."""
    fragments: list[bytes] = []
    have, pos, need = 0, 0, None
    while need is None or have < need:
        if len(data) - pos < 5:
            return None, 0
        kind, major, length = data[pos], data[pos + 1], int.from_bytes(data[pos + 3:pos + 5], "big")
        if kind != HANDSHAKE or major != 3:
            raise ClientHelloError("not a TLS handshake record")
        if not 0 < length <= MAX_RECORD:
            raise ClientHelloError("TLS record length out of range")
        if len(data) - pos - 5 < length:
            return None, 0
        fragments.append(data[pos + 5:pos + 5 + length])
        pos += 5 + length
        have += length
        if need is None and have >= 4:
            head = b"".join(fragments)
            if head[0] != CLIENT_HELLO:
                raise ClientHelloError("the first handshake message is not a ClientHello")
            need = 4 + int.from_bytes(head[1:4], "big")
            if need > MAX_HELLO:
                raise ClientHelloError("ClientHello too long")
    message = b"".join(fragments)
    if have > need:
        raise ClientHelloError("bytes after the ClientHello in its records")
    return message[4:], pos


class _Reader:
    """Bounds-checked reads from one message; ClientHelloError when a length overruns it."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if n > len(self.data) - self.pos:
            raise ClientHelloError("a length in the ClientHello overruns it")
        piece = self.data[self.pos:self.pos + n]
        self.pos += n
        return piece

    def number(self, width: int) -> int:
        return int.from_bytes(self.take(width), "big")

    def vector(self, width: int) -> bytes:
        return self.take(self.number(width))

    @property
    def left(self) -> int:
        return len(self.data) - self.pos


def _server_name(body: bytes) -> str | None:
    msg = _Reader(body)
    msg.take(2 + 32)  # legacy_version, random
    msg.vector(1)     # legacy_session_id
    msg.vector(2)     # cipher_suites
    msg.vector(1)     # legacy_compression_methods
    if not msg.left:
        return None   # no extensions (TLS 1.2 and older allow it)
    extensions = _Reader(msg.vector(2))
    if msg.left:
        raise ClientHelloError("bytes after the ClientHello's extensions")
    name = None
    seen: set[int] = set()
    while extensions.left:
        kind, data = extensions.number(2), extensions.vector(2)
        if kind in seen:
            raise ClientHelloError("an extension appears twice")  # RFC 8446 4.2: abort
        seen.add(kind)
        if kind == SERVER_NAME:
            name = _host_name(data)
    return name


def _host_name(data: bytes) -> str | None:
    names = _Reader(data)
    entries = _Reader(names.vector(2))
    if names.left:
        raise ClientHelloError("bytes after the server name list")
    found = None
    while entries.left:
        kind, value = entries.number(1), entries.vector(2)
        if kind == HOST_NAME:
            if found is not None:
                raise ClientHelloError("two host names")  # RFC 6066: at most one of each type
            found = value
    if found is None:
        return None
    if not 0 < len(found) <= MAX_NAME or not found.isascii():
        raise ClientHelloError("the server name is not an ASCII host name")
    return found.decode("ascii").lower()
