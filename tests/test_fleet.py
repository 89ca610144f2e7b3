"""`blocklist fleet` and serve's /fleet pages: which node enforces which version, who lags, who went silent."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from blocklist.cli import main as blocklist_main
from blocklist.core.errors import StoreError
from blocklist.core.severity import Severity
from blocklist.fleet import fleet_report, judge, render_fleet
from blocklist.fleet_web import add_fleet_routes
from blocklist.home import Home
from blocklist.nodes import FleetStore
from tests.conftest import Hotline

NOW = time.time()


def publish_versions(hotline: Hotline, count: int) -> None:
    for i in range(count):
        hotline.run("add", f"http://bad.example/{i}.html")
        hotline.run("publish")


@pytest.fixture
def fleet(hotline: Hotline) -> Hotline:
    """Three versions of "default" published; three nodes: current, two behind, one behind and silent."""
    publish_versions(hotline, 3)
    store = FleetStore(Home(hotline.home).fleet_path)
    for node in ("isp1-proxy-1", "isp2-squid", "isp3-unbound"):
        store.add_node(node, now=NOW - 86400)
    store.record_poll("isp1-proxy-1", {"default": 3}, "192.0.2.1", at=NOW - 20)
    store.record_poll("isp1-proxy-1", {"default": 3}, "192.0.2.1", at=NOW - 5)
    store.record_poll("isp2-squid", {"default": 1}, "198.51.100.7", at=NOW - 12)
    store.record_poll("isp3-unbound", {"default": 2}, "203.0.113.9", at=NOW - 3600)
    store.close()
    return hotline


def test_fleet_report_lists_three_nodes_at_their_versions(fleet: Hotline) -> None:
    report = fleet_report(Home(fleet.home), NOW)
    assert report.published == {"default": 3} and report.manifest_version == 3
    nodes = {n.node_id: n for n in report.nodes}
    assert sorted(nodes) == ["isp1-proxy-1", "isp2-squid", "isp3-unbound"]
    assert nodes["isp1-proxy-1"].versions == {"default": 3} and nodes["isp1-proxy-1"].flags == []
    assert nodes["isp1-proxy-1"].polls == 2
    assert nodes["isp2-squid"].lag == {"default": 2} and nodes["isp2-squid"].flags == ["LAGGING"]
    assert nodes["isp3-unbound"].lag == {"default": 1} and nodes["isp3-unbound"].flags == ["SILENT", "LAGGING"]
    assert report.state is Severity.WARNING

    text = render_fleet(report)
    first, published, _, header, _, *rows = text.splitlines()
    assert first.startswith("FLEET WARNING - ") and "isp2-squid LAGGING (default 2 behind)" in first
    assert "isp3-unbound SILENT 1h" in first
    assert published.startswith("published: default v3 (manifest v3, expires ")
    assert header.split() == ["NODE", "STATE", "LAST", "SEEN", "POLLS", "default"]
    assert rows[0].split() == ["isp1-proxy-1", "OK", "5s", "ago", "2", "3"]
    assert rows[1].split() == ["isp2-squid", "LAGGING", "12s", "ago", "1", "1", "(2", "behind)"]
    assert rows[2].split() == ["isp3-unbound", "SILENT", "LAGGING", "1h", "ago", "1", "2", "(1", "behind)"]


def test_fleet_states() -> None:
    def record(node: str, version: int, age: float) -> Any:
        from blocklist.nodes import NodeRecord
        return NodeRecord(node, NOW - 99999, NOW - age, "", {"default": version}, 1)

    future = NOW + 86400
    assert judge([], {}, 900, NOW).state is Severity.CRITICAL  # nothing published
    ok = judge([record("a", 2, 5), record("b", 2, 50)], {"default": 2}, 900, NOW, 7, future)
    assert (ok.state, ok.summary) == (Severity.OK, "2 nodes, all in sync")
    assert judge([], {"default": 2}, 900, NOW, 7, future).summary == "no node registered (`blocklist node add`)"
    expired = judge([record("a", 2, 5)], {"default": 2}, 900, NOW, 7, NOW - 60)
    assert expired.state is Severity.CRITICAL and "published manifest expired 1m ago" in expired.summary
    all_silent = judge([record("a", 2, 1000), record("b", 2, 2000)], {"default": 2}, 900, NOW, 7, future)
    assert all_silent.state is Severity.CRITICAL and "all 2 reporting nodes silent" in all_silent.summary
    ahead = judge([record("a", 3, 5)], {"default": 2}, 900, NOW, 7, future)  # e.g. a restored hotline
    assert ahead.state is Severity.OK
    many = judge([record(f"n{i}", 1, 5) for i in range(7)], {"default": 2}, 900, NOW, 7, future)
    assert many.summary.endswith("n4 LAGGING (default 1 behind); and 2 more nodes")


def test_remove_is_all_or_nothing(fleet: Hotline) -> None:
    store = FleetStore(Home(fleet.home).fleet_path)
    with pytest.raises(StoreError, match="nothing removed"):
        store.remove_nodes(["isp3-unbound", "no-such-node"])
    assert len(store.nodes()) == 3
    store.remove_nodes(["isp3-unbound"])
    assert [n.node_id for n in store.nodes()] == ["isp1-proxy-1", "isp2-squid"]
    store.close()


def test_fleet_command(fleet: Hotline) -> None:
    if "fleet" not in blocklist_main.commands:
        pytest.skip("blocklist/cli.py has no `fleet` command yet (the lead adds it)")
    result = fleet.run("fleet", ok=None)
    assert result.exit_code == 1 and result.output.startswith("FLEET WARNING - ")
    doc = json.loads(fleet.run("fleet", "--json", ok=None).output)
    assert {n["node_id"]: n["versions"]["default"] for n in doc["nodes"]} == {
        "isp1-proxy-1": 3, "isp2-squid": 1, "isp3-unbound": 2}
    fleet.run("fleet", "--forget", "isp3-unbound", "--forget", "isp2-squid", ok=None)
    assert fleet.run("fleet", ok=None).exit_code == 0
    assert "Example" in fleet.run("fleet", "--help").output


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_serve_pages_and_metrics(fleet: Hotline, aiohttp_client: Any) -> None:
    store = FleetStore(Home(fleet.home).fleet_path)
    store.add_node("<b>evil</b>")
    assert store.record_poll("<b>evil</b>", {"default": 3}, "192.0.2.66")
    app = web.Application()
    add_fleet_routes(app, fleet.home)
    client = await aiohttp_client(app)

    doc = await (await client.get("/fleet.json")).json()
    assert doc["state"] == "WARNING" and doc["published"] == {"default": 3}
    assert {n["node_id"]: n["lag_versions"] for n in doc["nodes"]}["isp2-squid"] == {"default": 2}

    resp = await client.get("/fleet")
    page = await resp.text()
    assert resp.content_type == "text/html" and '<table id="nodes">' in page
    assert "isp2-squid" in page and "1 (2 behind)" in page and "<b>evil</b>" not in page
    assert "&lt;b&gt;evil&lt;/b&gt;" in page

    got = samples(await (await client.get("/metrics")).text())
    assert got[("blocklist_fleet_nodes", ())] == 4
    assert got[("blocklist_fleet_nodes_silent", ())] == 1
    assert got[("blocklist_published_version", (("list", "default"),))] == 3
    for node, version, lag in (("isp1-proxy-1", 3, 0), ("isp2-squid", 1, 2), ("isp3-unbound", 2, 1)):
        labels = (("list", "default"), ("node", node))
        assert got[("blocklist_fleet_node_version", labels)] == version
        assert got[("blocklist_fleet_node_lag_versions", labels)] == lag
    assert got[("blocklist_fleet_node_silent", (("node", "isp3-unbound"),))] == 1
    last_seen = got[("blocklist_fleet_node_last_seen_timestamp_seconds", (("node", "isp2-squid"),))]
    assert last_seen == pytest.approx(NOW - 12)


async def test_fleet_pages_are_for_the_hotline_only(fleet: Hotline, aiohttp_client: Any) -> None:
    app = web.Application()
    add_fleet_routes(app, fleet.home, allowed=["10.0.0.0/8"])
    client = await aiohttp_client(app)
    for path in ("/fleet", "/fleet.json", "/metrics"):
        assert (await client.get(path)).status == 403
