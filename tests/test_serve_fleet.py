"""`blocklist serve` under a fleet: parked long-polls woken together, fleet reports in batches, small files from memory.

The speed is tools/bench_fleet.py's to measure; these check the behaviour that
makes it: one publish answers every parked poll, a batch of reports records the
genuine polls and never a forged one, and a file kept in memory is never served
once the path names another file.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import aiohttp
import pytest

from blocklist.core.protocol import ReportOutcome, new_token
from blocklist.home import Home
from blocklist.nodes import FleetStore
from blocklist.serve import FILES, make_app
from tests.conftest import Hotline
from tests.support.nodes import poll_headers

PARKED = 200


@pytest.fixture
def published(hotline: Hotline) -> Hotline:
    hotline.run("add", "http://bad.example/a.html")
    hotline.run("publish")
    return hotline


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    assert found is not None, name
    return float(found[1])


async def test_one_publish_wakes_every_parked_poll(aiohttp_client, published: Hotline) -> None:
    client = await aiohttp_client(make_app(Home(published.home), watch_interval=0.02))
    url = client.make_url("/manifest.json")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:  # one connection each
        etag = (await session.get(url)).headers["ETag"]
        polls = [asyncio.ensure_future(session.get(url, headers={"If-None-Match": etag, "X-Blocklist-Wait": "30"}))
                 for _ in range(PARKED)]
        deadline = time.monotonic() + 20
        while metric(await (await client.get("/metrics")).text(), "blocklist_serve_polls_waiting") < PARKED:
            assert time.monotonic() < deadline and not any(p.done() for p in polls)
            await asyncio.sleep(0.05)
        published.run("add", "http://bad.example/b.html")
        published.run("publish")
        answers = await asyncio.wait_for(asyncio.gather(*polls), 15)
        manifest = (published.publish_dir / "manifest.json").read_bytes()
        assert {a.status for a in answers} == {200} and {a.headers["ETag"] for a in answers} != {etag}
        assert all([await a.read() == manifest for a in answers])
    metrics = await (await client.get("/metrics")).text()
    assert metric(metrics, "blocklist_serve_polls_waiting") == 0
    assert metric(metrics, 'blocklist_serve_requests_total{path="manifest",status="200"}') == PARKED + 1


def test_a_batch_records_the_genuine_polls_and_never_a_forged_one(hotline: Hotline) -> None:
    store = FleetStore(Home(hotline.home).fleet_path)
    tokens = {f"isp{i}": store.add_node(f"isp{i}") for i in range(3)}
    now = time.time()
    genuine = {n: poll_headers(t, n, f"default={i + 1}", int(now * 1000)) for i, (n, t) in enumerate(tokens.items())}
    as_poll = lambda h: (h["X-Blocklist-Node"], h["X-Blocklist-Have"], h["X-Blocklist-Proof"], "192.0.2.1")  # noqa: E731
    batch = [
        as_poll(genuine["isp0"]),
        as_poll(genuine["isp0"]),                                                  # the same proof again
        as_poll({**genuine["isp1"], "X-Blocklist-Have": "default=9"}),             # have changed
        as_poll(poll_headers(new_token(), "isp2", "default=9", int(now * 1000))),  # another token
        as_poll(poll_headers(tokens["isp0"], "ghost", "", int(now * 1000))),       # no such node
        as_poll(poll_headers(tokens["isp1"], "isp1", "", int(now * 1000) - 400_000)),  # stale
        ("isp1", "", "v1 t=1 n=00 mac=00", "192.0.2.1"),                           # malformed
        as_poll(genuine["isp2"]),
    ]
    assert store.accept_many(batch, now) == [
        ReportOutcome.RECORDED, ReportOutcome.REPLAY, ReportOutcome.REFUSED, ReportOutcome.REFUSED,
        ReportOutcome.REFUSED, ReportOutcome.CLOCK, ReportOutcome.MALFORMED, ReportOutcome.RECORDED]
    assert [(n.node_id, n.versions, n.polls) for n in store.nodes()] == [
        ("isp0", {"default": 1}, 1), ("isp1", {}, 0), ("isp2", {"default": 3}, 1)]

    size = sum(p.stat().st_size for p in Path(hotline.home).glob("fleet.sqlite*"))
    assert store.accept_many(batch, now).count(ReportOutcome.RECORDED) == 0  # replayed, all of it
    assert sum(p.stat().st_size for p in Path(hotline.home).glob("fleet.sqlite*")) == size
    assert [n.polls for n in store.nodes()] == [1, 0, 1]
    store.close()


async def test_concurrent_polls_through_serve_record_each_genuine_one_once(aiohttp_client,
                                                                           published: Hotline) -> None:
    store = FleetStore(Home(published.home).fleet_path)
    tokens = {f"node{i:02d}": store.add_node(f"node{i:02d}") for i in range(40)}
    client = await aiohttp_client(make_app(Home(published.home), watch_interval=0.02))
    genuine = [poll_headers(t, n, "default=1") for n, t in tokens.items()]
    stranger = new_token()
    forged = [poll_headers(stranger, n, "default=1") for n in tokens] + genuine[:10]  # another token; replays
    answers = await asyncio.gather(*[client.get("/manifest.json", headers=h) for h in genuine + forged])
    outcomes = [a.headers["X-Blocklist-Report"] for a in answers]
    assert {a.status for a in answers} == {200}
    recorded_nodes = sorted(h["X-Blocklist-Node"] for h, o in zip(genuine + forged, outcomes, strict=True)
                            if o == "recorded")
    assert recorded_nodes == sorted(tokens)  # each node once: its genuine poll or its replay, never both
    assert outcomes.count("refused") == len(tokens) and outcomes.count("replay") == 10
    assert [(n.versions, n.polls) for n in store.nodes()] == [({"default": 1}, 1)] * len(tokens)
    metrics = await (await client.get("/metrics")).text()
    assert 1 <= metric(metrics, "blocklist_fleet_report_batches_total") <= len(genuine + forged)
    store.close()


async def test_a_file_kept_in_memory_follows_the_file_on_disk(aiohttp_client, published: Hotline) -> None:
    app = make_app(Home(published.home), watch_interval=0.02)
    client = await aiohttp_client(app)
    path = published.publish_dir / "lists" / "default" / "snapshot-1"
    first = await client.get("/lists/default/snapshot-1")
    assert await first.read() == path.read_bytes()
    again = await client.get("/lists/default/snapshot-1", headers={"If-None-Match": first.headers["ETag"]})
    assert again.status == 304 and app[FILES].hits == 1
    head = await client.head("/lists/default/snapshot-1")
    assert head.status == 200 and head.headers["Content-Length"] == str(path.stat().st_size)

    replacement = path.with_name(".new")
    replacement.write_bytes(b"other bytes")
    replacement.replace(path)  # as publish replaces files: a new inode at the same path
    changed = await client.get("/lists/default/snapshot-1")
    assert await changed.read() == b"other bytes" and changed.headers["ETag"] != first.headers["ETag"]

    path.unlink()
    path.symlink_to(published.home / "blocklist.yaml")  # the path now leads out of publish/
    assert (await client.get("/lists/default/snapshot-1")).status == 404
    path.unlink()
    assert (await client.get("/lists/default/snapshot-1")).status == 404


async def test_a_herd_asking_for_one_new_file_costs_one_read(aiohttp_client, published: Hotline) -> None:
    app = make_app(Home(published.home), watch_interval=0.02)
    client = await aiohttp_client(app)
    data = (published.publish_dir / "lists" / "default" / "snapshot-1").read_bytes()
    answers = await asyncio.gather(*[client.get("/lists/default/snapshot-1") for _ in range(50)])
    assert all([a.status == 200 and await a.read() == data for a in answers])
    assert app[FILES].hits == 49 and not app[FILES].loading


async def test_big_files_are_streamed_and_memory_stays_within_its_cap(aiohttp_client, published: Hotline) -> None:
    published.run("add", "http://bad.example/c.html")
    published.run("publish")  # snapshot-2 and delta-1-2 besides snapshot-1
    app = make_app(Home(published.home), watch_interval=0.02)
    client = await aiohttp_client(app)
    files = app[FILES]
    folder = published.publish_dir / "lists" / "default"
    sizes = {name: (folder / name).stat().st_size for name in ("snapshot-1", "snapshot-2", "delta-1-2")}
    files.MAX_FILE = sizes["delta-1-2"]  # the snapshots are bigger: streamed from disk
    files.MAX_TOTAL = sizes["delta-1-2"]
    for _ in range(2):
        for name in sizes:
            resp = await client.get(f"/lists/default/{name}")
            assert await resp.read() == (folder / name).read_bytes()
    assert files.hits == 1 and files.size == sizes["delta-1-2"]  # only the delta was kept
    (folder / "padding").write_bytes(b"x" * sizes["delta-1-2"])
    assert await (await client.get("/lists/default/padding")).read() == b"x" * sizes["delta-1-2"]
    assert files.size <= files.MAX_TOTAL  # the delta made room for it
    assert await (await client.get("/lists/default/delta-1-2")).read() == (folder / "delta-1-2").read_bytes()
