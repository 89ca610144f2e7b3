"""The filtering proxy as a user runs it (`blocklist-plugin proxy` in a subprocess) and a local origin behind it."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from tests.support.net import free_port
from tests.support.plugin import PLUGIN_MAIN, ROOT
from tests.support.processes import terminate

MB = 1024 * 1024


def make_origin() -> web.Application:
    """The origin server: fixed pages, a streamed download, an upload sink, a header echo, a stall."""

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=f"origin content at {request.path_qs}")

    async def big(request: web.Request) -> web.StreamResponse:
        size = int(request.query["n"])
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        if request.query.get("length") == "1":
            resp.content_length = size
        await resp.prepare(request)
        block = bytes(range(256)) * 256
        while size > 0:
            piece = block[:min(size, len(block))]
            await resp.write(piece)
            size -= len(piece)
        await resp.write_eof()
        return resp

    async def upload(request: web.Request) -> web.Response:
        digest, total = hashlib.sha256(), 0
        async for piece in request.content.iter_chunked(65536):
            digest.update(piece)
            total += len(piece)
        return web.json_response({"bytes": total, "sha256": digest.hexdigest(),
                                  "chunked": request.headers.get("Transfer-Encoding") == "chunked"})

    async def headers(request: web.Request) -> web.Response:
        return web.json_response({"headers": [[k, v] for k, v in request.headers.items()],
                                  "method": request.method})

    async def stall(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("s", "5")))
        return web.Response(text="late")

    async def status(request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]), text="status page")

    app = web.Application(client_max_size=1024 * MB)
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/big", big)
    app.router.add_post("/upload", upload)
    app.router.add_route("*", "/headers", headers)
    app.router.add_get("/stall", stall)
    app.router.add_route("*", "/{tail:.*}", page)
    return app


@dataclass
class RunningProxy:
    proc: subprocess.Popen
    port: int
    stderr: Path
    access_log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss_peak_kib(self) -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])

    def stop(self) -> None:
        terminate(self.proc)


# The tests' origins listen on loopback, which the proxy refuses as a destination
# unless its config says otherwise: every proxy a test starts says so.
LOOPBACK_DESTINATIONS = ["127.0.0.0/8", "::1/128"]


def start_proxy(plugin, tmp_path: Path, **proxy: object) -> RunningProxy:
    """`blocklist-plugin proxy` on a free port, allowed to reach the tests' loopback origins
    unless `allow_private_destinations` says otherwise."""
    port = free_port()
    access = tmp_path / "access.log"
    settings = {"listen": f"127.0.0.1:{port}", "access_log": str(access),
                "appeal_url": "https://appeal.example/form?a=1&b=2",
                "allow_private_destinations": LOOPBACK_DESTINATIONS, **proxy}
    plugin.write_config(proxy=settings)
    stderr = tmp_path / "proxy.stderr"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", PLUGIN_MAIN, "-c", str(plugin.config_path), "proxy"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=stderr.open("wb"), env=env, cwd=tmp_path)
    running = RunningProxy(proc, port, stderr, access)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"proxy exited with {proc.returncode}: {stderr.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return running
        except OSError:
            time.sleep(0.05)
    running.stop()
    pytest.fail("proxy did not start listening within 20 s")


async def raw_exchange(port: int, data: bytes, timeout: float = 10) -> bytes:
    """Send `data` to the proxy and read until it closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(-1), timeout)
    finally:
        writer.close()
