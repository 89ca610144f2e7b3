"""nginx (the Debian package) serving a copy of the publish directory is a working source: plain polling."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from resolver_plugin.sync import sync_loop
from tests.conftest import Hotline, Plugin, require_program
from tests.test_sync import URL_A, URL_B, blocked, free_port, state_version, sync_once, wait_for_port

CONFIG = """
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    types {{ application/json json; }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {tmp}/www;
        autoindex off;
        location / {{ try_files $uri =404; }}
    }}
}}
"""


def mirror(publish_dir: Path, www: Path) -> None:
    """Copy the publish tree as `rsync` would for a mirror: list files first, the manifest last."""
    for path in sorted(publish_dir.rglob("*")):
        rel = path.relative_to(publish_dir)
        if path.is_file() and rel.name != "manifest.json" and not rel.name.startswith("."):
            (www / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, www / rel)
    shutil.copy2(publish_dir / "manifest.json", www / ".manifest.json.tmp")
    os.replace(www / ".manifest.json.tmp", www / "manifest.json")


@pytest.fixture
def nginx(tmp_path: Path):
    program = require_program("nginx")
    root = tmp_path / "nginx"
    (root / "www").mkdir(parents=True)
    port = free_port()
    conf = root / "nginx.conf"
    conf.write_text(CONFIG.format(tmp=root, port=port))
    proc = subprocess.Popen([program, "-p", str(root), "-c", str(conf), "-e", str(root / "error.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_port(port, 10)
        yield root, f"http://127.0.0.1:{port}/"
    finally:
        proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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
