"""The admin /status page in a real browser: headless Chromium renders the table (screenshot kept)."""

from __future__ import annotations

import asyncio
import html
import re
import socket
import time
from pathlib import Path

from aiohttp import web

from resolver_plugin.cache import Cache
from resolver_plugin.operations.admin import make_admin_app
from resolver_plugin.operations.node_status import write_status
from tests.conftest import Plugin, require_program
from tests.support.status import HOUR, SOURCE, node_status, publish

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


async def chromium(program: str, profile: Path, *args: str) -> str:
    """Run Chromium (without blocking the loop that serves the page); its stdout."""
    proc = await asyncio.create_subprocess_exec(program, *FLAGS, f"--user-data-dir={profile}", *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode()


async def test_status_page_in_headless_chromium(plugin: Plugin, tmp_path: Path) -> None:
    program = require_program("chromium")
    plugin.write_config(source=SOURCE, lists=["default", "other"])
    publish(plugin, "http://bad.example/a.html", "http://bad.example/b.html")
    plugin.install_published()
    now = time.time()
    write_status(Cache(plugin.config().cache_dir).status_file, node_status(
        now, {"network": 12, "signature": 1}, newest_seen=3, newest_seen_at=now - 2 * HOUR,
        last_success=now - 2 * HOUR, last_error="network: cannot connect to " + SOURCE, last_error_at=now - 40))

    runner = web.AppRunner(make_admin_app(plugin.config()), access_log=None)
    await runner.setup()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        page = f"http://127.0.0.1:{port}/status"
        dom = await chromium(program, tmp_path / "profile-dom", "--dump-dom", page)
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "status-page.png"
        shot.unlink(missing_ok=True)
        await chromium(program, tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1200,800",
                       "--hide-scrollbars", page)
    finally:
        await runner.cleanup()

    body = dom[dom.index("<body"):]
    text = re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", body)))
    assert '<table id="lists">' in dom
    assert "BLOCKLIST CRITICAL" in text and "other: no list" in text
    for header in ("LIST", "STATE", "ENFORCED", "NEWEST SEEN", "LAG", "ENTRIES", "LAST SYNC", "LAST ERROR",
                   "EXPIRES"):
        assert f" {header} " in text
    assert re.search(r" default WARNING .* 1 3 2 versions, 2h 2 2h ago network: cannot connect to <url>", text), text
    assert "://" not in dom
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
