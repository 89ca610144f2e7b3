"""`blocklist serve`: static semantics, safety, the manifest long-poll and fleet records."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from blocklist.home import Home
from blocklist.nodes import FleetStore
from blocklist.serve import MAX_WAIT, make_app
from tests.conftest import Hotline
from tests.support.nodes import poll_headers


@pytest.fixture
def published(hotline: Hotline) -> Hotline:
    hotline.run("add", "http://bad.example/a.html")
    hotline.run("publish")
    return hotline


async def client_for(aiohttp_client, hotline: Hotline):
    return await aiohttp_client(make_app(Home(hotline.home), watch_interval=0.02))


async def test_manifest_has_a_strong_etag_and_304(aiohttp_client, published: Hotline) -> None:
    client = await client_for(aiohttp_client, published)
    resp = await client.get("/manifest.json")
    body = await resp.read()
    assert resp.status == 200 and body == (published.publish_dir / "manifest.json").read_bytes()
    etag = resp.headers["ETag"]
    assert etag.startswith('"') and not etag.startswith("W/")
    assert resp.headers["Content-Length"] == str(len(body))
    resp = await client.get("/manifest.json", headers={"If-None-Match": etag})
    assert resp.status == 304 and resp.headers["ETag"] == etag
    resp = await client.head("/manifest.json")
    assert resp.status == 200 and resp.headers["ETag"] == etag


async def test_list_files_are_static_without_ranges(aiohttp_client, published: Hotline) -> None:
    client = await client_for(aiohttp_client, published)
    path = "lists/default/snapshot-1"
    data = (published.publish_dir / path).read_bytes()
    resp = await client.get("/" + path, headers={"Range": "bytes=0-9"})
    assert resp.status == 200 and await resp.read() == data
    assert resp.headers["Content-Length"] == str(len(data)) and resp.headers["Accept-Ranges"] == "none"
    etag = resp.headers["ETag"]
    assert (await client.get("/" + path, headers={"If-None-Match": f'"x", {etag}'})).status == 304
    head = await client.head("/" + path)
    assert head.status == 200 and head.headers["Content-Length"] == str(len(data))
    assert (await client.post("/" + path)).status == 405


@pytest.mark.parametrize("path", [
    "/", "/lists", "/lists/", "/lists/default", "/../blocklist.yaml", "/lists/../../store.sqlite",
    "/%2e%2e/blocklist.yaml", "/lists/%2e%2e/%2e%2e/keys/signing.key", "/.hidden", "/lists/default/.tmp",
    "/nope", "/lists/default/snapshot-9",
])
async def test_nothing_outside_published_files_is_served(aiohttp_client, published: Hotline, path: str) -> None:
    (published.publish_dir / ".hidden").write_text("x")
    (published.publish_dir / "lists" / "default" / ".tmp").write_text("x")
    client = await client_for(aiohttp_client, published)
    resp = await client.get(path)
    assert resp.status in (404, 403), (path, resp.status)
    assert b"signing" not in await resp.read()


async def test_symlink_out_of_publish_is_not_followed(aiohttp_client, published: Hotline) -> None:
    (published.publish_dir / "lists" / "evil").symlink_to(published.home / "blocklist.yaml")
    client = await client_for(aiohttp_client, published)
    assert (await client.get("/lists/evil")).status == 404


async def test_nothing_published_is_404(aiohttp_client, hotline: Hotline) -> None:
    client = await client_for(aiohttp_client, hotline)
    assert (await client.get("/manifest.json", headers={"X-Blocklist-Wait": "1"})).status == 404


async def test_long_poll_waits_then_answers_304(aiohttp_client, published: Hotline) -> None:
    client = await client_for(aiohttp_client, published)
    etag = (await client.get("/manifest.json")).headers["ETag"]
    started = time.monotonic()
    resp = await client.get("/manifest.json", headers={"If-None-Match": etag, "X-Blocklist-Wait": "0.4"})
    waited = time.monotonic() - started
    assert resp.status == 304 and 0.35 < waited < 2
    assert resp.headers["X-Blocklist-Wait"] == "0.4"
    capped = await client.get("/manifest.json", headers={"X-Blocklist-Wait": "100000"})
    assert capped.status == 200 and capped.headers["X-Blocklist-Wait"] == f"{MAX_WAIT:g}"


async def test_long_poll_answers_a_publish_at_once(aiohttp_client, published: Hotline) -> None:
    client = await client_for(aiohttp_client, published)
    etag = (await client.get("/manifest.json")).headers["ETag"]
    poll = asyncio.ensure_future(client.get(
        "/manifest.json", headers={"If-None-Match": etag, "X-Blocklist-Wait": "10"}))
    await asyncio.sleep(0.2)
    assert not poll.done()
    published.run("add", "http://bad.example/b.html")
    published.run("publish")
    published_at = time.monotonic()
    resp = await asyncio.wait_for(poll, 5)
    latency = time.monotonic() - published_at
    assert resp.status == 200 and resp.headers["ETag"] != etag
    assert await resp.read() == (published.publish_dir / "manifest.json").read_bytes()
    assert latency < 0.5, latency


async def test_poll_with_a_stale_etag_answers_at_once(aiohttp_client, published: Hotline) -> None:
    client = await client_for(aiohttp_client, published)
    started = time.monotonic()
    resp = await client.get("/manifest.json", headers={"If-None-Match": '"old"', "X-Blocklist-Wait": "10"})
    assert resp.status == 200 and time.monotonic() - started < 1


async def test_polls_are_recorded_for_the_fleet(aiohttp_client, published: Hotline) -> None:
    store = FleetStore(Path(published.home) / "fleet.sqlite")
    token = store.add_node("isp1-proxy-3")
    client = await client_for(aiohttp_client, published)
    first = await client.get("/manifest.json", headers=poll_headers(token, "isp1-proxy-3", "default=1,bad=x"))
    assert first.headers["X-Blocklist-Report"] == "recorded"
    await client.get("/manifest.json", headers=poll_headers(token, "isp1-proxy-3", "default=2"))
    await client.get("/manifest.json", headers={"X-Blocklist-Node": "bad\tnode"})
    await client.get("/manifest.json", headers={"X-Blocklist-Node": "x" * 500})
    await client.get("/lists/default/snapshot-1", headers=poll_headers(token, "isp1-proxy-3", "default=9"))
    nodes = store.nodes()
    assert [(n.node_id, n.versions, n.polls) for n in nodes] == [("isp1-proxy-3", {"default": 2}, 2)]
    assert nodes[0].remote == "127.0.0.1"
    anonymous = await client.get("/manifest.json", headers={"X-Blocklist-Node": "isp1-proxy-3"})
    assert anonymous.status == 200 and anonymous.headers["X-Blocklist-Report"] == "anonymous"
    assert store.nodes()[0].polls == 2


async def test_routes_added_after_make_app_win_and_the_fleet_pages_are_there(aiohttp_client,
                                                                             published: Hotline) -> None:
    from aiohttp import web

    app = make_app(Home(published.home))

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app.router.add_get("/lists/default/hello", hello)
    client = await aiohttp_client(app)
    assert await (await client.get("/lists/default/hello")).text() == "hello"
    assert (await client.get("/fleet.json")).status == 200
    assert (await client.get("/lists/default/snapshot-1")).status == 200


async def test_serve_re_signs_the_manifest_before_it_expires_and_long_polls_see_it(aiohttp_client,
                                                                                   hotline: Hotline) -> None:
    """Published 40 s ago to live 60 s: past half its lifetime, so the refresher re-signs it at once,
    same version, fresh for another 60 s; a waiting long-poll gets the new bytes."""
    import json

    from blocklist.publish import publish
    from blocklist.store import Store
    hotline.run("add", "http://bad.example/a.html")
    home = Home(hotline.home)
    publish(home, Store(home.store_path), "tester", now=int(time.time()) - 40, expires_in=60)
    path = hotline.publish_dir / "manifest.json"
    old = json.loads(path.read_bytes())["signed"]
    client = await aiohttp_client(make_app(home, watch_interval=0.02, refresh_interval=0.05))
    new = old
    for _ in range(200):  # bounded: the first look happens as the app starts
        new = json.loads(path.read_bytes())["signed"]
        if new["created"] != old["created"]:
            break
        await asyncio.sleep(0.05)
    assert new["version"] == old["version"] and new["lists"] == old["lists"]
    assert new["created"] > old["created"] and new["expires"] - new["created"] == 60
    resp = await client.get("/manifest.json")
    assert json.loads(await resp.read())["signed"]["created"] == new["created"]
    assert "refresh" in hotline.run("log", "-n", "1").output
