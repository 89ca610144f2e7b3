"""Real Squid (Debian `squid`) with our helper as external_acl_type and our deny_info page.

Squid is started in the foreground (`squid -N -f conf`) with a config in a temp
dir, in front of a local aiohttp origin on 127.0.0.1. As root, Squid drops to
its `cache_effective_user` (Debian: proxy) and so do its helpers: the temp dir
is world-readable and owned by that user, and the helper runs an interpreter
that user can execute (see `helper_command`).
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import require_program
from tests.support.net import free_port
from tests.support.plugin import plugin_cli
from tests.support.processes import terminate

REPO = Path(__file__).resolve().parent.parent
TEMPLATES = REPO / "resolver_plugin" / "templates"
SQUID_TEMPLATES = Path("/usr/share/squid/errors/templates")
SQUID_USER = "proxy"


def _others_can_run(path: Path) -> bool:
    """Whether a user other than the owner can execute `path` (every parent searchable)."""
    path = path.resolve()
    if not path.stat().st_mode & stat.S_IXOTH:
        return False
    return all(p.stat().st_mode & stat.S_IXOTH for p in path.parents)


def helper_command(shared: Path, config: Path) -> Path:
    """A wrapper script Squid runs as its helper: our CLI, runnable by Squid's user."""
    python = Path(sys.executable)
    if os.geteuid() == 0 and not _others_can_run(python):
        # e.g. a pyenv interpreter under /root (mode 0700): use the system Python of the same version,
        # with this environment's site-packages on PYTHONPATH.
        python = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
        if not python.exists():
            pytest.skip(f"no Python {sys.version_info[:2]} that Squid's user {SQUID_USER} can execute")
    paths = [str(REPO), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    script = shared / "blocklist-squid-helper"
    script.write_text("#!/bin/sh\n"
                      f"PYTHONPATH='{':'.join(dict.fromkeys(paths))}' exec '{python}' -c "
                      f"'from resolver_plugin.cli import main; main()' -c '{config}' squid-helper\n")
    script.chmod(0o755)
    return script


SQUID_CONF = """\
http_port 127.0.0.1:{port}
pid_filename {dir}/squid.pid
cache_log {dir}/cache.log
cache_store_log none
coredump_dir {dir}
cache deny all
cache_mem 4 MB
error_directory {dir}/errors
visible_hostname blocklist-test
shutdown_lifetime 0 seconds

# blocklist: ask our helper about every request; OK means listed.
# ttl=0/negative_ttl=0 so the test sees a new publish at once (Squid still
# reuses an answer within the same second).
external_acl_type blocklist ttl=0 negative_ttl=0 children-max=2 children-startup=1 concurrency=20 %URI {helper}
acl blocklisted external blocklist
deny_info 451:ERR_BLOCKLIST blocklisted
# Privacy: requests the helper answered OK carry its log= note; log them without their URL.
acl blocklist_answered note log
logformat blocklist_private %ts.%03tu %6tr %>a %Ss/%03>Hs %<st %rm - %ea
access_log stdio:{dir}/access.log squid !blocklist_answered
access_log stdio:{dir}/blocked.log blocklist_private blocklist_answered

# Squid 5 forwards no protocol upgrade unless told: WebSockets, as an ISP that allows them.
# The name is case-sensitive: clients send "Upgrade: websocket" (RFC 6455).
http_upgrade_request_protocols websocket allow all

acl test_clients src 127.0.0.1/32
http_access deny blocklisted
http_access allow test_clients
http_access deny all
"""


class Squid:
    def __init__(self, directory: Path, port: int) -> None:
        self.dir, self.port = directory, port
        self.service = f"blocklisttest{port}"
        self.proc: subprocess.Popen | None = None

    def start(self, exe: str) -> None:
        # -n: our own service name, so shared-memory segments never collide with another Squid.
        self.proc = subprocess.Popen([exe, "-N", "-n", self.service, "-f", str(self.dir / "squid.conf")],
                                     stdin=subprocess.DEVNULL, stdout=(self.dir / "squid.out").open("wb"),
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"squid exited with {self.proc.returncode}:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        pytest.fail(f"squid did not listen within 30 s:\n{self.log()}")

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc, grace=15)

    def log(self) -> str:
        parts = []
        for name in ("squid.out", "cache.log"):
            path = self.dir / name
            if path.exists():
                parts.append(path.read_text(errors="replace")[-4000:])
        return "\n".join(parts)


def share_with_squid(path: Path) -> None:
    """Let Squid's user write its logs in `path` (when we run as root)."""
    if os.geteuid() != 0:
        return
    user = pwd.getpwnam(SQUID_USER)
    os.chown(path, user.pw_uid, user.pw_gid)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    # Not tmp_path: pytest's base temp dir is mode 0700, which Squid's user cannot enter.
    path = Path(tempfile.mkdtemp(prefix="blocklist-squid-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def origin() -> AsyncIterator[str]:
    async def page(request: web.Request) -> web.Response:
        return web.Response(text=f"origin content at {request.path_qs}")

    async def socket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            await ws.send_str(f"echo {message.data}")
        return ws

    app = web.Application()
    app.router.add_get("/socket", socket)
    app.router.add_get("/{tail:.*}", page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"127.0.0.1:{port}"
    await runner.cleanup()


@pytest.fixture
def squid(hotline, plugin, origin, shared_dir) -> Iterator[Squid]:
    exe = require_program("squid")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SQUID_USER)
        except KeyError:
            pytest.skip(f"running as root but Squid's user {SQUID_USER} does not exist")
    hotline.run("add", f"http://{origin}/blocked.html", f"http://{origin}/a%20b.html")
    hotline.run("add", "--scope", "domain", "http://evil.test/")
    hotline.run("publish")
    plugin.write_config(cache_dir=str(shared_dir / "cache"))
    plugin.install_published()
    config = shared_dir / "plugin.yaml"
    shutil.copy(plugin.config_path, config)
    shutil.copy(plugin.dir / "hotline.pub", shared_dir / "hotline.pub")
    errors = shared_dir / "errors"
    shutil.copytree(SQUID_TEMPLATES, errors)
    shutil.copy(TEMPLATES / "ERR_BLOCKLIST", errors / "ERR_BLOCKLIST")
    port = free_port()
    (shared_dir / "squid.conf").write_text(SQUID_CONF.format(
        port=port, dir=shared_dir, helper=helper_command(shared_dir, config)))
    share_with_squid(shared_dir)
    running = Squid(shared_dir, port)
    running.start(exe)
    yield running
    running.stop()
    assert "Traceback" not in running.log()


async def curl(proxy_port: int, url: str) -> tuple[int, str]:
    exe = require_program("curl")
    proc = await asyncio.create_subprocess_exec(
        exe, "-sS", "--max-time", "20", "-x", f"http://127.0.0.1:{proxy_port}", "-w", "\n%{http_code}", url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    body, _, code = out.decode(errors="replace").rpartition("\n")
    return int(code), body


async def test_squid_blocks_listed_and_serves_unlisted(squid: Squid, origin: str) -> None:
    code, body = await curl(squid.port, f"http://{origin}/blocked.html")
    assert code == 451, body
    assert "Access to this page is blocked" in body and "blocked by list default" in body
    assert "blocked.html" not in body and origin not in body, body

    code, body = await curl(squid.port, f"http://{origin}/blocked.html?any=query")
    assert code == 451
    code, body = await curl(squid.port, f"http://{origin}/a%20b.html")  # Squid escapes the %: we unescape
    assert code == 451
    code, body = await curl(squid.port, "http://www.evil.test/x")  # domain scope: no DNS needed to block
    assert code == 451

    code, body = await curl(squid.port, f"http://{origin}/fine.html")
    assert (code, body) == (200, "origin content at /fine.html")

    deadline, access, blocked = time.monotonic() + 10, "", ""
    while time.monotonic() < deadline and not ("TCP_MISS/200" in access and blocked.count("\n") >= 4):
        await asyncio.sleep(0.2)  # Squid writes its logs lazily
        access = (squid.dir / "access.log").read_text()
        blocked = (squid.dir / "blocked.log").read_text()
    assert f"GET http://{origin}/fine.html" in access and "TCP_MISS/200" in access
    assert "TCP_DENIED/451" not in access
    assert blocked.count("TCP_DENIED/451") == 4 and blocked.count("GET - blocklist:default:v1") == 4, blocked
    assert "blocked.html" not in blocked and "evil" not in blocked


async def test_squid_enforces_a_new_publish_without_restart(squid: Squid, origin: str, hotline, plugin) -> None:
    code, _ = await curl(squid.port, f"http://{origin}/later.html")
    assert code == 200
    pid = squid.proc.pid
    hotline.run("add", f"http://{origin}/later.html")
    hotline.run("publish")
    plugin.install_published()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        code, body = await curl(squid.port, f"http://{origin}/later.html")
        if code == 451:
            break
        await asyncio.sleep(0.3)
    assert code == 451 and "blocked by list default" in body
    assert squid.proc.pid == pid and squid.proc.poll() is None


async def connect_status(proxy_port: int, authority: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
    try:
        writer.write(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        return (await asyncio.wait_for(reader.readline(), 20)).strip()
    finally:
        writer.close()


async def test_squid_connect_checks_the_host(squid: Squid, origin: str) -> None:
    # %URI of a CONNECT is "host:port": the helper answers with check_host.
    assert (await connect_status(squid.port, "www.evil.test:443")).startswith(b"HTTP/1.1 451 ")
    assert (await connect_status(squid.port, origin)).startswith(b"HTTP/1.1 200 ")


async def test_squid_deny_page_says_who_blocks(squid: Squid, origin: str, hotline, plugin) -> None:
    """The list's signed metadata reaches Squid's deny page through the helper's message=, escaped."""
    hotline.run("lists", "set", "default", "--title", "Hotline <b>&</b> Co", "--legal-basis", "Act 1978 s.1",
                "--appeal-url", "https://appeal.example/form?a=1&b=2")
    hotline.run("add", f"http://{origin}/titled.html")
    hotline.run("publish")
    plugin.install_published()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        code, body = await curl(squid.port, f"http://{origin}/titled.html")
        if code == 451 and "Act 1978" in body:
            break
        await asyncio.sleep(0.3)
    assert code == 451 and "blocked by list default: Hotline &lt;b&gt;&amp;&lt;/b&gt; Co" in body, body
    assert "legal basis: Act 1978 s.1; appeal: https://appeal.example/form?a=1&amp;b=2" in body
    assert "<b>" not in body and "titled.html" not in body


@pytest.fixture
def squid_with_policy(request: pytest.FixtureRequest, plugin, origin: str) -> Squid:
    """The squid fixture with a local policy: the listed page allowed, an unlisted folder blocked."""
    plugin.extra["local"] = {"allow": [{"url": f"http://{origin}/blocked.html"}],
                             "block": [{"url": f"http://{origin}/order/", "scope": "folder"}]}
    return request.getfixturevalue("squid")


async def test_squid_applies_the_local_policy(squid_with_policy: Squid, origin: str) -> None:
    code, body = await curl(squid_with_policy.port, f"http://{origin}/blocked.html")
    assert (code, body) == (200, "origin content at /blocked.html")
    code, body = await curl(squid_with_policy.port, f"http://{origin}/order/x.html")
    assert code == 451 and "blocked by list local" in body
    code, _ = await curl(squid_with_policy.port, f"http://{origin}/fine.html")
    assert code == 200


async def raw_status(proxy_port: int, request: bytes) -> bytes:
    """The status line Squid answers `request` with."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
    try:
        writer.write(request)
        return (await asyncio.wait_for(reader.readline(), 20)).strip()
    finally:
        writer.close()


UPGRADE = ("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n")


async def test_squid_refuses_a_host_listed_whole_for_every_request_kind(squid: Squid, origin: str) -> None:
    """What Squid sends the helper (%URI) for each kind of request, and that each is refused:
    plain http (the URL), CONNECT (host:port), a WebSocket upgrade (the http:// URL of its
    request) and ftp (the ftp:// URL). A ws:// URL Squid 5 refuses itself (400)."""
    code, _ = await curl(squid.port, "http://www.evil.test/page.html")
    assert code == 451
    assert (await connect_status(squid.port, "www.evil.test:443")).startswith(b"HTTP/1.1 451 ")
    assert (await connect_status(squid.port, "evil.test:80")).startswith(b"HTTP/1.1 451 ")
    upgrade = f"GET http://www.evil.test/socket HTTP/1.1\r\nHost: www.evil.test\r\n{UPGRADE}\r\n".encode()
    assert (await raw_status(squid.port, upgrade)).startswith(b"HTTP/1.1 451 ")
    code, body = await curl(squid.port, "ftp://www.evil.test/pub/file.txt")
    assert code == 451 and "blocked by list default" in body
    code, _ = await curl(squid.port, "ftp://anonymous:x@a.b.evil.test/")
    assert code == 451
    for scheme in ("ws", "wss"):
        request = f"GET {scheme}://www.evil.test/socket HTTP/1.1\r\nHost: www.evil.test\r\n{UPGRADE}\r\n".encode()
        assert (await raw_status(squid.port, request)).startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 451 "))

    deadline, blocked = time.monotonic() + 10, ""
    while time.monotonic() < deadline and blocked.count("TCP_DENIED/451") < 6:
        await asyncio.sleep(0.2)  # Squid writes its logs lazily
        blocked = (squid.dir / "blocked.log").read_text()
    assert blocked.count("TCP_DENIED/451") == 6, blocked
    assert "evil" not in blocked and "file.txt" not in blocked


async def test_squid_websocket_upgrade_is_checked_as_http(squid: Squid, origin: str) -> None:
    """A WebSocket through Squid is its HTTP upgrade request: an unlisted one opens and works."""
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"http://{origin}/socket", proxy=f"http://127.0.0.1:{squid.port}") as ws:
            await ws.send_str("hello")
            assert (await asyncio.wait_for(ws.receive_str(), 20)) == "echo hello"
    request = f"GET http://{origin}/blocked.html HTTP/1.1\r\nHost: {origin}\r\n{UPGRADE}\r\n".encode()
    assert (await raw_status(squid.port, request)).startswith(b"HTTP/1.1 451 ")


async def test_squid_selftest_blocks_the_canary_and_passes_the_control(squid: Squid, plugin) -> None:
    """`selftest --squid`: the canary gets our deny page (X-Squid-Error: ERR_BLOCKLIST), the control
    does not (Squid fails to resolve its .invalid host: passed by the filter); a stopped Squid is CRITICAL."""
    target = f"http://127.0.0.1:{squid.port}"
    result = await asyncio.to_thread(plugin_cli, plugin, "selftest", "--squid", target, "--json")
    doc = json.loads(result.output)
    assert result.exit_code == 0, doc
    canary, control = doc["probes"]
    assert (canary["stage"], canary["list"], canary["version"], canary["target"]) == ("squid", "default", 1, target)
    assert canary["seen"] == "HTTP 451 ERR_BLOCKLIST" and canary["got"] == "blocked"
    assert control["got"] == "passed" and "ERR_BLOCKLIST" not in control["seen"], control

    squid.stop()
    result = await asyncio.to_thread(plugin_cli, plugin, "selftest", "--squid", target, "--json")
    doc = json.loads(result.output)
    assert result.exit_code == 2, doc
    assert {p["got"] for p in doc["probes"]} == {"error"}
    assert doc["summary"].startswith("squid canary of default: expected blocked, unreachable: connection refused")
