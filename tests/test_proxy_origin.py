"""The proxy's lean way to origins (GET/HEAD without a body to http://): kept-alive connections and
strict response framing, against a raw origin that answers each path its own way (test bytes, not a library).

Also: after a block, a client that said keep-alive (as browsers do) keeps its connection.
"""

from __future__ import annotations

import socket

import pytest

from tests.support.proxy import RunningProxy
from tests.support.raw_origin import BODY, RawOrigin


def exchange(port: int, request: bytes) -> bytes:
    """One request on its own connection (Connection: close); everything until the proxy closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while piece := sock.recv(65536):
            data += piece
    return data


def get(proxy: RunningProxy, origin: RawOrigin, path: str, method: str = "GET", version: str = "1.1") -> bytes:
    return exchange(proxy.port, f"{method} http://127.0.0.1:{origin.port}{path} HTTP/{version}\r\n"
                                f"Host: x\r\nConnection: close\r\n\r\n".encode())


def dechunk(body: bytes) -> bytes:
    out = b""
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return out
        out, body = out + body[:size], body[size + 2:]


def test_origin_connections_are_kept_alive_and_reused(proxy: RunningProxy, raw_origin: RawOrigin) -> None:
    answers = [get(proxy, raw_origin, "/ka") for _ in range(5)]
    assert all(a.startswith(b"HTTP/1.1 200 OK\r\n") and a.endswith(b"\r\n\r\n" + BODY) for a in answers)
    assert b"X-Origin: yes\r\n" in answers[0] and b"Via: 1.1 blocklist\r\n" in answers[0]
    assert raw_origin.connections == 1
    head = get(proxy, raw_origin, "/ka", method="HEAD")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n")
    assert b"Content-Length: 100\r\n" in head
    assert get(proxy, raw_origin, "/ka").endswith(BODY) and raw_origin.connections == 1


def test_response_framings_are_read_and_reframed(proxy: RunningProxy, raw_origin: RawOrigin) -> None:
    for path in ("/chunked", "/te-and-cl", "/to-the-close"):
        answer = get(proxy, raw_origin, path)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"Transfer-Encoding: chunked" in head, path
        assert b"Content-Length" not in head and b"X-Trailer" not in answer
        assert dechunk(body) == BODY, path
    old = get(proxy, raw_origin, "/to-the-close", version="1.0")  # an HTTP/1.0 client: to the close
    assert old.endswith(b"\r\n\r\n" + BODY) and b"chunked" not in old
    hints = get(proxy, raw_origin, "/early-hints")
    assert hints.startswith(b"HTTP/1.1 200 OK\r\n") and hints.endswith(b"ok") and b"103" not in hints


def test_ambiguous_responses_are_502(proxy: RunningProxy, raw_origin: RawOrigin) -> None:
    for path in ("/conflicting-length", "/obs-fold", "/bare-cr", "/switching", "/bad-status"):
        answer = get(proxy, raw_origin, path)
        assert answer.startswith(b"HTTP/1.1 502 "), (path, answer[:80])
        assert b"Set-Cookie" not in answer and b"Upgrade" not in answer
    hop = get(proxy, raw_origin, "/hop-by-hop")
    assert hop.startswith(b"HTTP/1.1 200 OK\r\n") and b"X-Secret" not in hop and b"Keep-Alive" not in hop
    assert "Traceback" not in proxy.stderr.read_text()


def test_a_kept_connection_the_origin_closed_is_replaced(proxy: RunningProxy, raw_origin: RawOrigin) -> None:
    # The origin closes after each answer without saying so: the proxy keeps the connection, finds it
    # closed at the next request and sends that request again on a new one.
    answers = [get(proxy, raw_origin, "/forgets-keep-alive") for _ in range(4)]
    assert all(a.startswith(b"HTTP/1.1 200 OK\r\n") and a.endswith(b"ok") for a in answers), answers
    assert raw_origin.connections == 4


def test_a_block_keeps_the_connection_of_a_client_that_said_keep_alive(proxy: RunningProxy,
                                                                         raw_origin: RawOrigin) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(b"GET http://bad.example/a.html HTTP/1.1\r\nHost: bad.example\r\n"
                     b"Proxy-Connection: keep-alive\r\n\r\n"
                     + f"GET http://127.0.0.1:{raw_origin.port}/ka HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                     .encode())
        data = b""
        while piece := sock.recv(65536):
            data += piece
    assert data.startswith(b"HTTP/1.1 451 ") and b"Connection: close" not in data.split(b"\r\n\r\n")[0]
    assert data.count(b"HTTP/1.1 200 OK\r\n") == 1 and data.endswith(BODY)
    closed = exchange(proxy.port, b"GET http://bad.example/a.html HTTP/1.1\r\nHost: bad.example\r\n\r\n")
    assert closed.startswith(b"HTTP/1.1 451 ") and b"Connection: close\r\n" in closed


# ----------------------------------------------------------------------------- heads read whole or line by line

FRAGMENTS = [b"GET http://a.test/ HTTP/1.1", b"POST / HTTP/1.0", b"G T / HTTP/1.1", b"GET / HTTP/2.0",
             b"HTTP/1.1 200 OK", b"HTTP/1.1 103 Early", b"HTTP/1.0 204 ", b"HTTP/1.1 101 Up", b"HTTP/1.1 2000 X",
             b"Host: a.test", b"Content-Length: 5", b"Content-Length: 5, 6", b"Transfer-Encoding: chunked",
             b"Connection: close", b"Expect: 100-continue", b" folded", b"X : y", b"X: a\rb", b"X: \x00",
             b"X: " + b"v" * 300, b"", b"\xff\xfe: x"]
EOLS = [b"\r\n", b"\n", b"\r"]


async def _outcome(parse, data: bytes, at_once: bool) -> object:
    """What `parse(reader)` gives for `data`: all received before the call, or arriving after it."""
    import asyncio as aio
    reader = aio.StreamReader(limit=65536)
    if at_once:
        reader.feed_data(data)
        reader.feed_eof()
    task = aio.ensure_future(parse(reader))
    if not at_once:
        await aio.sleep(0)  # parse is waiting for its first line now
        for i in range(0, len(data), 7):
            reader.feed_data(data[i:i + 7])
            await aio.sleep(0)
        reader.feed_eof()
    try:
        result = await aio.wait_for(task, 5)
    except Exception as exc:  # noqa: BLE001 - the outcome compared is the exception's kind and status
        return (type(exc).__name__, getattr(exc, "status", None), str(exc))
    if result is None:
        return None
    return (repr(result), reader._buffer and bytes(reader._buffer))  # what is left for the next request


def test_a_head_read_whole_or_line_by_line_gives_the_same_outcome() -> None:
    import asyncio as aio

    from hypothesis import given, settings
    from hypothesis import strategies as st

    from resolver_plugin.enforcement.proxy.head import read_head
    from resolver_plugin.enforcement.proxy.origin import read_response_head

    heads = st.lists(st.tuples(st.sampled_from(FRAGMENTS), st.sampled_from(EOLS)), max_size=9).map(
        lambda parts: b"".join(f + e for f, e in parts))
    limits = st.sampled_from([64, 200, 16384])

    @settings(max_examples=300, deadline=None)
    @given(heads, st.binary(max_size=12), limits)
    def check(head: bytes, tail: bytes, limit: int) -> None:
        data = head + tail
        for parse in (lambda r: read_head(r, limit), read_response_head):
            assert aio.run(_outcome(parse, data, True)) == aio.run(_outcome(parse, data, False)), data

    check()
    outcome = aio.run(_outcome(lambda r: read_head(r, 16384), b"GET / HTTP/1.1\r\nHost: a\r\n\r\nNEXT", True))
    assert outcome is not None and outcome[1] == b"NEXT"  # exactly the head was taken


async def test_the_pool_keeps_at_most_its_idle_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio as aio

    from resolver_plugin.enforcement.proxy import origin as lean_origin
    from resolver_plugin.enforcement.proxy.destinations import Destinations

    monkeypatch.setattr(lean_origin, "MAX_IDLE_PER_ORIGIN", 3)
    monkeypatch.setattr(lean_origin, "MAX_IDLE", 4)
    accepted: list[aio.StreamWriter] = []

    async def hold(reader: aio.StreamReader, writer: aio.StreamWriter) -> None:
        accepted.append(writer)

    servers = [await aio.start_server(hold, "127.0.0.1", 0) for _ in range(2)]
    ports = [s.sockets[0].getsockname()[1] for s in servers]
    pool = lean_origin.OriginPool(Destinations(True))
    try:
        conns = [(port, (await pool.get("127.0.0.1", port, 5))[0]) for port in ports for _ in range(4)]
        for port, conn in conns:
            pool.put("127.0.0.1", port, conn)
        kept = {port: len(pool.idle.get(("127.0.0.1", port), [])) for port in ports}
        assert kept == {ports[0]: 3, ports[1]: 1} and pool.idle_count == 4
        assert sum(conn.writer.is_closing() for _, conn in conns) == 4  # the rest were closed
        again, reused = await pool.get("127.0.0.1", ports[0], 5)
        assert reused and pool.idle_count == 3
        pool.put("127.0.0.1", ports[0], again)
        pool._purge(pool._purged + lean_origin.IDLE_SECONDS + 1)  # all of them idle too long
        assert pool.idle == {} and pool.idle_count == 0
    finally:
        pool.close()
        for writer in accepted:
            writer.close()
        for server in servers:
            server.close()
            await server.wait_closed()
