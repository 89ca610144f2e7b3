"""The proxy's fast way (resolver_plugin.enforcement.proxy.fast) against its coroutine way.

The fast way parses only what the coroutine way's parsers (head.py, origin.py) read alike: for
generated heads, whatever it accepts they accept and read the same. On a running proxy: pipelined
requests of both ways on one connection, a head in pieces, and an answer handed to origin.py's
coroutine (chunked) followed by another request on the same connection.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time

from hypothesis import example, given, settings
from hypothesis import strategies as st

from resolver_plugin.enforcement.proxy import fast
from resolver_plugin.enforcement.proxy.head import RequestError, read_head
from resolver_plugin.enforcement.proxy.origin import BadResponse, read_response_head
from tests.support.proxy import RunningProxy
from tests.support.raw_origin import BODY, RawOrigin
from tests.test_proxy_origin import dechunk

REQUEST_PARTS = [b"GET http://a.test/ HTTP/1.1", b"HEAD /x?y=1 HTTP/1.0", b"G T / HTTP/1.1", b"GET / HTTP/2.0",
                 b"GET  / HTTP/1.1", b"Host: a.test", b"host:a.test  ", b"Content-Length: 5", b"Content-Length: 0",
                 b"Content-Length: 5, 6", b"Transfer-Encoding: chunked", b"Connection: close, keep-alive",
                 b"Proxy-Connection: keep-alive", b"Expect: 100-continue", b"Expect: other", b" folded", b"X : y",
                 b"X: a\rb", b"X: \x00", b"X:\tv\t", b"X: caf\xc3\xa9", b"X: \xff", b"\xff\xfe: x", b"X:", b"",
                 b"X: " + b"v" * 120]
RESPONSE_PARTS = [b"HTTP/1.1 200 OK", b"HTTP/1.0 200 OK", b"HTTP/1.1 304 Not Modified", b"HTTP/1.0 204 ",
                  b"Connection: keep-alive", b"Connection: X-A, close", b"Connection: \xa0close", b"X-A: 1",
                  b"Keep-Alive: timeout=5", b"Content-Length:  7 ", b"Proxy-Authenticate: x",
                  b"HTTP/1.1 404", b"HTTP/1.1 103 Early", b"HTTP/1.1 101 Up",
                  b"HTTP/1.1 2000 X", b"HTTP/1.1 200 caf\xe9", b"Content-Length: 5", b"Content-Length: 5, 5",
                  b"Content-Length: x", b"Transfer-Encoding: chunked", b"Connection: close", b" folded", b"X : y",
                  b"X: a\rb", b"X: \x00", b"X:\t\xff\t", b"", b"X: " + b"v" * 120]
EOLS = [b"\r\n", b"\r\n", b"\n", b"\r"]


def _heads(parts: list[bytes]) -> st.SearchStrategy[bytes]:
    return st.lists(st.tuples(st.sampled_from(parts), st.sampled_from(EOLS)), min_size=1, max_size=8).map(
        lambda pieces: b"".join(p + e for p, e in pieces) + b"\r\n")


def _slow(parse, data: bytes) -> object:
    async def run() -> object:
        reader = asyncio.StreamReader(limit=65536)
        reader.feed_data(data)
        reader.feed_eof()
        try:
            return await parse(reader)
        except (RequestError, BadResponse, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            return exc
    return asyncio.run(run())


def test_every_request_head_the_fast_way_takes_head_py_reads_alike() -> None:
    taken: list[bytes] = []

    @settings(max_examples=400, deadline=None)
    @given(_heads(REQUEST_PARTS), st.sampled_from([80, 16384]))
    @example(b"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nX:\tv\t\r\n\r\n", 16384)
    def check(data: bytes, limit: int) -> None:
        end = data.find(b"\r\n\r\n")
        if end < 0 or end + 4 > limit:
            return
        head = fast.parse_request(data, end)
        if head is None:
            return
        taken.append(data)
        assert _slow(lambda r: read_head(r, limit), data) == head, data

    check()
    assert taken  # the fast way took some of them


def test_every_response_head_the_fast_way_takes_is_reframed_as_origin_py_does() -> None:
    from resolver_plugin.enforcement.proxy.forward import response_head
    from resolver_plugin.enforcement.proxy.head import RequestHead
    from resolver_plugin.enforcement.proxy.origin import response_framing
    requests = [RequestHead("GET", "/", "HTTP/1.1", []), RequestHead("HEAD", "/", "HTTP/1.1", []),
                RequestHead("GET", "/", "HTTP/1.0", []),
                RequestHead("GET", "/", "HTTP/1.1", [], connection_tokens=frozenset({"close"}))]
    taken: list[bytes] = []

    @settings(max_examples=500, deadline=None)
    @given(_heads(RESPONSE_PARTS), st.sampled_from(requests))
    @example(b"HTTP/1.1 200 caf\xe9\r\nX:\t\xff\t\r\nContent-Length: 5\r\n\r\n", requests[0])
    def check(data: bytes, request: RequestHead) -> None:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return
        got = fast.reframe(data, end, request)
        if got is None:
            return
        taken.append(data)
        slow = _slow(read_response_head, data)
        assert not isinstance(slow, Exception), (data, slow)
        no_body = request.method == "HEAD" or slow.status in (204, 304)  # type: ignore[attr-defined]
        framing = response_framing(slow, no_body)  # type: ignore[arg-type]
        assert not framing.chunked
        has_length = framing.length is not None and not no_body
        keep_alive = request.keep_alive and (no_body or has_length or request.version == "HTTP/1.1")
        chunked = not no_body and not has_length and request.version == "HTTP/1.1"
        out = response_head(slow.status, slow.reason, slow.pairs, chunked, keep_alive)  # type: ignore[attr-defined]
        assert (got.head, got.status, got.length, got.chunked, got.keep_alive, got.reusable) == (
            out, slow.status, 0 if no_body else framing.length, chunked, keep_alive, framing.reusable), data

    check()
    assert taken


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while piece := sock.recv(65536):
        data += piece
    return data


def test_pipelined_requests_of_both_ways_are_answered_in_order(proxy: RunningProxy, raw_origin: RawOrigin) -> None:
    origin = f"http://127.0.0.1:{raw_origin.port}"
    keep = "Proxy-Connection: keep-alive\r\n"
    requests = (f"GET {origin}/ka HTTP/1.1\r\nHost: x\r\n{keep}\r\n"                      # fast, origin
                f"GET http://bad.example/a.html HTTP/1.1\r\nHost: bad.example\r\n{keep}\r\n"  # fast, block
                f"HEAD {origin}/ka HTTP/1.1\r\nHost: x\r\n{keep}\r\n"                     # fast, no body
                f"DELETE {origin}/ka HTTP/1.1\r\nHost: x\r\n{keep}\r\n"                   # aiohttp's client
                f"GET {origin}/ka HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")      # the coroutine way
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(requests.encode())
        data = _read_all(sock)
    statuses = re.findall(rb"HTTP/1\.1 ([0-9]{3}) ", data)
    assert statuses == [b"200", b"451", b"200", b"200", b"200"], data[:400]
    assert data.count(BODY) == 3 and data.endswith(BODY)


def test_a_head_in_pieces_and_a_chunked_answer_keep_the_connection(proxy: RunningProxy,
                                                                   raw_origin: RawOrigin) -> None:
    origin = f"http://127.0.0.1:{raw_origin.port}"
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        for piece in (f"GET {origin}/chu", "nked HTTP/1.1\r\nHost: x\r", "\nProxy-Connection: keep-alive\r\n\r\n"):
            sock.sendall(piece.encode())
            time.sleep(0.05)
        head = b""
        while not head.endswith(b"\r\n0\r\n\r\n"):
            head += sock.recv(65536)
        sock.sendall(f"GET {origin}/ka HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        rest = _read_all(sock)
    first_head, _, body = head.partition(b"\r\n\r\n")
    assert first_head.startswith(b"HTTP/1.1 200 OK\r\n") and b"Transfer-Encoding: chunked" in first_head
    assert dechunk(body) == BODY
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n") and rest.endswith(BODY) and b"Connection: close" in rest
    log = proxy.access_log.read_text()
    assert log.count(" 200 ") == 2 and "allowed" in log


def test_a_plain_http_target_is_split_as_yarl_splits_it() -> None:
    from resolver_plugin.enforcement.proxy.forward import upstream_url
    taken: list[str] = []
    hosts = st.sampled_from(["a.test", "Example.COM", "127.0.0.1", "a..b", "-a.", "xn--80ak6aa92e.com", "XN--a.b",
                             "[::1]", "user@a.test", ".", ""])
    ports = st.sampled_from(["", ":80", ":8080", ":080", ":0", ":65535", ":65536", ":99999", ":"])
    paths = st.sampled_from(["", "/", "/x/../y", "/%zz/%41?x=%", "/a?b#c", "?q", "/p?q=1&r", "/[]{}|\\^`\"<>", "#f"])

    @settings(max_examples=300, deadline=None)
    @given(hosts, ports, paths)
    def check(host: str, port: str, path: str) -> None:
        target = f"http://{host}{port}{path}"
        simple = fast.simple_http(target)
        if simple is None:
            return
        taken.append(target)
        url = upstream_url(target)  # never raises for what simple_http takes
        assert simple == (url.raw_host, url.port, url.raw_path_qs, url.host_port_subcomponent), target

    check()
    assert taken
