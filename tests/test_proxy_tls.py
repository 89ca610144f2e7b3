"""The proxy's TLS listener as a user runs it: `blocklist-plugin proxy` with `proxy.tls_listen`.

HTTPS that stage 1 steered to the proxy is tunnelled by its server name to a
local TLS origin (certificate for localhost, trusted by the test's client): the
page loads end to end, a host listed whole gets a TLS access_denied alert,
and no server name, plain HTTP or a loop back to the proxy connects nothing.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from resolver_plugin.enforcement.proxy.tls_hello import ACCESS_DENIED_ALERT
from tests.support.net import free_port
from tests.support.procfs import children, socket_inodes
from tests.support.proxy import RunningProxy, raw_exchange, start_proxy
from tests.support.tls import client_hello, self_signed_cert, sni_extension, with_extensions


@pytest.fixture
async def tls_origin(tmp_path: Path) -> AsyncIterator[tuple[int, Path]]:
    """An HTTPS origin on 127.0.0.1 (the port, and the certificate a client trusts)."""
    cert, key = self_signed_cert(tmp_path, "localhost")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=f"tls origin content at {request.path_qs} for {request.host}")

    app = web.Application()
    app.router.add_get("/{tail:.*}", page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    yield port, cert
    await runner.cleanup()


@pytest.fixture
def listed(hotline, plugin):
    """`localhost` carries a listed page (stage 1 would steer it here); blocked.example is listed whole."""
    hotline.run("add", "http://localhost/secret.html")
    hotline.run("add", "--scope", "domain", "http://blocked.example/")
    hotline.run("publish")
    plugin.write_config()
    plugin.install_published()
    return plugin


def start_tls_proxy(plugin, tmp_path: Path, origin_port: int, **proxy: object) -> tuple[RunningProxy, int]:
    tls_port = free_port()
    running = start_proxy(plugin, tmp_path, tls_listen=f"127.0.0.1:{tls_port}", tls_origin_port=origin_port,
                          connect_timeout=2, upstream_timeout=5, **proxy)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", tls_port), timeout=0.5).close()
            return running, tls_port
        except OSError:
            if time.monotonic() > deadline:
                running.stop()
                pytest.fail("the TLS listener did not open")
            time.sleep(0.05)


async def https_get(port: int, server_name: str | None, cafile: Path, path: str = "/") -> bytes:
    """GET `path` over TLS to the proxy's TLS port, naming `server_name`; the whole response."""
    context = ssl.create_default_context(cafile=str(cafile))
    if server_name is None:
        context.check_hostname = False
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=server_name or ""), 10)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {server_name}\r\nConnection: close\r\n\r\n".encode())
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


def access_lines(running: RunningProxy) -> list[str]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not running.access_log.exists():
        time.sleep(0.05)
    return running.access_log.read_text().splitlines()


async def test_tunnels_a_steered_host_and_denies_a_listed_one(listed, tmp_path: Path, tls_origin) -> None:
    origin_port, cafile = tls_origin
    running, tls_port = start_tls_proxy(listed, tmp_path, origin_port)
    try:
        # a host with listed pages: TLS end to end with the origin (its certificate, its content)
        response = await https_get(tls_port, "localhost", cafile, "/innocent.html?q=1")
        assert response.startswith(b"HTTP/1.1 200") and response.endswith(
            b"tls origin content at /innocent.html?q=1 for localhost")
        # a host listed whole: an access_denied alert, nothing connected
        with pytest.raises(ssl.SSLError) as denied:
            await https_get(tls_port, "www.blocked.example", cafile)
        assert denied.value.reason == "TLSV1_ALERT_ACCESS_DENIED"
        # no server name: nothing to check, nowhere to go
        with pytest.raises(ssl.SSLError) as nameless:
            await https_get(tls_port, None, cafile)
        assert nameless.value.reason == "TLSV1_ALERT_ACCESS_DENIED"
        # not TLS at all: the alert bytes, then the close
        reader, writer = await asyncio.open_connection("127.0.0.1", tls_port)
        writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert await asyncio.wait_for(reader.read(), 10) == ACCESS_DENIED_ALERT
        writer.close()
        # a ClientHello naming what no URL could name
        reader, writer = await asyncio.open_connection("127.0.0.1", tls_port)
        writer.write(with_extensions(sni_extension((0, b".."))))
        assert await asyncio.wait_for(reader.read(), 10) == ACCESS_DENIED_ALERT
        writer.close()
        # and the listener still serves
        assert (await https_get(tls_port, "localhost", cafile)).startswith(b"HTTP/1.1 200")
        assert running.proc.poll() is None
    finally:
        running.stop()
    lines = access_lines(running)
    assert any(f" TLS localhost:{origin_port} 200 " in line and line.endswith(" tunnel") for line in lines), lines
    assert any(" TLS - 451 " in line and "blocked list=default" in line for line in lines), lines
    assert any(" TLS - 421 " in line and "no server name" in line for line in lines), lines
    assert any(" TLS - 400 " in line and "not a TLS ClientHello" in line for line in lines), lines
    assert any(" TLS - 400 " in line and "invalid server name" in line for line in lines), lines
    assert "blocked.example" not in running.access_log.read_text()  # privacy: the listed host is not logged
    assert "Traceback" not in running.stderr.read_text()


async def test_a_name_that_resolves_to_the_proxy_is_a_loop(listed, tmp_path: Path, tls_origin) -> None:
    """The proxy's host resolving with the filtering Unbound would send HTTPS back to the proxy."""
    origin_port, cafile = tls_origin
    listed.extra["resolver"] = {"proxy_address": "127.0.0.1", "proxy_address6": "::1"}
    running, tls_port = start_tls_proxy(listed, tmp_path, origin_port)
    try:
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            await https_get(tls_port, "localhost", cafile)
    finally:
        running.stop()
    assert any(f" TLS localhost:{origin_port} 508 " in line for line in access_lines(running))
    assert "resolves to the proxy's own address" in running.stderr.read_text()


async def test_clients_outside_allowed_clients_get_the_alert(listed, tmp_path: Path, tls_origin) -> None:
    origin_port, cafile = tls_origin
    running, tls_port = start_tls_proxy(listed, tmp_path, origin_port, allowed_clients=["192.0.2.0/24"])
    try:
        with pytest.raises(ssl.SSLError) as refused:
            await https_get(tls_port, "localhost", cafile)
        assert refused.value.reason == "TLSV1_ALERT_ACCESS_DENIED"
    finally:
        running.stop()


async def test_connect_to_a_host_with_listed_pages_carries_tls_only(listed, tmp_path: Path, tls_origin) -> None:
    """`localhost` carries a listed page: a CONNECT tunnel to it passes a TLS ClientHello on, nothing else."""
    origin_port, cafile = tls_origin
    running = start_proxy(listed, tmp_path, connect_ports=[origin_port])
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
        writer.write(f"CONNECT localhost:{origin_port} HTTP/1.1\r\nHost: localhost:{origin_port}\r\n\r\n".encode())
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10) == \
            b"HTTP/1.1 200 Connection established\r\n\r\n"
        await asyncio.wait_for(writer.start_tls(ssl.create_default_context(cafile=str(cafile)),
                                                server_hostname="localhost"), 10)
        writer.write(b"GET /innocent.html HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        response = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert response.startswith(b"HTTP/1.1 200") and response.endswith(
            b"tls origin content at /innocent.html for localhost")
        # the same tunnel asked for the listed page in plain HTTP: refused inside the tunnel
        answer = await raw_exchange(running.port, f"CONNECT localhost:{origin_port} HTTP/1.1\r\n\r\n".encode()
                                    + b"GET /secret.html HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 Connection established\r\n\r\nHTTP/1.1 403 Forbidden\r\n")
        # the default port list is 443 only
        answer = await raw_exchange(running.port, b"CONNECT localhost:80 HTTP/1.1\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 403 ")
    finally:
        running.stop()
    lines = access_lines(running)
    assert any(f" CONNECT localhost:{origin_port} 200 " in line and line.endswith(" tunnel") for line in lines)
    assert any(f" CONNECT localhost:{origin_port} 403 0 " in line and line.endswith(" refused not-tls")
               for line in lines), lines
    assert any(" CONNECT - 403 0 " in line and line.endswith(" refused port=80") for line in lines), lines


async def test_connect_to_an_ip_address_checks_the_server_name(listed, tmp_path: Path, tls_origin) -> None:
    """An address names no site: the tunnel carries TLS only, and the name in its ClientHello is checked."""
    origin_port, cafile = tls_origin
    running = start_proxy(listed, tmp_path, connect_ports=[origin_port])
    connect = f"CONNECT 127.0.0.1:{origin_port} HTTP/1.1\r\n\r\n".encode()
    try:
        # a ClientHello naming a host listed whole: a TLS alert, nothing reaches the origin
        answer = await raw_exchange(running.port, connect + client_hello("www.blocked.example"))
        assert answer == b"HTTP/1.1 200 Connection established\r\n\r\n" + ACCESS_DENIED_ALERT
        # the address in another spelling is still an address
        answer = await raw_exchange(running.port, f"CONNECT 0x7f.1:{origin_port} HTTP/1.1\r\n\r\n".encode()
                                    + client_hello("blocked.example"))
        assert answer.endswith(ACCESS_DENIED_ALERT)
        # plain HTTP through a tunnel to an address: refused, whatever Host it names
        answer = await raw_exchange(running.port, connect + b"GET /secret.html HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 Connection established\r\n\r\nHTTP/1.1 403 Forbidden\r\n")
        # TLS naming a host with listed pages, or no name at all (an address certificate): tunnelled
        for server_name in ("localhost", None):
            reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
            writer.write(connect)
            assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10) == \
                b"HTTP/1.1 200 Connection established\r\n\r\n"
            context = ssl.create_default_context(cafile=str(cafile))
            context.check_hostname = server_name is not None
            await asyncio.wait_for(writer.start_tls(context, server_hostname=server_name or "127.0.0.1"), 10)
            writer.write(b"GET /innocent.html HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            response = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            assert response.endswith(b"tls origin content at /innocent.html for localhost"), server_name
        # a host with listed pages, asked by name, whose ClientHello names a host listed whole
        answer = await raw_exchange(running.port, f"CONNECT localhost:{origin_port} HTTP/1.1\r\n\r\n".encode()
                                    + client_hello("blocked.example"))
        assert answer.endswith(ACCESS_DENIED_ALERT)
    finally:
        running.stop()
    lines = access_lines(running)
    assert sum(" CONNECT - 451 0 " in line and line.endswith(" blocked list=default") for line in lines) == 3, lines
    assert not any("blocked.example" in line for line in lines)


async def test_tls_listener_refuses_private_destinations_by_default(listed, tmp_path: Path, tls_origin) -> None:
    origin_port, cafile = tls_origin
    running, tls_port = start_tls_proxy(listed, tmp_path, origin_port, allow_private_destinations=False)
    try:
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            await https_get(tls_port, "localhost", cafile)  # localhost is loopback: nothing connected
    finally:
        running.stop()
    assert any(f" TLS localhost:{origin_port} 403 " in line and line.endswith(" refused destination")
               for line in access_lines(running))


def listening_inodes(port: int) -> set[str]:
    """The inodes of the sockets listening on 127.0.0.1:`port` (/proc/net/tcp state 0A)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "0A":
            found.add(fields[9])
    return found


async def test_the_tls_listener_has_workers_too(listed, tmp_path: Path, tls_origin) -> None:
    origin_port, cafile = tls_origin
    running, tls_port = start_tls_proxy(listed, tmp_path, origin_port, workers=2)
    try:
        deadline = time.monotonic() + 20
        while len(children(running.proc.pid)) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        workers = children(running.proc.pid)
        listening = listening_inodes(tls_port)
        # one SO_REUSEPORT socket per worker, each in its worker (and in the parent, which keeps them)
        assert len(workers) == 2 and len(listening) == 2
        assert all(socket_inodes(pid) & listening for pid in workers)
        for _ in range(6):
            assert (await https_get(tls_port, "localhost", cafile)).startswith(b"HTTP/1.1 200")
        with pytest.raises(ssl.SSLError) as denied:
            await https_get(tls_port, "www.blocked.example", cafile)
        assert denied.value.reason == "TLSV1_ALERT_ACCESS_DENIED"
    finally:
        running.stop()
    assert running.proc.returncode == 0 and "Traceback" not in running.stderr.read_text()
