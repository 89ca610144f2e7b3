"""Only registered nodes in the fleet: forged polls change nothing, `blocklist node` issues and revokes tokens.

Every forged poll here is sent over real HTTP to `blocklist serve`'s application
on 127.0.0.1 and must leave `blocklist fleet --json` and the size of
fleet.sqlite exactly as they were, while still being served the manifest.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sqlite3
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from blocklist.core.protocol import HAVE, NODE, PROOF, Proof, make_proof, new_token, report_key
from blocklist.home import Home
from blocklist.nodes import FleetStore
from blocklist.serve import make_app
from resolver_plugin.distribution.sync import sync_once
from tests.conftest import Hotline, Plugin
from tests.support.nodes import poll_headers

FORGED = 2000


def fleet_json(hotline: Hotline) -> dict[str, Any]:
    """`blocklist fleet --json` without the fields that move with the clock alone."""
    doc = json.loads(hotline.run("fleet", "--json", ok=None).output)
    doc.pop("checked_at")
    for node in doc["nodes"]:
        node.pop("last_seen_age")
    return doc


def store_bytes(home: Path) -> int:
    return sum(p.stat().st_size for p in home.glob("fleet.sqlite*"))


@pytest.fixture
def lagging(hotline: Hotline) -> tuple[Hotline, str]:
    """Version 2 published; node isp1 registered and reporting version 1 (LAGGING); its token."""
    for url in ("http://bad.example/1.html", "http://bad.example/2.html"):
        hotline.run("add", url)
        hotline.run("publish")
    token = hotline.run("node", "add", "isp1").stdout.strip()
    hotline.run("node", "add", "isp2-never")
    return hotline, token


def forged_polls(token: str, captured: dict[str, str]) -> list[dict[str, str]]:
    """One of each forgery, cycled: what a client without isp1's valid, fresh, unused proof can send."""
    now = int(time.time() * 1000)
    stranger = new_token()
    cycle: list[dict[str, str]] = [
        {NODE: "isp1", HAVE: "default=2"},                                              # no proof
        {NODE: "isp1", HAVE: "default=2", PROOF: "v1 t=1 n=00 mac=00"},                 # malformed
        {NODE: "isp1", HAVE: "default=2",                                               # a bad MAC
         PROOF: Proof(now, secrets.token_hex(16), secrets.token_hex(32)).header()},
        {**captured, HAVE: "default=2"},                                                # replayed, have changed
        dict(captured),                                                                 # replayed as it was
        poll_headers(token, "isp1", "default=2", now - 400_000),                        # stale
        poll_headers(token, "isp1", "default=2", now + 400_000),                        # from the future
        poll_headers(token, "isp1", "default=2", int(captured[PROOF].split()[1][2:]) - 1),  # older than accepted
        poll_headers(stranger, "isp1", "default=2"),                                    # another token
        poll_headers(token, "isp2-never", "default=2"),                                 # isp1's token, isp2's name
    ]
    polls = []
    for i in range(FORGED):
        headers = dict(cycle[i % len(cycle)])
        if i % len(cycle) == 0:
            headers[NODE] = f"ghost-{i}"  # an invented node, anonymous
        elif i % 7 == 0:
            headers = poll_headers(stranger, f"ghost-{i}", f"default={i}")  # an invented node, proven
        polls.append(headers)
    return polls


async def test_forged_polls_never_change_the_fleet(lagging: tuple[Hotline, str], aiohttp_client: Any) -> None:
    hotline, token = lagging
    client = await aiohttp_client(make_app(Home(hotline.home), watch_interval=0.02))
    genuine = poll_headers(token, "isp1", "default=1")
    answer = await client.get("/manifest.json", headers=genuine)
    assert answer.status == 200 and answer.headers["X-Blocklist-Report"] == "recorded"
    before, size = fleet_json(hotline), store_bytes(hotline.home)
    assert before["state"] == "WARNING" and "isp1 LAGGING (default 1 behind)" in before["summary"]
    assert "isp2-never NEVER REPORTED" in before["summary"]

    outcomes: dict[str, int] = {}
    manifest = (hotline.publish_dir / "manifest.json").read_bytes()
    for headers in forged_polls(token, genuine):
        resp = await client.get("/manifest.json", headers=headers)
        assert resp.status == 200 and await resp.read() == manifest  # served all the same
        outcome = resp.headers["X-Blocklist-Report"]
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert "recorded" not in outcomes and sum(outcomes.values()) == FORGED
    assert set(outcomes) == {"anonymous", "malformed", "refused", "replay", "clock"}

    assert fleet_json(hotline) == before
    assert store_bytes(hotline.home) == size
    assert [n.node_id for n in FleetStore(Home(hotline.home).fleet_path).nodes()] == ["isp1", "isp2-never"]
    assert hotline.run("fleet", ok=None).exit_code == 1
    metrics = await (await client.get("/metrics")).text()
    assert f'blocklist_fleet_polls_total{{outcome="replay"}} {float(outcomes["replay"])}' in metrics
    assert 'blocklist_fleet_polls_total{outcome="recorded"} 1.0' in metrics

    fresh = await client.get("/manifest.json", headers=poll_headers(token, "isp1", "default=2"))
    assert fresh.headers["X-Blocklist-Report"] == "recorded"
    after = fleet_json(hotline)
    assert after["nodes"][0]["versions"] == {"default": 2} and after["nodes"][0]["flags"] == []


async def test_a_proof_is_bound_to_its_node_and_have(lagging: tuple[Hotline, str], aiohttp_client: Any) -> None:
    hotline, token = lagging
    client = await aiohttp_client(make_app(Home(hotline.home)))
    proof = make_proof(report_key(token), "isp1", "default=1", int(time.time() * 1000)).header()
    for node, have in (("isp1", "default=2"), ("isp1", ""), ("isp2-never", "default=1")):
        resp = await client.get("/manifest.json", headers={NODE: node, HAVE: have, PROOF: proof})
        assert resp.headers["X-Blocklist-Report"] == "refused", (node, have)
    resp = await client.get("/manifest.json", headers={NODE: "isp1", HAVE: "default=1", PROOF: proof})
    assert resp.headers["X-Blocklist-Report"] == "recorded"


def test_node_add_prints_only_the_token_and_stores_only_its_hash(hotline: Hotline) -> None:
    result = hotline.run("node", "add", "isp1-proxy-3")
    token = result.stdout.strip()
    assert result.stdout == token + "\n" and token.startswith("blnode1.") and len(token) == 51
    assert "isp1-proxy-3" in result.stderr and token not in result.stderr
    fleet = Home(hotline.home).fleet_path
    assert stat.S_IMODE(fleet.stat().st_mode) == 0o600
    raw = b"".join(p.read_bytes() for p in hotline.home.glob("fleet.sqlite*"))
    assert token.encode() not in raw and token.encode() not in (hotline.home / "store.sqlite").read_bytes()
    with sqlite3.connect(fleet) as db:
        assert db.execute("SELECT report_key FROM nodes").fetchall() == [(report_key(token),)]
    again = hotline.run("node", "add", "isp1-proxy-3", ok=None)
    assert again.exit_code == 3 and "already registered" in again.stderr and again.stdout == ""
    bad = hotline.run("node", "add", " spaced ", ok=None)
    assert bad.exit_code == 3 and "not a node id" in bad.stderr
    audit = json.loads(hotline.run("log", "--json").output)
    assert [(r["action"], r["detail"]) for r in audit if r["action"].startswith("node")] == [
        ("node-add", {"node": "isp1-proxy-3"})]


def test_node_ls_and_remove(hotline: Hotline) -> None:
    for node in ("a-node", "b-node"):
        hotline.run("node", "add", node)
    FleetStore(Home(hotline.home).fleet_path).record_poll("b-node", {"default": 1}, "192.0.2.9")
    listed = json.loads(hotline.run("node", "ls", "--json").output)
    assert [(n["node_id"], n["polls"], n["remote"]) for n in listed] == [("a-node", 0, None),
                                                                        ("b-node", 1, "192.0.2.9")]
    assert listed[0]["last_report"] is None and listed[1]["last_report"] > listed[1]["created"] - 1
    table = hotline.run("node", "ls").output
    assert "never" in table and "2 nodes registered" in table
    missing = hotline.run("node", "remove", "b-node", "no-such-node", ok=None)
    assert missing.exit_code == 3 and "nothing removed" in missing.stderr
    hotline.run("node", "remove", "b-node")
    assert [n["node_id"] for n in json.loads(hotline.run("node", "ls", "--json").output)] == ["a-node"]
    audit = [r["action"] for r in json.loads(hotline.run("log", "--json").output)]
    assert audit.count("node-remove") == 1  # the refused removal left no audit record
    assert "Example" in hotline.run("node", "add", "--help").output


def test_never_reported_nodes_are_shown(hotline: Hotline) -> None:
    hotline.run("add", "http://bad.example/1.html")
    hotline.run("publish")
    empty = hotline.run("fleet", ok=None)
    assert empty.exit_code == 0 and "no node is registered" in empty.output
    hotline.run("node", "add", "isp9")
    result = hotline.run("fleet", ok=None)
    assert result.exit_code == 1 and result.output.startswith("FLEET WARNING - isp9 NEVER REPORTED")
    row = next(line for line in result.output.splitlines() if line.startswith("isp9 "))
    assert row.split()[:5] == ["isp9", "NEVER", "REPORTED", "never", "0"]
    doc = json.loads(hotline.run("fleet", "--json", ok=None).output)
    assert doc["nodes"][0]["flags"] == ["NEVER REPORTED"] and doc["nodes"][0]["last_seen"] is None


def test_an_old_fleet_store_loses_its_unauthenticated_records(hotline: Hotline) -> None:
    path = Home(hotline.home).fleet_path
    with sqlite3.connect(path) as db:  # as `blocklist serve` wrote it before node registration
        db.execute("CREATE TABLE nodes (node_id TEXT PRIMARY KEY, first_seen REAL NOT NULL, last_seen REAL "
                   "NOT NULL, remote TEXT NOT NULL DEFAULT '', versions TEXT NOT NULL DEFAULT '{}', "
                   "polls INTEGER NOT NULL DEFAULT 0)")
        db.execute("INSERT INTO nodes VALUES ('invented', 1, 2, '', '{\"default\": 9}', 5)")
    os.chmod(path, 0o644)
    assert FleetStore(path).nodes() == []
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    hotline.run("node", "add", "isp1")
    assert [n.node_id for n in FleetStore(path).nodes()] == ["isp1"]


async def test_a_registered_node_syncing_shows_up_with_its_versions(plugin: Plugin, aiohttp_server: Any,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """The real Syncer proves its token over HTTP; without one it syncs all the same, anonymously."""
    hotline = plugin.hotline
    hotline.run("add", "http://bad.example/1.html")
    hotline.run("publish")
    server = await aiohttp_server(make_app(Home(hotline.home)))
    plugin.write_config(source=f"http://127.0.0.1:{server.port}/", long_poll=0)
    assert json.loads(hotline.run("fleet", "--json", ok=None).output)["nodes"][0]["flags"] == ["NEVER REPORTED"]
    assert await sync_once(plugin.config()) and await sync_once(plugin.config())
    doc = json.loads(hotline.run("fleet", "--json", ok=None).output)
    assert doc["state"] == "OK" and [(n["node_id"], n["versions"]) for n in doc["nodes"]] == [
        ("test-node", {"default": 1})]

    anonymous = Plugin(hotline, plugin.dir.parent / "anonymous", {"node_id": "isp-anon", "node_token_file": None})
    anonymous.write_config(source=f"http://127.0.0.1:{server.port}/", long_poll=0)
    assert await sync_once(anonymous.config())
    assert [n["node_id"] for n in json.loads(hotline.run("fleet", "--json", ok=None).output)["nodes"]] == [
        "test-node"]

    hotline.run("node", "remove", "test-node")
    caplog.set_level(logging.INFO, "blocklist.plugin.sync")
    assert await sync_once(plugin.config())  # a revoked node still gets the lists
    assert json.loads(hotline.run("fleet", "--json", ok=None).output)["nodes"] == []
    assert "fleet report not recorded node=test-node outcome=refused" in caplog.text
    assert "blnode1." not in caplog.text


async def test_sync_proves_each_poll_afresh(tmp_path: Path) -> None:
    """What the Syncer sends: a proof of this poll's node and have, newer each time, never the token."""
    from blocklist.core.protocol import parse_proof, verify_proof
    from resolver_plugin.distribution.sync import Syncer
    from tests.support.repository import RepositorySimulator

    sim = RepositorySimulator()
    sim.add("http://bad.example/1.html")
    sim.publish()
    token = new_token()
    (tmp_path / "plugin").mkdir()
    (tmp_path / "plugin" / "sim.token").write_text(token)
    (tmp_path / "plugin" / "sim.token").chmod(0o600)
    node = Syncer(sim.plugin_config(tmp_path / "plugin", node_token_file="sim.token"), sim)
    for _ in range(3):
        assert await node.sync_once()
    polls = [r.headers for r in sim.requests if r.path == "manifest.json"]
    proofs = [parse_proof(h[PROOF]) for h in polls]
    assert all(p is not None and verify_proof(report_key(token), p, "sim-node", h[HAVE])
               for p, h in zip(proofs, polls, strict=True))
    assert [h[HAVE] for h in polls] == ["default=0", "default=1", "default=1"]
    millis = [p.millis for p in proofs if p is not None]
    assert millis == sorted(set(millis)) and len({p.nonce for p in proofs if p is not None}) == 3
    assert all(token not in str(dict(h)) for h in polls)
    anonymous = Syncer(sim.plugin_config(tmp_path / "other"), sim)
    assert await anonymous.sync_once() and PROOF not in sim.requests[-2].headers


# ----------------------------------------------------------------------------- TLS

def test_serve_over_tls_with_the_plugin_syncing_through_it(plugin: Plugin, tmp_path: Path) -> None:
    """`blocklist serve --tls-cert --tls-key` as a real process; the plugin trusts it through tls_ca_file."""
    import sys

    from tests.support.net import free_port, wait_for_port
    from tests.support.plugin import blocked, plugin_cli
    from tests.support.processes import launch
    from tests.support.tls import self_signed_cert

    hotline = plugin.hotline
    hotline.run("add", "http://bad.example/tls.html")
    hotline.run("publish")
    cert, key = self_signed_cert(tmp_path, "localhost")
    port = free_port()
    serve = launch([sys.executable, "-m", "blocklist", "--home", str(hotline.home), "serve", "--port", str(port),
                    "--tls-cert", str(cert), "--tls-key", str(key)], tmp_path / "serve.stderr")
    try:
        wait_for_port(port)
        untrusted = Plugin(hotline, tmp_path / "untrusted", {"node_id": "untrusted-node"})
        untrusted.write_config(source=f"https://127.0.0.1:{port}/", long_poll=0)
        assert plugin_cli(untrusted, "sync", "--once").exit_code == 1  # the system CAs do not know it
        plain = Plugin(hotline, tmp_path / "plain", {"node_id": "plain-node"})
        plain.write_config(source=f"http://127.0.0.1:{port}/", long_poll=0)
        assert plugin_cli(plain, "sync", "--once").exit_code == 1  # no plaintext HTTP on a TLS port

        plugin.write_config(source=f"https://127.0.0.1:{port}/", long_poll=0, tls_ca_file=str(cert))
        assert plugin_cli(plugin, "sync", "--once").exit_code == 0
        assert plugin_cli(plugin, "sync", "--once").exit_code == 0  # reports what the first one fetched
        assert blocked(plugin, "http://bad.example/tls.html")
    finally:
        assert serve.stop() == 0
    doc = json.loads(hotline.run("fleet", "--json", ok=None).output)
    nodes = {n["node_id"]: n for n in doc["nodes"]}
    assert nodes["test-node"]["versions"] == {"default": 1} and nodes["test-node"]["flags"] == []
    assert nodes["plain-node"]["flags"] == ["NEVER REPORTED"]
    assert "https://127.0.0.1" in serve.log()


def test_serve_refuses_tls_files_it_cannot_use(hotline: Hotline, tmp_path: Path) -> None:
    from tests.support.tls import self_signed_cert

    cert, key = self_signed_cert(tmp_path, "localhost")
    half = hotline.run("serve", "--tls-cert", str(cert), ok=None)
    assert half.exit_code == 2 and "--tls-cert and --tls-key go together" in half.output
    swapped = hotline.run("serve", "--tls-cert", str(key), "--tls-key", str(cert), ok=None)
    assert swapped.exit_code == 3 and "not a certificate and its key" in swapped.stderr
    missing = hotline.run("serve", "--tls-cert", str(tmp_path / "none.pem"), "--tls-key", str(key), ok=None)
    assert missing.exit_code == 3 and "none.pem" in missing.stderr


async def test_a_node_with_no_version_of_a_list_is_shown_behind(hotline: Hotline, plugin: Plugin,
                                                                aiohttp_client: Any) -> None:
    """A node's first poll reports its configured lists at 0: the fleet shows it LAGGING, not in sync."""
    hotline.run("add", "http://bad.example/1.html")
    hotline.run("publish")
    client = await aiohttp_client(make_app(Home(hotline.home)))
    plugin.write_config(source=str(client.make_url("/")), node_id="fresh-node")  # registered, its token given
    assert await sync_once(plugin.config())
    doc = fleet_json(hotline)
    assert doc["nodes"][0]["versions"] == {"default": 0} and doc["nodes"][0]["flags"] == ["LAGGING"]
    assert "fresh-node LAGGING (default 1 behind)" in doc["summary"]
    row = next(line for line in hotline.run("fleet", ok=None).output.splitlines() if line.startswith("fresh-node "))
    assert row.split()[-3:] == ["none", "(1", "behind)"]
    assert await sync_once(plugin.config())  # the next poll reports what the first one fetched
    assert fleet_json(hotline)["nodes"][0]["versions"] == {"default": 1}
