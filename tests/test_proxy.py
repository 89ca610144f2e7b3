"""The filtering proxy as a user runs it: `blocklist-plugin proxy` in a subprocess, curl and aiohttp.

What it must do: listed -> block page (451, list name, appeal link,
never the URL); unlisted -> origin content; bodies stream both ways without
being held in memory; CONNECT tunnels to allowed hosts and refuses hosts listed
whole; clients outside allowed_clients get 403; a new publish is enforced
without a restart; upstream failures give 502/504.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import require_program
from tests.support.net import free_port
from tests.support.plugin import PLUGIN_MAIN
from tests.support.proxy import MB, RunningProxy, raw_exchange, start_proxy

REPO = Path(__file__).resolve().parent.parent


# -- a local "internet"


async def start_echo() -> tuple[asyncio.Server, int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


# -- the proxy as a subprocess


@pytest.fixture
def listed(hotline, plugin, origin):
    """A hotline with a page and a domain entry published and installed in the plugin cache."""
    hotline.run("add", f"http://{origin}/blocked.html", "http://127.0.0.1/other-blocked.html")
    hotline.run("add", "--scope", "domain", "http://evil.test/")
    hotline.run("publish")
    plugin.write_config()
    plugin.install_published()
    return origin


@pytest.fixture
def proxy(listed, plugin, tmp_path) -> RunningProxy:
    running = start_proxy(plugin, tmp_path, upstream_timeout=2, connect_timeout=2)
    yield running
    running.stop()
    assert "Traceback" not in running.stderr.read_text()


async def curl(*args: str) -> tuple[int, bytes]:
    exe = require_program("curl")
    proc = await asyncio.create_subprocess_exec(exe, "-sS", "--max-time", "30", *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return proc.returncode, out


# -- the tests


async def test_curl_blocked_gets_block_page_and_allowed_gets_origin(proxy: RunningProxy, listed: str) -> None:
    _, out = await curl("-x", proxy.url, "-w", "\n%{http_code}", f"http://{listed}/blocked.html")
    body, _, code = out.rpartition(b"\n")
    assert code == b"451"
    text = body.decode()
    assert "blocked" in text.lower() and "<code>default</code>" in text
    assert 'href="https://appeal.example/form?a=1&amp;b=2"' in text
    assert "blocked.html" not in text and listed not in text

    _, out = await curl("-x", proxy.url, "-w", "\n%{http_code}", f"http://{listed}/fine.html?x=1")
    assert out == b"origin content at /fine.html?x=1\n200"

    # The proxy logs a request after it has forwarded the answer: give the line a moment.
    allowed_line = f"http://{listed}/fine.html?x=1"
    deadline = time.monotonic() + 5
    while allowed_line not in (log_text := proxy.access_log.read_text()) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert "blocked list=default" in log_text
    assert "blocked.html" not in log_text  # privacy: no URL of a blocked request
    assert allowed_line in log_text


async def test_block_response_is_identical_for_every_listed_url(proxy: RunningProxy, listed: str) -> None:
    targets = [f"http://{listed}/blocked.html", f"http://{listed}/blocked.html?q=anything",
               "http://127.0.0.1:1/other-blocked.html", "http://evil.test/", "http://www.evil.test/a/b?c"]
    answers = set()
    for target in targets:
        for _ in range(2):
            answer = await raw_exchange(proxy.port, f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            answers.add(answer)
    # The page carries the time to the minute: a minute boundary may split the set in two.
    assert len(answers) <= 2, answers
    answer = answers.pop()
    assert answer.startswith(b"HTTP/1.1 451 Unavailable For Legal Reasons\r\n")
    head = await raw_exchange(proxy.port, f"HEAD {targets[0]} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert head == answer[:answer.index(b"\r\n\r\n") + 4]


async def test_headers_hop_by_hop_removed_via_and_forwarded_for_added(proxy: RunningProxy, listed: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://{listed}/headers", proxy=proxy.url, headers={
                "Connection": "keep-alive, X-Private", "X-Private": "secret", "Keep-Alive": "timeout=5",
                "TE": "trailers", "X-Forwarded-For": "192.0.2.7", "X-Custom": "kept",
                "Proxy-Authorization": "Basic Zm9vOmJhcg=="}) as resp:
            assert resp.status == 200
            assert "blocklist" in resp.headers["Via"]
            seen = {k.lower(): v for k, v in (await resp.json())["headers"]}
    assert seen["x-custom"] == "kept"
    assert seen["x-forwarded-for"] == "192.0.2.7, 127.0.0.1"
    assert seen["via"] == "1.1 blocklist"
    assert seen["host"] == listed
    for hop in ("x-private", "keep-alive", "te", "proxy-authorization", "proxy-connection"):
        assert hop not in seen, hop


async def test_forwarded_for_delete_keeps_subscribers_addresses_from_origins(listed: str, plugin,
                                                                            tmp_path: Path) -> None:
    running = start_proxy(plugin, tmp_path, forwarded_for="delete")
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://{listed}/headers", proxy=running.url,
                                   headers={"X-Forwarded-For": "192.0.2.7"}) as resp:
                seen = {k.lower(): v for k, v in (await resp.json())["headers"]}
    finally:
        running.stop()
    assert "x-forwarded-for" not in seen and seen["via"] == "1.1 blocklist"


async def test_methods_and_status_codes_are_kept(proxy: RunningProxy, listed: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.request("DELETE", f"http://{listed}/headers", proxy=proxy.url) as resp:
            assert (await resp.json())["method"] == "DELETE"
        for code in (404, 418, 500, 503):
            async with session.get(f"http://{listed}/status/{code}", proxy=proxy.url) as resp:
                assert resp.status == code  # the origin's status, not ours
                assert await resp.text() == "status page"
        async with session.head(f"http://{listed}/page", proxy=proxy.url) as resp:
            assert resp.status == 200 and await resp.read() == b""


async def test_large_bodies_stream_both_ways(proxy: RunningProxy, listed: str, tmp_path: Path) -> None:
    size = 50 * MB
    before = proxy.rss_peak_kib()
    _, out = await curl("-x", proxy.url, "-o", "/dev/null", "-w", "%{http_code} %{size_download}",
                        f"http://{listed}/big?n={size}")
    assert out == f"200 {size}".encode()
    _, out = await curl("-x", proxy.url, "-o", "/dev/null", "-w", "%{http_code} %{size_download}",
                        f"http://{listed}/big?n={size}&length=1")
    assert out == f"200 {size}".encode()

    payload = tmp_path / "payload.bin"
    digest = hashlib.sha256()
    with payload.open("wb") as f:
        block = os.urandom(MB)
        for _ in range(size // MB):
            f.write(block)
            digest.update(block)
    _, out = await curl("-x", proxy.url, "--data-binary", f"@{payload}", "-H", "Content-Type: application/x-test",
                        f"http://{listed}/upload")
    assert json.loads(out) == {"bytes": size, "sha256": digest.hexdigest(), "chunked": False}
    _, out = await curl("-x", proxy.url, "-T", str(payload), "-H", "Transfer-Encoding: chunked",
                        "-X", "POST", f"http://{listed}/upload")
    assert json.loads(out)["bytes"] == size and json.loads(out)["sha256"] == digest.hexdigest()

    grown_mib = (proxy.rss_peak_kib() - before) / 1024
    assert grown_mib < 30, f"proxy peak RSS grew by {grown_mib:.0f} MiB while moving 4 x 50 MiB"


async def test_connect_tunnels_to_an_allowed_host(listed: str, plugin, tmp_path: Path) -> None:
    """`localhost` carries no entries (they name 127.0.0.1): its tunnels carry anything, unread."""
    server, port = await start_echo()
    origin_port = int(listed.rsplit(":", 1)[1])
    running = start_proxy(plugin, tmp_path, connect_ports=[port, origin_port])
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
        writer.write(f"CONNECT localhost:{port} HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n".encode())
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == \
            b"HTTP/1.1 200 Connection established\r\n\r\n"
        for message in (b"ping\n", os.urandom(200_000)):
            writer.write(message)
            assert await asyncio.wait_for(reader.readexactly(len(message)), 5) == message
        writer.close()
        # curl --proxytunnel: a real client speaking HTTP through a CONNECT tunnel.
        _, out = await curl("-p", "-x", running.url, f"http://localhost:{origin_port}/tunnelled")
        assert out == b"origin content at /tunnelled"
    finally:
        server.close()
        running.stop()


async def start_recorder() -> tuple[asyncio.Server, int, list[bytes]]:
    """A TCP server that keeps every byte it receives (one entry per connection, at its end)."""
    received: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.read(-1))
        writer.close()

    server = await asyncio.start_server(record, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], received


async def test_connect_carries_no_plain_http_past_page_entries(listed: str, plugin, tmp_path: Path) -> None:
    """The red team's way around a page entry: CONNECT to its host on port 80, then GET inside the tunnel."""
    server, port, received = await start_recorder()
    try:
        running = start_proxy(plugin, tmp_path)  # connect_ports: the default, 443
        try:
            for target in ("127.0.0.1:80", listed, f"localhost:{port}"):
                answer = await raw_exchange(running.port, f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n"
                                            "GET /blocked.html HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                assert answer.startswith(b"HTTP/1.1 403 Forbidden\r\n"), (target, answer[:80])
                assert len(answer) < 1024 and b"origin content" not in answer
                assert b"opens tunnels to a few ports only" in answer
        finally:
            running.stop()
        log_text = running.access_log.read_text()
        assert log_text.count(" CONNECT - 403 0 ") == 3 and "refused port=80" in log_text, log_text
        assert "127.0.0.1:80" not in log_text

        # Even where the port is allowed: 127.0.0.1 carries listed pages, so its tunnels carry TLS only.
        running = start_proxy(plugin, tmp_path, connect_ports=[port, 443])
        try:
            for inside in (b"GET /blocked.html HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
                           b"GET /fine.html HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", b"SSH-2.0-x\r\n"):
                answer = await raw_exchange(running.port, f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n".encode()
                                            + inside)
                established, _, rest = answer.partition(b"\r\n\r\n")
                assert established == b"HTTP/1.1 200 Connection established"
                assert rest.startswith(b"HTTP/1.1 403 Forbidden\r\n"), rest[:80]
                assert b"Only TLS may pass" in rest and len(rest) < 1024
            _, out = await curl("-p", "-x", running.url, "-o", "/dev/null", "-w", "%{http_code}",
                                f"http://127.0.0.1:{port}/blocked.html")
            assert out == b"403"
            deadline = time.monotonic() + 5
            while len(received) < 4 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)  # the proxy closes its side of each refused tunnel
        finally:
            running.stop()
        assert received == [b""] * 4  # connected, and not one byte reached the origin
        log_text = running.access_log.read_text()
        assert log_text.count(f" CONNECT 127.0.0.1:{port} 403 0 ") == 4, log_text
        assert log_text.count("refused not-tls") == 4
    finally:
        server.close()


async def test_connect_to_a_host_listed_whole_is_refused(proxy: RunningProxy) -> None:
    answer = await raw_exchange(proxy.port, b"CONNECT www.evil.test:443 HTTP/1.1\r\nHost: www.evil.test:443\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 451 ")
    assert b"evil" not in answer


async def test_client_outside_allowed_clients_is_refused(listed: str, plugin, tmp_path: Path) -> None:
    running = start_proxy(plugin, tmp_path, allowed_clients=["10.9.9.0/24"])
    try:
        exe = require_program("curl")
        proc = await asyncio.create_subprocess_exec(
            exe, "-s", "-x", running.url, "-o", "/dev/null", "-w", "%{http_code}", f"http://{listed}/fine.html",
            stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate()
        assert out == b"403"
        answer = await raw_exchange(running.port, b"CONNECT 127.0.0.1:1 HTTP/1.1\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 403 ")
    finally:
        running.stop()
    assert "refused" in running.access_log.read_text()


async def test_new_publish_is_enforced_without_restart(proxy: RunningProxy, listed: str, hotline, plugin) -> None:
    _, out = await curl("-x", proxy.url, "-o", "/dev/null", "-w", "%{http_code}", f"http://{listed}/later.html")
    assert out == b"200"
    hotline.run("add", f"http://{listed}/later.html")
    hotline.run("publish")
    plugin.install_published()
    deadline = time.monotonic() + 10
    code = b""
    while time.monotonic() < deadline:
        _, code = await curl("-x", proxy.url, "-o", "/dev/null", "-w", "%{http_code}", f"http://{listed}/later.html")
        if code == b"451":
            break
        await asyncio.sleep(0.2)
    assert code == b"451"
    assert proxy.proc.poll() is None


async def test_upstream_failures_give_502_and_504(proxy: RunningProxy, listed: str, plugin, tmp_path: Path) -> None:
    closed = free_port()
    _, out = await curl("-x", proxy.url, "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{closed}/x")
    assert out == b"502"
    started = time.monotonic()
    _, out = await curl("-x", proxy.url, "-o", "/dev/null", "-w", "%{http_code}", f"http://{listed}/stall?s=3")
    assert out == b"504"
    assert time.monotonic() - started < 5
    answer = await raw_exchange(proxy.port, f"CONNECT localhost:{closed} HTTP/1.1\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 403 ")  # not a port of connect_ports
    (tmp_path / "ports").mkdir()
    running = start_proxy(plugin, tmp_path / "ports", connect_ports=[closed])
    try:
        answer = await raw_exchange(running.port, f"CONNECT localhost:{closed} HTTP/1.1\r\n\r\n".encode())
        assert answer.startswith(b"HTTP/1.1 502 ")
    finally:
        running.stop()


async def test_keep_alive_serves_several_requests(proxy: RunningProxy, listed: str) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        for i in range(3):
            writer.write(f"GET http://{listed}/k{i} HTTP/1.1\r\nHost: {listed}\r\n\r\n".encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200 ")
            length = int(next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:"))
                         .split(b":")[1])
            assert await reader.readexactly(length) == f"origin content at /k{i}".encode()
    finally:
        writer.close()


def test_bad_block_page_template_is_a_config_error(plugin, tmp_path: Path) -> None:
    bad = tmp_path / "bad.html"
    bad.write_text("<p>$list costs 5$</p>")
    plugin.write_config(proxy={"block_page": str(bad)})
    proc = subprocess.run([sys.executable, "-c", PLUGIN_MAIN, "-c", str(plugin.config_path), "proxy"],
                          capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=30)
    assert proc.returncode == 2
    assert b"block_page" in proc.stderr and b"Traceback" not in proc.stderr


def test_custom_template_values_are_html_escaped(tmp_path: Path) -> None:
    from resolver_plugin.config import ProxyConfig
    from resolver_plugin.enforcement.proxy.blockpage import BlockPage

    template = tmp_path / "page.html"
    template.write_text("<h1>$list</h1><a href=\"$appeal_url\">appeal</a> $time $unknown")
    page = BlockPage(ProxyConfig(block_page=str(template), block_status=404,
                                 appeal_url='https://a.example/?x="><script>'))
    body = page.render("<list>", "2024-01-01 00:00 UTC")
    assert body == (b'<h1>&lt;list&gt;</h1><a href="https://a.example/?x=&quot;&gt;&lt;script&gt;">appeal</a> '
                    b"2024-01-01 00:00 UTC $unknown")
    assert page.response("x").startswith(b"HTTP/1.1 404 Not Found\r\n")


async def test_connections_over_the_limit_get_503(listed: str, plugin, tmp_path: Path) -> None:
    running = start_proxy(plugin, tmp_path, max_connections=2)
    held = []
    try:
        for _ in range(2):
            held.append(await asyncio.open_connection("127.0.0.1", running.port))
        await asyncio.sleep(0.2)
        answer = await raw_exchange(running.port, f"GET http://{listed}/x HTTP/1.1\r\n\r\n".encode())
        assert answer.startswith(b"HTTP/1.1 503 ")
        for _, writer in held:
            writer.close()
        await asyncio.sleep(0.3)
        request = f"GET http://{listed}/x HTTP/1.1\r\nConnection: close\r\n\r\n".encode()
        answer = await raw_exchange(running.port, request)
        assert answer.startswith(b"HTTP/1.1 200 ")
    finally:
        running.stop()


def test_destination_policy_refuses_what_is_not_global_unicast() -> None:
    from resolver_plugin.enforcement.proxy.destinations import Destinations, local_addresses

    default = Destinations(False, own=["8.8.4.4"])
    refused = ["127.0.0.1", "127.9.9.9", "::1", "[::1]", "::ffff:127.0.0.1", "169.254.169.254", "10.1.2.3",
               "172.16.0.1", "192.168.1.1", "100.64.0.1", "0.0.0.0", "::", "224.0.0.1", "ff02::1", "fe80::1",
               "fe80::1%eth0", "fc00::1", "fd00::2", "fec0::1", "192.0.2.1", "2001:db8::1", "240.0.0.1",
               "255.255.255.255", "64:ff9b::a00:1", "64:ff9b::7f00:1", "2002:7f00:1::1", "64:ff9b:1::1",
               "8.8.4.4", "localhost", "garbage", ""]
    for address in refused:
        assert not default.allowed(address), address
    for address in ("8.8.8.8", "2606:4700::1111", "64:ff9b::808:808", "::ffff:1.1.1.1", "2002:808:808::1"):
        assert default.allowed(address), address
    assert not default.allowed("::ffff:8.8.4.4")  # the own address, however it is written
    # every local address of this host is refused, whatever its range
    assert all(not default.allowed(a) for a in local_addresses()) and "127.0.0.1" in local_addresses()

    some = Destinations(["127.0.0.0/8", "10.0.0.0/8", "fe80::/10"], own=["8.8.4.4"])
    for address in ("127.0.0.1", "::ffff:127.0.0.2", "10.1.2.3", "fe80::1%eth0", "8.8.8.8"):
        assert some.allowed(address), address
    for address in ("::1", "169.254.169.254", "192.168.1.1", "8.8.4.4"):
        assert not some.allowed(address), address
    everything = Destinations(True, own=["8.8.4.4"])
    assert all(everything.allowed(a) for a in ("127.0.0.1", "::1", "169.254.169.254", "8.8.4.4"))
    # URL hosts: an IP literal is judged at once (aiohttp would not resolve it), a name when resolved
    assert not default.host_allowed("127.0.0.1") and not default.host_allowed("::1")
    assert not default.host_allowed("0177.0.0.1") and default.host_allowed("localhost")
    assert some.host_allowed("10.9.9.9") and everything.host_allowed("127.0.0.1")


def test_the_proxys_own_addresses_are_refused_destinations(plugin) -> None:
    from resolver_plugin.cache import LiveMatcher
    from resolver_plugin.enforcement.proxy.server import ProxyServer

    plugin.write_config(resolver={"proxy_address": "8.8.4.4", "proxy_address6": "2001:4860:4860::8844"},
                        proxy={"listen": "9.9.9.9:3128"})
    server = ProxyServer(plugin.config(), LiveMatcher(plugin.config()))
    for address in ("8.8.4.4", "2001:4860:4860::8844", "9.9.9.9"):
        assert not server.destinations.allowed(address), address
    assert server.destinations.allowed("8.8.8.8")


async def test_private_destinations_refused_by_default(listed: str, plugin, tmp_path: Path) -> None:
    """A subscriber must not reach the proxy host's own services (admin port, metadata, ...), nor the
    ISP's private networks, whether the client is on the proxy's host or not."""
    from resolver_plugin.enforcement.proxy.destinations import local_addresses

    port = int(listed.rsplit(":", 1)[1])
    own = [a for a in local_addresses() if not a.startswith(("127.", "::1", "fe80:"))]
    hosts = ["127.0.0.1", "localhost", "[::1]", "169.254.169.254", "10.1.2.3", "[fe80::1]", "0.0.0.0",
             *(f"[{a}]" if ":" in a else a for a in own)]
    running = start_proxy(plugin, tmp_path, allow_private_destinations=False, connect_ports=[443, port])
    try:
        for host in hosts:
            answer = await raw_exchange(running.port, f"GET http://{host}:{port}/fine.html HTTP/1.1\r\n"
                                                      "Host: x\r\n\r\n".encode())
            assert answer.startswith(b"HTTP/1.1 403 "), (host, answer[:80])
            assert b"does not connect to private, local or internal addresses" in answer
            answer = await raw_exchange(running.port, f"CONNECT {host}:{port} HTTP/1.1\r\n\r\n".encode())
            assert answer.startswith(b"HTTP/1.1 403 "), (host, answer[:80])
        # origin-form, as stage 1 sends it: the Host names loopback
        answer = await raw_exchange(running.port, f"GET /fine.html HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n"
                                    .encode())
        assert answer.startswith(b"HTTP/1.1 403 ")
    finally:
        running.stop()
    log_text = running.access_log.read_text()
    assert log_text.count("refused destination") == 2 * len(hosts) + 1, log_text
    assert "Traceback" not in running.stderr.read_text()

    for allow in (True, ["127.0.0.0/8"]):
        running = start_proxy(plugin, tmp_path, allow_private_destinations=allow)
        try:
            answer = await raw_exchange(running.port, f"GET http://127.0.0.1:{port}/fine.html HTTP/1.1\r\n"
                                                      "Host: x\r\nConnection: close\r\n\r\n".encode())
            assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"origin content at /fine.html")
            if allow is not True:  # only the networks listed: ::1 and 10/8 stay refused (no connection tried)
                for host in ("[::1]", "10.1.2.3"):
                    answer = await raw_exchange(running.port, f"GET http://{host}:{port}/ HTTP/1.1\r\n\r\n"
                                                .encode())
                    assert answer.startswith(b"HTTP/1.1 403 "), host
        finally:
            running.stop()


async def test_origin_form_requests_sent_by_stage_one_are_checked(proxy: RunningProxy, listed: str) -> None:
    """Stage 1 (DNS) answers the proxy's address for hosts with listed pages: browsers then send origin-form."""
    blocked = await raw_exchange(proxy.port, f"GET /blocked.html?x HTTP/1.1\r\nHost: {listed}\r\n\r\n".encode())
    assert blocked.startswith(b"HTTP/1.1 451 ") and b"<code>default</code>" in blocked
    allowed = await raw_exchange(proxy.port, f"GET /fine.html HTTP/1.1\r\nHost: {listed}\r\nConnection: close\r\n\r\n"
                                 .encode())
    assert allowed.startswith(b"HTTP/1.1 200 ") and allowed.endswith(b"origin content at /fine.html")
    for bad_host in ("", "Host: a b\r\n", f"Host: {listed}\r\nHost: {listed}\r\n", "Host: x/y\r\n"):
        answer = await raw_exchange(proxy.port, f"GET /x HTTP/1.1\r\n{bad_host}\r\n".encode())
        assert answer.startswith(b"HTTP/1.1 400 "), bad_host
    # A resolver that points the proxy at itself: the second hop sees our Via and stops the loop.
    loop = await raw_exchange(proxy.port, f"GET /x HTTP/1.1\r\nHost: 127.0.0.1:{proxy.port}\r\n"
                                          "Connection: close\r\n\r\n"
                              .encode())
    assert loop.startswith(b"HTTP/1.1 508 ")


async def test_other_schemes_and_refusals_in_process(listed: str, plugin) -> None:
    """Absolute targets of other schemes are checked as the Squid helper checks them, then refused
    (only http(s) is forwarded); each refusal by port, destination or protocol is counted."""
    import math

    from resolver_plugin.cache import LiveMatcher
    from resolver_plugin.enforcement.proxy.server import ProxyServer
    from resolver_plugin.operations import metrics

    recorder, port, received = await start_recorder()
    plugin.write_config(proxy={"connect_ports": [443, port], "allow_private_destinations": ["127.0.0.0/8"]})
    config = plugin.config()
    server = ProxyServer(config, LiveMatcher(config, check_interval=math.inf))
    await server.start("127.0.0.1", 0)
    before = metrics.snapshot().refused.copy()
    try:
        async def status(request: bytes) -> bytes:
            return (await raw_exchange(server.port, request + b"\r\nHost: x\r\n\r\n"))[9:12]

        assert await status(b"GET ws://www.evil.test/socket HTTP/1.1") == b"451"
        assert await status(b"GET ftp://u@www.evil.test/f.txt HTTP/1.1") == b"451"
        assert await status(f"GET ws://{listed}/blocked.html HTTP/1.1".encode()) == b"451"
        assert await status(f"GET wss://{listed}/fine.html HTTP/1.1".encode()) == b"400"
        assert await status(f"GET ftp://{listed}/blocked.html HTTP/1.1".encode()) == b"400"  # a page: http only
        assert await status(b"CONNECT localhost:80 HTTP/1.1") == b"403"
        assert await status(b"CONNECT 169.254.169.254:443 HTTP/1.1") == b"403"
        assert await status(b"GET http://10.0.0.1/ HTTP/1.1") == b"403"
        answer = await raw_exchange(server.port, f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n"
                                    .encode())
        assert b"\r\n\r\nHTTP/1.1 403 " in answer
    finally:
        await server.close()
        recorder.close()
    after = metrics.snapshot().refused
    counted = {reason: after[("proxy", reason)] - before[("proxy", reason)]
               for reason in ("connect_port", "destination", "not_tls")}
    assert counted == {"connect_port": 1, "destination": 2, "not_tls": 1}
    assert received in ([], [b""])  # the refused tunnel's origin got nothing


async def test_every_resolved_address_is_judged_at_each_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    """A name is judged by what it resolves to each time it is resolved (DNS rebinding), and of a
    name with several addresses only the allowed ones are kept."""
    import socket

    from resolver_plugin.enforcement.proxy.destinations import DestinationRefused, Destinations, PolicyResolver
    from resolver_plugin.enforcement.proxy.forward import UpstreamError, open_tunnel

    answers = {"rebind.test": ["127.0.0.1"], "mixed.test": ["10.0.0.1", "8.8.8.8", "fe80::1"]}
    real = socket.getaddrinfo

    def fake(host, port, *args, **kwargs):  # no name leaves this machine
        if host not in answers:
            return real(host, port, *args, **kwargs)
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (a, port or 0, 0, 0) if ":" in a else (a, port or 0)) for a in answers[host]]

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    policy = Destinations(False)
    resolver = PolicyResolver(policy)
    with pytest.raises(DestinationRefused):
        await resolver.resolve("rebind.test", 80, socket.AF_UNSPEC)
    assert [r["host"] for r in await resolver.resolve("mixed.test", 80, socket.AF_UNSPEC)] == ["8.8.8.8"]
    answers["rebind.test"] = ["8.8.8.8"]
    assert [r["host"] for r in await resolver.resolve("rebind.test", 80, socket.AF_UNSPEC)] == ["8.8.8.8"]
    answers["rebind.test"] = ["127.0.0.1"]
    with pytest.raises(DestinationRefused):
        await resolver.resolve("rebind.test", 80, socket.AF_UNSPEC)
    with pytest.raises(UpstreamError) as caught:  # a tunnel: refused before any connection
        await open_tunnel("rebind.test", 443, 2, policy)
    assert caught.value.status == 403
    await resolver.close()
