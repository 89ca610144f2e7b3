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


def test_nginx_as_a_caching_tier_in_front_of_serve(tmp_path: Path, hotline: Hotline, plugin: Plugin) -> None:
    """What a CDN edge does: nodes poll nginx plainly, nginx revalidates with serve; no node state at the edge."""
    import json
    import sys
    import urllib.error
    import urllib.request

    from tests.support.nodes import enroll, poll_headers
    from tests.support.processes import launch
    from tools.nginx_mirror import start_nginx_cache

    hotline.run("add", URL_A)
    hotline.run("publish")
    token = enroll(hotline.home, "edge-node", tmp_path / "tokens").read_text().strip()
    upstream, port = free_port(), free_port()
    serve = launch([sys.executable, "-m", "blocklist", "--home", str(hotline.home), "serve", "--port", str(upstream)],
                   tmp_path / "serve.stderr")
    nginx = start_nginx_cache(require_program("nginx"), tmp_path / "edge", port, upstream, manifest_valid="1s")
    edge = f"http://127.0.0.1:{port}/"

    def get(path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        try:
            with urllib.request.urlopen(urllib.request.Request(edge + path, headers=headers or {}), timeout=10) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), b""

    try:
        wait_for_port(upstream, 15)
        wait_for_port(port, 10)
        status, headers, body = get("manifest.json", poll_headers(token, "edge-node", "default=1"))
        assert status == 200 and body == (hotline.publish_dir / "manifest.json").read_bytes()
        assert "X-Blocklist-Wait" not in headers and "X-Blocklist-Report" not in headers  # plain polling
        assert get("manifest.json", {"If-None-Match": headers["ETag"]})[0] == 304
        assert get("metrics")[0] == 404 and get("fleet.json")[0] == 404  # the hotline's pages stay home
        snapshot = get("lists/default/snapshot-1")
        assert snapshot[0] == 200 and snapshot[2] == (hotline.publish_dir / "lists/default/snapshot-1").read_bytes()
        assert get("lists/default/snapshot-1")[1]["X-Cache-Status"] == "HIT"

        plugin.write_config(source=edge, long_poll=25, poll_interval=1)
        assert sync_once(plugin) == 0 and blocked(plugin, URL_A)
        hotline.run("add", URL_B)
        hotline.run("publish")
        deadline = time.monotonic() + 10  # the edge keeps the manifest 1 s, then revalidates with serve
        while state_version(plugin) != 2 and time.monotonic() < deadline:
            assert sync_once(plugin) == 0
            time.sleep(0.3)
        assert state_version(plugin) == 2 and blocked(plugin, URL_B)
        # a bundle is per node: the edge does not forward the ask, and answers the cached manifest
        status, headers, body = get("manifest.json", {"X-Blocklist-Have": "default=1", "X-Blocklist-Bundle": "99999"})
        assert status == 200 and "X-Blocklist-Bundle" not in headers and json.loads(body)["signed"]
    finally:
        stop_nginx(nginx)
        assert serve.stop() == 0
    # nginx forwarded no node's headers: serve recorded no one (reports need a direct path to serve)
    doc = json.loads(hotline.run("fleet", "--json", ok=None).output)
    assert "edge-node" in [n["node_id"] for n in doc["nodes"]]
    assert all(n["flags"] == ["NEVER REPORTED"] for n in doc["nodes"]) and doc["nodes"]


def test_a_caching_tier_can_pass_the_node_reports_to_serve(tmp_path: Path, hotline: Hotline) -> None:
    """Polls with a proof bypass the edge's cache (recorded, long-polled); the rest and the files stay cached."""
    import json
    import sys
    import urllib.error
    import urllib.request

    from blocklist.core.protocol import parse_bundle
    from tests.support.nodes import enroll, poll_headers
    from tests.support.processes import launch
    from tools.nginx_mirror import start_nginx_cache

    hotline.run("add", URL_A)
    hotline.run("publish")
    token = enroll(hotline.home, "edge-node", tmp_path / "tokens").read_text().strip()
    upstream, port = free_port(), free_port()
    serve = launch([sys.executable, "-m", "blocklist", "--home", str(hotline.home), "serve", "--port", str(upstream)],
                   tmp_path / "serve.stderr")
    nginx = start_nginx_cache(require_program("nginx"), tmp_path / "edge", port, upstream, reports=True)

    def get(path: str, headers: dict[str, str] | None = None) -> tuple[dict[str, str], bytes]:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/{path}", headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                return {"status": str(r.status), **r.headers}, r.read()
        except urllib.error.HTTPError as exc:
            return {"status": str(exc.code), **exc.headers}, b""

    try:
        wait_for_port(upstream, 15)
        wait_for_port(port, 10)
        manifest = (hotline.publish_dir / "manifest.json").read_bytes()
        reported, body = get("manifest.json", poll_headers(token, "edge-node", "default=1"))
        assert body == manifest and reported["X-Blocklist-Report"] == "recorded" and "X-Blocklist-Wait" in reported
        assert "X-Cache-Status" not in reported
        get("manifest.json")
        anonymous, body = get("manifest.json")
        assert body == manifest and anonymous["X-Cache-Status"] == "HIT" and "X-Blocklist-Wait" not in anonymous
        started = time.monotonic()  # a long-poll through the edge: parked in serve until it times out
        waited, _ = get("manifest.json", {**poll_headers(token, "edge-node", "default=1"),
                                          "If-None-Match": reported["ETag"], "X-Blocklist-Wait": "1"})
        assert waited["status"] == "304" and waited["X-Blocklist-Report"] == "recorded"
        assert time.monotonic() - started >= 0.9
        get("lists/default/snapshot-1")
        assert get("lists/default/snapshot-1")[0]["X-Cache-Status"] == "HIT"
        hotline.run("add", URL_B)
        hotline.run("publish")
        time.sleep(0.1)  # serve sees the new manifest within its watch interval
        delta = (hotline.publish_dir / "lists/default/delta-1-2").read_bytes()
        ask = {"X-Blocklist-Bundle": "99999", "If-None-Match": reported["ETag"]}
        bundled, body = get("manifest.json", {**poll_headers(token, "edge-node", "default=1"), **ask})
        parts = dict(parse_bundle(bundled["X-Blocklist-Bundle"], body))  # a proven poll: serve's answer, whole
        assert parts == {"manifest.json": (hotline.publish_dir / "manifest.json").read_bytes(),
                         "lists/default/delta-1-2": delta}
        anonymous, body = get("manifest.json", {"X-Blocklist-Have": "default=1", "X-Blocklist-Bundle": "99999"})
        assert "X-Blocklist-Bundle" not in anonymous and json.loads(body)["signed"]  # the cache's manifest
    finally:
        stop_nginx(nginx)
        assert serve.stop() == 0
    doc = json.loads(hotline.run("fleet", "--json", ok=None).output)
    assert [(n["node_id"], n["versions"], n["polls"]) for n in doc["nodes"]] == [("edge-node", {"default": 1}, 3)]
