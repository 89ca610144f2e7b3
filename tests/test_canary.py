"""The canary in every published list and `blocklist-plugin selftest` through the real proxy.

The hotline compiles each list's canary (blocklist.core.canary) into every snapshot and
shows it nowhere as an entry; the plugin proves from the outside, over the network, that
its proxy blocks the canary and passes the control. Squid and Unbound are proved in
tests/test_squid.py and tests/test_unbound.py with the same command.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import blocklist.publish
from blocklist.core.canary import (
    CONTROL_HOST,
    CONTROL_URL,
    canary_host,
    canary_url,
    is_canary_host,
    is_canary_url,
)
from blocklist.core.format.manifest import read_manifest
from resolver_plugin.cache import Cache, LiveMatcher
from resolver_plugin.operations import metrics
from resolver_plugin.operations.admin import make_admin_app
from resolver_plugin.operations.selftest import (
    RR_A,
    DnsSeen,
    HttpSeen,
    dns_query,
    judge_proxy,
    judge_resolver,
    judge_squid,
    parse_answer,
)
from tests.conftest import Hotline, Plugin
from tests.support.net import free_port
from tests.support.plugin import blocked, plugin_cli
from tests.support.proxy import start_proxy

LISTED = "http://bad.example/page.html"

# -- the rule both sides compute ---------------------------------------------------------


@pytest.mark.parametrize("name, url", [
    # printf 'blocklist-canary\0%s' NAME | sha256sum | cut -c1-16
    ("default", "http://l549b3044d899bb8f.blocklist-canary.invalid/canary"),
    ("iwf", "http://ldc4347cd45e7c3d0.blocklist-canary.invalid/canary"),
])
def test_canary_url_is_a_fixed_function_of_the_list_name(name: str, url: str) -> None:
    assert canary_url(name) == url
    assert canary_host(name) == url.split("/")[2]


def test_every_list_name_gives_its_own_valid_label() -> None:
    names = ["default", "DEFAULT", "a.b", "x_y", "z" * 64]
    hosts = {canary_host(n) for n in names}
    assert len(hosts) == len(names)
    assert all(len(h.split(".")[0]) == 17 and h.split(".")[0].isalnum() for h in hosts)
    assert CONTROL_HOST not in hosts


@pytest.mark.parametrize("text, canary", [
    (canary_url("default"), True), (CONTROL_URL, True), ("HTTP://X.Blocklist-Canary.Invalid./a", True),
    ("http://user@blocklist-canary.invalid:80/", True), ("http://blocklist-canary.invalid.example/", False),
    ("http://example.org/blocklist-canary.invalid", False), ("http://notblocklist-canary.invalid/", False),
])
def test_is_canary_url(text: str, canary: bool) -> None:
    assert is_canary_url(text) is canary


def test_is_canary_host() -> None:
    assert is_canary_host(CONTROL_HOST) and is_canary_host(canary_host("x"))
    assert not is_canary_host("invalid") and not is_canary_host("a.example")


# -- the hotline: in every snapshot, shown nowhere ------------------------------------------


def test_the_hotline_refuses_an_entry_in_the_canary_zone(hotline: Hotline) -> None:
    result = hotline.run("add", canary_url("default"), ok=False)
    assert result.exit_code != 0
    assert "reserved for the lists' canaries" in result.output
    result = hotline.run("add", "--scope", "domain", "http://blocklist-canary.invalid/", ok=False)
    assert result.exit_code != 0


def _ls(hotline: Hotline) -> list[dict[str, Any]]:
    return json.loads(hotline.run("ls", "--json").output)


def test_publish_compiles_the_canary_and_shows_it_nowhere(hotline: Hotline, plugin: Plugin) -> None:
    hotline.run("add", LISTED)
    hotline.run("publish")
    plugin.write_config()
    plugin.install_published()
    assert blocked(plugin, canary_url("default"))
    assert blocked(plugin, LISTED)
    assert not blocked(plugin, CONTROL_URL)
    assert not blocked(plugin, canary_url("other"))  # another list's canary is not in this one
    entries = _ls(hotline)
    assert [e["url"] for e in entries] == [LISTED]
    assert "canary" not in hotline.run("ls").output
    manifest = read_manifest((hotline.publish_dir / "manifest.json").read_bytes(), plugin.config().public_keys)
    assert manifest.lists["default"].entries == 1  # entry counts leave the canary out
    assert hotline.run("check", canary_url("default"), ok=None).exit_code == 1  # no store entry is it
    assert "canary" not in hotline.run("log").output


def test_an_empty_list_still_carries_its_canary(hotline: Hotline, plugin: Plugin) -> None:
    hotline.run("add", LISTED)
    hotline.run("remove", LISTED)
    hotline.run("publish")
    plugin.write_config()
    plugin.install_published()
    assert blocked(plugin, canary_url("default"))
    assert _ls(hotline) == []


def test_deltas_dry_run_and_revert_keep_the_canary(hotline: Hotline, plugin: Plugin) -> None:
    hotline.run("add", LISTED)
    hotline.run("publish")
    hotline.run("add", "http://bad.example/two.html")
    preview = json.loads(hotline.run("publish", "--dry-run", "--json").output)
    text = json.dumps(preview)
    assert "canary" not in text and "blocklist-canary" not in text
    hotline.run("publish")  # version 2, by the journal: a delta that leaves the canary alone
    delta = hotline.publish_dir / "lists" / "default" / "delta-1-2"
    assert delta.exists()
    plugin.write_config()
    plugin.install_published()
    assert blocked(plugin, canary_url("default"))
    hotline.run("revert", "default", "--to", "1")
    plugin.install_published()
    assert blocked(plugin, canary_url("default"))
    assert not blocked(plugin, "http://bad.example/two.html")
    assert [e["url"] for e in _ls(hotline)] == [LISTED]
    history = hotline.run("log").output
    assert "blocklist-canary" not in history


def test_a_list_published_before_canaries_gets_one_at_the_next_publish(
        hotline: Hotline, plugin: Plugin, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    hotline.run("add", LISTED)
    with monkeypatch.context() as m:  # the publish of a release before canaries
        m.setattr(blocklist.publish, "with_canary", lambda name, salt, entries, hosts: (entries, hosts))
        hotline.run("publish")
    plugin.write_config()
    plugin.install_published()
    assert not blocked(plugin, canary_url("default"))
    proxy = start_proxy(plugin, tmp_path)
    try:
        code, doc = _selftest(plugin, "--proxy", proxy.url)
    finally:
        proxy.stop()
    assert code == 3, doc  # UNKNOWN, not CRITICAL: the stage passed the control, the list cannot be tested
    assert doc["unknown"] == ["list default v1 has no canary (published before canaries: the next publish adds it)"]
    assert [p["probe"] for p in doc["probes"]] == ["control"]

    preview = hotline.run("publish", "--dry-run").output
    assert "would publish version 2" in preview  # the canary alone makes a new version
    hotline.run("publish")
    assert (hotline.publish_dir / "lists" / "default" / "delta-1-2").exists()
    plugin.install_published()
    assert blocked(plugin, canary_url("default"))
    assert [e["url"] for e in _ls(hotline)] == [LISTED]


# -- counted apart ----------------------------------------------------------------------------


def test_canary_hits_are_counted_apart_from_real_blocks(hotline: Hotline, plugin: Plugin) -> None:
    hotline.run("add", LISTED)
    hotline.run("publish")
    plugin.write_config()
    plugin.install_published()
    live = LiveMatcher(plugin.config())
    before = metrics.snapshot().blocks
    metrics.observe_check("test-canary", live.check(canary_url("default")), 0.0)
    metrics.observe_check("test-canary", live.check(LISTED), 0.0)
    metrics.observe_host_check("test-canary", live.check_host(canary_host("default")), 0.0)
    after = metrics.snapshot().blocks
    gained = {k: after[k] - before.get(k, 0) for k in after if k[0] == "test-canary" and after[k] != before.get(k, 0)}
    assert gained == {("test-canary", "default", "canary"): 2, ("test-canary", "default", "block"): 1}


def test_the_squid_helper_counts_canary_hits_apart(hotline: Hotline, plugin: Plugin) -> None:
    from resolver_plugin.enforcement.squid_helper import COMPONENT, SquidHelper
    hotline.run("add", LISTED)
    hotline.run("publish")
    plugin.write_config()
    plugin.install_published()
    helper = SquidHelper(LiveMatcher(plugin.config()))
    before = metrics.snapshot().blocks
    assert helper.answer(f"0 {canary_url('default')} -".encode()).startswith(b"0 OK ")
    assert helper.answer(f"1 {LISTED} -".encode()).startswith(b"1 OK ")
    assert helper.answer(f"2 {CONTROL_URL} -".encode()) == b"2 ERR"
    helper.flush_metrics(0.001)
    after = metrics.snapshot().blocks
    assert after[(COMPONENT, "default", "canary")] == before.get((COMPONENT, "default", "canary"), 0) + 1
    assert after[(COMPONENT, "default", "block")] == before.get((COMPONENT, "default", "block"), 0) + 1


# -- the DNS wire and the judges --------------------------------------------------------------


def test_dns_answer_parsing() -> None:
    query = dns_query("a.example", RR_A, 0x1234)
    assert query[:2] == b"\x12\x34" and query.endswith(b"\x00\x01\x00\x01")
    answer = (b"\x12\x34\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00" + query[12:]
              + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x1e\x00\x04\x7f\x00\x00\x01")
    assert parse_answer(answer, 0x1234) == DnsSeen("NOERROR", ("127.0.0.1",))
    nx = b"\x12\x34\x81\x83\x00\x01\x00\x00\x00\x00\x00\x00" + query[12:]
    assert parse_answer(nx, 0x1234) == DnsSeen("NXDOMAIN", ())
    with pytest.raises(ValueError):
        parse_answer(answer[:20], 0x1234)
    with pytest.raises(ValueError):
        parse_answer(answer, 0x9999)


def test_the_judges_tell_our_block_from_anything_else() -> None:
    assert judge_proxy(HttpSeen(451, blocked_by=True), 451) == ("blocked", 'HTTP 451 with Link rel="blocked-by"')
    assert judge_proxy(HttpSeen(502), 451) == ("passed", "HTTP 502")
    assert judge_proxy(HttpSeen(error="connection refused"), 451)[0] == "error"
    assert judge_squid(HttpSeen(451, "451:ERR_BLOCKLIST 0")) == ("blocked", "HTTP 451 ERR_BLOCKLIST")
    assert judge_squid(HttpSeen(403, "ERR_ACCESS_DENIED 0"))[0] == "blocked"
    assert judge_squid(HttpSeen(503, "ERR_DNS_FAIL 0")) == ("passed", "HTTP 503 ERR_DNS_FAIL")
    assert judge_resolver(DnsSeen("NOERROR", ("10.0.0.3",)), ["10.0.0.3"])[0] == "blocked"
    assert judge_resolver(DnsSeen("NXDOMAIN"), ["10.0.0.3"]) == ("passed", "NXDOMAIN")
    assert judge_resolver(DnsSeen(error="no answer in time"), ["10.0.0.3"])[0] == "error"


# -- selftest through the real proxy --------------------------------------------------------


@pytest.fixture
def listed(hotline: Hotline, plugin: Plugin) -> Plugin:
    hotline.run("add", LISTED)
    hotline.run("lists", "set", "default", "--appeal-url", "https://appeal.example/form")
    hotline.run("publish")
    plugin.write_config()
    plugin.install_published()
    return plugin


def _selftest(plugin: Plugin, *args: str) -> tuple[int, dict[str, Any]]:
    result = plugin_cli(plugin, "selftest", *args, "--json")
    return result.exit_code, json.loads(result.output)


def test_selftest_is_ok_on_a_healthy_proxy_and_reports_what_it_saw(listed: Plugin, tmp_path: Path) -> None:
    proxy = start_proxy(listed, tmp_path)
    try:
        code, doc = _selftest(listed, "--proxy", proxy.url)
    finally:
        proxy.stop()
    assert code == 0, doc
    assert doc["state"] == "OK" and doc["exit_code"] == 0 and doc["node_id"] == "test-node"
    assert [(p["stage"], p["probe"], p["list"], p["expected"], p["got"]) for p in doc["probes"]] == [
        ("proxy", "canary", "default", "blocked", "blocked"), ("proxy", "control", None, "passed", "passed")]
    canary, control = doc["probes"]
    assert canary["version"] == 1 and canary["url"] == canary_url("default") and canary["target"] == proxy.url
    assert canary["seen"] == 'HTTP 451 with Link rel="blocked-by"'
    assert control["seen"].startswith("HTTP 50")  # the origin does not exist: passed by the filter
    assert "bad.example" not in json.dumps(doc)


def test_selftest_defaults_to_the_proxy_plugin_yaml_configures(listed: Plugin, tmp_path: Path) -> None:
    proxy = start_proxy(listed, tmp_path)  # writes plugin.yaml with a proxy section
    try:
        result = plugin_cli(listed, "selftest")
    finally:
        proxy.stop()
    assert result.exit_code == 0, result.output
    assert result.output.startswith("SELFTEST OK - proxy: canary of default v1 as expected, control passed")


def test_selftest_is_critical_when_the_proxy_is_down(listed: Plugin) -> None:
    code, doc = _selftest(listed, "--proxy", f"http://127.0.0.1:{free_port()}")
    assert code == 2
    assert {p["got"] for p in doc["probes"]} == {"error"}
    assert "unreachable: connection refused" in doc["summary"]


def test_selftest_is_critical_when_the_proxy_does_not_block(listed: Plugin, tmp_path: Path) -> None:
    # The proxy runs with the list monitored (it blocks nothing); this node's plugin.yaml enforces it.
    listed.extra["lists"] = [{"name": "default", "mode": "monitor"}]
    proxy = start_proxy(listed, tmp_path)
    del listed.extra["lists"]
    listed.write_config()
    try:
        code, doc = _selftest(listed, "--proxy", proxy.url)
    finally:
        proxy.stop()
    assert code == 2, doc
    canary = doc["probes"][0]
    assert (canary["expected"], canary["got"], canary["seen"]) == ("blocked", "passed", "HTTP 502")
    assert doc["summary"] == "proxy canary of default: expected blocked, HTTP 502"


def test_selftest_expects_a_monitored_list_to_pass(listed: Plugin, tmp_path: Path) -> None:
    listed.extra["lists"] = [{"name": "default", "mode": "monitor"}]
    proxy = start_proxy(listed, tmp_path)
    try:
        code, doc = _selftest(listed, "--proxy", proxy.url)
    finally:
        proxy.stop()
    assert code == 0, doc
    assert doc["probes"][0]["expected"] == "passed" and doc["probes"][0]["got"] == "passed"
    live = LiveMatcher(listed.config())  # the monitored list's canary is no would-be block either
    assert not live.check(canary_url("default")).blocked and not live.monitor_counts
    assert live.check(LISTED).blocked is False and live.monitor_counts


def test_selftest_is_unknown_without_a_cached_list_or_a_stage(hotline: Hotline, plugin: Plugin) -> None:
    plugin.write_config()
    code, doc = _selftest(plugin)
    assert code == 3
    assert doc["unknown"] == ["list default: no cached version (has `sync` run?)",
                              "no stage to test: give --proxy, --squid or --resolver, or plugin.yaml's selftest"]
    code, doc = _selftest(plugin, "--proxy", f"http://127.0.0.1:{free_port()}")
    assert code == 2  # a stage that cannot be reached outranks what could not be tested
    assert [p["probe"] for p in doc["probes"]] == ["control"]
    hotline.run("publish")
    plugin.install_published()
    code, doc = _selftest(plugin)  # plugin.yaml names no stage
    assert code == 3
    assert doc["summary"].startswith("no stage to test")
    bad = plugin_cli(plugin, "selftest", "--resolver", "nowhere")
    assert bad.exit_code == 3 and "HOST:PORT" in bad.output
    bad = plugin_cli(plugin, "selftest", "--proxy", "ftp://127.0.0.1:21")
    assert bad.exit_code == 3 and "--proxy" in bad.output


async def test_status_and_the_admin_endpoint_show_the_last_result(listed: Plugin, tmp_path: Path,
                                                                  aiohttp_client: Any) -> None:
    client = await aiohttp_client(make_admin_app(listed.config()))
    none_yet = await client.get("/selftest")
    assert none_yet.status == 404
    assert plugin_cli(listed, "status", "--json").output and json.loads(
        plugin_cli(listed, "status", "--json").output)["selftest"] is None

    code, doc = _selftest(listed, "--proxy", f"http://127.0.0.1:{free_port()}")
    assert code == 2
    assert Cache(listed.config().cache_dir).selftest() == doc
    shown = await client.get("/selftest")
    assert shown.status == 200 and await shown.json() == doc
    status = json.loads(plugin_cli(listed, "status", "--json").output)
    assert status["selftest"]["state"] == "CRITICAL" and status["selftest"]["summary"] == doc["summary"]
    assert status["selftest"]["checked_at"] == doc["checked_at"]
    text = plugin_cli(listed, "status").output
    assert "last selftest" in text and "CRITICAL" in text
    scraped = await (await client.get("/metrics")).text()
    assert "blocklist_selftest_state 2.0" in scraped
