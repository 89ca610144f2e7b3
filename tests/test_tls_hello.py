"""Reading the server name from a ClientHello: real ones from OpenSSL, every prefix, hostile bytes."""

from __future__ import annotations

import ssl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resolver_plugin.enforcement.proxy.tls_hello import MAX_HELLO, ClientHelloError, read_client_hello
from tests.support.properties import Branches
from tests.support.tls import client_hello, reframe, sni_extension, with_extensions


@pytest.mark.parametrize("name, expected", [
    ("www.example.com", "www.example.com"),
    ("WWW.Example.COM", "www.example.com"),
    ("xn--bcher-kva.example", "xn--bcher-kva.example"),
    ("a" * 63 + ".example", "a" * 63 + ".example"),
])
@pytest.mark.parametrize("maximum", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_reads_the_server_name(name: str, expected: str, maximum: ssl.TLSVersion) -> None:
    data = client_hello(name, maximum)
    hello = read_client_hello(data)
    assert hello is not None and hello.server_name == expected and hello.size == len(data)


def test_no_server_name() -> None:
    for data in (client_hello(None), client_hello("192.0.2.1")):  # OpenSSL sends no SNI for an IP
        hello = read_client_hello(data)
        assert hello is not None and hello.server_name is None


def test_every_prefix_asks_for_more() -> None:
    data = client_hello("pages.example")
    assert all(read_client_hello(data[:i]) is None for i in range(len(data)))
    assert read_client_hello(data + b"\x17\x03\x03\x00\x05early").server_name == "pages.example"


@pytest.mark.parametrize("size", [1, 7, 100, 512])
def test_a_hello_split_across_records(size: int) -> None:
    data = reframe(client_hello("pages.example"), size)
    hello = read_client_hello(data)
    assert hello is not None and hello.server_name == "pages.example" and hello.size == len(data)
    assert all(read_client_hello(data[:i]) is None for i in range(0, len(data), 97))


@pytest.mark.parametrize("data, why", [
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "not a TLS handshake record"),
    (b"\x16\x02\x00\x00\x05hello", "not a TLS handshake record"),            # SSL 2-era version
    (b"\x16\x03\x01\x00\x00", "record length"),                               # empty record
    (b"\x16\x03\x01\x40\x01" + b"\x01" * 10, "record length"),                # over 2^14
    (b"\x16\x03\x01\x00\x04\x02\x00\x00\x00", "not a ClientHello"),           # a ServerHello
    (b"\x16\x03\x01\x00\x04\x01\xff\xff\xff", "too long"),                    # 16 MB declared
    (b"\x16\x03\x01\x00\x05\x01\x00\x00\x00\x00", "after the ClientHello"),   # more than declared
    (b"\x16\x03\x01\x00\x06\x01\x00\x00\x02\x03\x03", "overruns"),            # truncated body
])
def test_refuses_what_is_not_a_client_hello(data: bytes, why: str) -> None:
    with pytest.raises(ClientHelloError, match=why):
        read_client_hello(data)


@pytest.mark.parametrize("extensions, expected", [
    (sni_extension((0, b"Pages.Example")), "pages.example"),
    (b"\x00\x0a\x00\x02\x00\x00" + sni_extension((0, b"a.example")), "a.example"),   # after another extension
    (sni_extension((1, b"not a host name")), None),                                  # another name type only
    (b"", None),
])
def test_crafted_hellos(extensions: bytes, expected: str | None) -> None:
    assert read_client_hello(with_extensions(extensions)).server_name == expected


@pytest.mark.parametrize("extensions", [
    sni_extension((0, b"a.example"), (0, b"b.example")),   # two host names
    sni_extension((0, b"a.example")) * 2,                  # the extension twice
    sni_extension((0, b"b\xc3\xbccher.example")),          # not ASCII
    sni_extension((0, b"")),                               # empty
    sni_extension((0, b"a" * 256)),                        # longer than a DNS name
])
def test_crafted_hellos_refused(extensions: bytes) -> None:
    with pytest.raises(ClientHelloError):
        read_client_hello(with_extensions(extensions))


def test_random_bytes_never_raise_another_error() -> None:
    ran = Branches()

    @settings(max_examples=500, deadline=None)
    @given(st.binary(max_size=600))
    def prop(data: bytes) -> None:
        try:
            hello = read_client_hello(data)
        except ClientHelloError:
            ran("refused")
            return
        assert hello is None or hello.size <= len(data)
        ran("incomplete" if hello is None else "parsed")

    prop()
    assert ran["refused"] and ran["incomplete"], ran


_REAL = client_hello("pages.example")


def test_mutated_hellos_never_raise_another_error() -> None:
    ran = Branches()

    @settings(max_examples=500, deadline=None)
    @given(st.lists(st.tuples(st.integers(0, len(_REAL) - 1), st.integers(0, 255)), min_size=1, max_size=8),
           st.integers(0, len(_REAL)))
    def prop(flips: list[tuple[int, int]], cut: int) -> None:
        data = bytearray(_REAL)
        for at, value in flips:
            data[at] = value
        try:
            hello = read_client_hello(bytes(data[:cut]))
        except ClientHelloError:
            ran("refused")
            return
        assert hello is None or (hello.server_name is None or hello.server_name.isascii())
        ran("incomplete" if hello is None else "parsed")

    prop()
    # A random flip or cut rarely leaves a whole hello: both outcomes without an error count.
    assert ran["refused"] and ran["parsed"] + ran["incomplete"], ran


def test_endless_records_are_cut_off() -> None:
    """A client that keeps sending handshake records never makes the reader wait past MAX_HELLO."""
    message = b"\x01" + (MAX_HELLO).to_bytes(3, "big") + b"\x00" * 100
    with pytest.raises(ClientHelloError, match="too long"):
        read_client_hello(b"\x16\x03\x01" + len(message).to_bytes(2, "big") + message)
