"""X-Blocklist-Bundle: the manifest answer that also carries the delta a node needs next.

One request per node per publish instead of two (tools/bench_fleet.py counts them):
serve bundles only when asked, only a GET that brings a new manifest, only the
delta chains from the versions the node reports, within its budget, and never for
a cache to keep; the real sync client takes a publish through one long-poll
answer, checks every bundled file as if it had fetched it, and syncs as before
from any source that does not bundle (the header is absent, the body the manifest).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from typing import Any

import pytest
from aiohttp import web

from blocklist.core.protocol import BUNDLE, BUNDLE_TYPE, HAVE, MAX_BUNDLE_PARTS, format_bundle, parse_bundle
from blocklist.home import Home
from blocklist.serve import Bundles, make_app
from resolver_plugin.cache import Cache
from resolver_plugin.distribution.fetch import HttpFetcher, http_session
from resolver_plugin.distribution.sync import BUNDLE_BYTES, Syncer
from tests.conftest import Hotline, Plugin


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    return float(found[1]) if found else 0.0


def publish(hotline: Hotline, *urls: str) -> None:
    for url in urls:
        hotline.run("add", url)
    hotline.run("publish")


def test_a_bundle_parses_back_and_a_malformed_one_is_refused() -> None:
    parts = [("manifest.json", b'{"m": 1}'), ("lists/default/delta-1-2", b"\x00delta"), ("root/2.json", b"")]
    header, body = format_bundle(parts)
    assert header == "manifest.json=8, lists/default/delta-1-2=6, root/2.json=0"
    assert parse_bundle(header, body) == parts
    assert parse_bundle("manifest.json=3", b"abc") == [("manifest.json", b"abc")]
    bad = [("manifest.json=8, lists/x=6", body[:13]),            # the sizes do not add up to the body
           ("manifest.json=8, lists/x=6", body + b"more"),
           ("lists/x=6, manifest.json=8", body[:14]),            # the manifest is not first
           ("manifest.json=8, manifest.json=0", body[:8]),       # a part twice
           ("manifest.json=8, lists/../../etc/passwd=6", body[:14]),
           ("manifest.json=8, /etc/passwd=6", body[:14]),
           ("manifest.json=8, lists//x=6", body[:14]),
           ("manifest.json=-8", b""), ("manifest.json", b""), ("", b""),
           (", ".join(["manifest.json=0"] + [f"f{i}=0" for i in range(MAX_BUNDLE_PARTS)]), b"")]
    for header, data in bad:
        with pytest.raises(ValueError):
            parse_bundle(header, data)


async def test_serve_bundles_the_delta_chain_only_when_asked(aiohttp_client: Any, hotline: Hotline,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    publish(hotline, "http://bad.example/1.html")
    publish(hotline, "http://bad.example/2.html")
    publish(hotline, "http://bad.example/3.html")
    client = await aiohttp_client(make_app(Home(hotline.home)))
    manifest = (hotline.publish_dir / "manifest.json").read_bytes()
    deltas = [(f"lists/default/delta-{v}-{v + 1}", (hotline.publish_dir / f"lists/default/delta-{v}-{v + 1}")
               .read_bytes()) for v in (1, 2)]

    resp = await client.get("/manifest.json", headers={HAVE: "default=1", BUNDLE: "1048576"})
    assert resp.status == 200 and resp.content_type == BUNDLE_TYPE
    assert parse_bundle(resp.headers[BUNDLE], await resp.read()) == [("manifest.json", manifest), *deltas]
    assert resp.headers["Cache-Control"] == "no-store" and set(resp.headers["Vary"].split(", ")) == {BUNDLE, HAVE}
    plain = await client.get("/manifest.json")
    assert resp.headers["ETag"] == plain.headers["ETag"] and await plain.read() == manifest
    assert BUNDLE not in plain.headers
    two = await client.get("/manifest.json", headers={HAVE: "default=2", BUNDLE: "1048576"})
    assert parse_bundle(two.headers[BUNDLE], await two.read()) == [("manifest.json", manifest), deltas[1]]

    for headers, method in [({HAVE: "default=1"}, "GET"),                     # not asked: an older plugin
                            ({HAVE: "default=1", BUNDLE: "10"}, "GET"),       # over the node's budget
                            ({HAVE: "default=1", BUNDLE: "lots"}, "GET"),
                            ({HAVE: "default=1", BUNDLE: "1048576"}, "HEAD"),
                            ({HAVE: "default=0", BUNDLE: "1048576"}, "GET"),  # no version: no chain
                            ({HAVE: "default=3", BUNDLE: "1048576"}, "GET"),  # up to date
                            ({HAVE: "other=1", BUNDLE: "1048576"}, "GET"),    # a list not published
                            ({BUNDLE: "1048576"}, "GET")]:
        resp = await client.request(method, "/manifest.json", headers=headers)
        assert resp.status == 200 and BUNDLE not in resp.headers, (headers, method)
        assert await resp.read() == (manifest if method == "GET" else b"")
    monkeypatch.setattr(Bundles, "MAX_HEADER", len(two.headers[BUNDLE]))  # room for one delta, not two
    small = await aiohttp_client(make_app(Home(hotline.home)))
    resp = await small.get("/manifest.json", headers={HAVE: "default=1", BUNDLE: "1048576"})
    assert BUNDLE not in resp.headers and await resp.read() == manifest
    resp = await small.get("/manifest.json", headers={HAVE: "default=2", BUNDLE: "1048576"})
    assert resp.headers[BUNDLE] == two.headers[BUNDLE]
    same = await client.get("/manifest.json", headers={HAVE: "default=1", BUNDLE: "1048576",
                                                       "If-None-Match": plain.headers["ETag"]})
    assert same.status == 304 and BUNDLE not in same.headers
    metrics = await (await client.get("/metrics")).text()
    assert metric(metrics, "blocklist_serve_bundles_total") == 2


async def test_a_long_polling_node_takes_a_publish_in_one_request(plugin: Plugin, aiohttp_server: Any) -> None:
    """The real Syncer against serve: the parked poll's answer brings the delta, and no file is fetched."""
    hotline = plugin.hotline
    publish(hotline, "http://bad.example/1.html")
    server = await aiohttp_server(make_app(Home(hotline.home), watch_interval=0.02))
    plugin.write_config(source=f"http://127.0.0.1:{server.port}/", long_poll=30)
    config = plugin.config()
    metrics_url = f"http://127.0.0.1:{server.port}/metrics"
    async with http_session(config) as session:
        async def read_metrics() -> str:
            async with session.get(metrics_url) as resp:
                return await resp.text()

        syncer = Syncer(config, HttpFetcher(session, config))
        assert await syncer.sync_once(30)  # the snapshot: no version to bundle from
        assert await syncer.sync_once(30)  # the manifest unchanged: answered at once, 304
        files = metric(await read_metrics(), 'blocklist_serve_requests_total{path="file",status="200"}')
        poll = asyncio.ensure_future(syncer.sync_once(30))
        deadline = time.monotonic() + 20
        while metric(await read_metrics(), "blocklist_serve_polls_waiting") < 1:
            assert time.monotonic() < deadline and not poll.done()
            await asyncio.sleep(0.02)
        publish(hotline, "http://bad.example/2.html")
        assert await asyncio.wait_for(poll, 20)
        after = await read_metrics()
    assert syncer.filters["default"].version == 2
    assert metric(after, 'blocklist_serve_requests_total{path="file",status="200"}') == files
    assert metric(after, "blocklist_serve_bundles_total") == 1
    assert Cache(config.cache_dir).state("default").deltas == ("delta-1-2",)  # type: ignore[union-attr]
    assert syncer.status.lists["default"].version == 2


async def test_a_bundled_file_is_checked_as_a_fetched_one(plugin: Plugin, aiohttp_server: Any,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """A source that bundles a forged delta (its name and size, other bytes): the node refuses it, says
    so and takes the list's snapshot instead; a bundle whose sizes do not add up is an error, nothing used."""
    hotline = plugin.hotline
    publish(hotline, "http://bad.example/1.html")
    root = hotline.publish_dir
    broken = False

    async def manifest(request: web.Request) -> web.Response:
        data = (root / "manifest.json").read_bytes()
        have = int(request.headers[HAVE].split("=")[1])
        headers = {"ETag": f'"{hashlib.sha256(data).hexdigest()[:32]}"'}
        if have and BUNDLE in request.headers:
            path = f"lists/default/delta-{have}-{have + 1}"
            header, body = format_bundle([("manifest.json", data), (path, bytes((root / path).stat().st_size))])
            headers[BUNDLE] = header.replace("manifest.json=", "manifest.json=1") if broken else header
            return web.Response(body=body, headers=headers)
        return web.Response(body=data, headers=headers)

    async def files(request: web.Request) -> web.FileResponse:
        return web.FileResponse(root / "lists" / request.match_info["tail"])

    app = web.Application()
    app.router.add_get("/manifest.json", manifest)
    app.router.add_get("/lists/{tail:.+}", files)
    server = await aiohttp_server(app)
    plugin.write_config(source=f"http://127.0.0.1:{server.port}/", long_poll=0)
    config = plugin.config()
    caplog.set_level(logging.INFO, "blocklist.plugin.sync")
    async with http_session(config) as session:
        syncer = Syncer(config, HttpFetcher(session, config))
        assert await syncer.sync_once() and syncer.filters["default"].version == 1
        publish(hotline, "http://bad.example/2.html")
        assert await syncer.sync_once()
        assert syncer.filters["default"].version == 2
        assert Cache(config.cache_dir).state("default").snapshot == "snapshot-2"  # type: ignore[union-attr]
        assert re.search(r"sync failed list=default version=2 have=1 file=lists/default/delta-1-2 "
                         r"kind=checksum .*falling back to the snapshot", caplog.text)
        broken = True
        publish(hotline, "http://bad.example/3.html")
        assert not await syncer.sync_once()
        assert syncer.filters["default"].version == 2
        assert "a bundle answer that does not parse" in caplog.text
        assert await syncer.sync_once() and syncer.filters["default"].version == 3  # asks no more: fetches
    assert BUNDLE_BYTES >= 1 << 20
