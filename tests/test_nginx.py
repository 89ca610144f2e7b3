"""nginx (the Debian package) serving a copy of the publish directory is a working source: plain polling."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from resolver_plugin.distribution.sync import sync_loop
from tests.conftest import Hotline, Plugin, require_program
from tests.support.net import free_port, wait_for_port
from tests.support.plugin import URL_A, URL_B, blocked, state_version, sync_once
from tools.nginx_mirror import mirror, start_nginx, stop_nginx


@pytest.fixture
def nginx(tmp_path: Path):
    root = tmp_path / "nginx"
    port = free_port()
    proc = start_nginx(require_program("nginx"), root, port)
    try:
        wait_for_port(port, 10)
        yield root, f"http://127.0.0.1:{port}/"
    finally:
        stop_nginx(proc)


def test_sync_from_nginx(nginx, hotline: Hotline, plugin: Plugin) -> None:
    root, url = nginx
    hotline.run("add", URL_A)
    hotline.run("publish")
    mirror(hotline.publish_dir, root / "www")
    plugin.write_config(source=url, long_poll=20, poll_interval=1)
    assert sync_once(plugin) == 0 and blocked(plugin, URL_A)

    hotline.run("add", URL_B)
    hotline.run("publish")
    mirror(hotline.publish_dir, root / "www")
    assert sync_once(plugin) == 0 and blocked(plugin, URL_B)
    assert state_version(plugin) == 2

    # The daemon: nginx does not long-poll, so the plugin polls every poll_interval with
    # If-None-Match (nginx answers 304) and picks up the next mirror copy.
    config = plugin.config()

    async def run() -> float:
        stop = asyncio.Event()
        task = asyncio.ensure_future(sync_loop(config, stop))
        await asyncio.sleep(1.5)
        hotline.run("remove", URL_A)
        hotline.run("publish")
        mirror(hotline.publish_dir, root / "www")
        copied = time.monotonic()
        deadline = copied + 5
        while state_version(plugin) != 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        took = time.monotonic() - copied
        stop.set()
        await asyncio.wait_for(task, 5)
        return took

    took = asyncio.run(run())
    assert state_version(plugin) == 3 and not blocked(plugin, URL_A), took
    assert took < 2.5  # within one poll interval (1 s) plus the sync
    log = (root / "access.log").read_text().splitlines()
    manifest_polls = [line for line in log if "GET /manifest.json" in line]
    assert any('" 304 ' in line for line in manifest_polls)
    assert len(manifest_polls) <= 10, "the plugin must not spin on a source that does not long-poll"
    assert not any("X-Blocklist" in line for line in log)
