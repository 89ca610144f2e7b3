"""The circuit breaker (plugin.yaml `safety:`, resolver_plugin.breaker).

A publish that suddenly blocks most requests trips it within `min_requests` requests of
one enforcing process; the trip is recorded once in the cache and every process of the
node (the proxy, each Squid helper, the Unbound module) goes back to the previous
version, never to nothing; status is CRITICAL naming list and version, /metrics says so;
`breaker reset` and a newer version end it; a kill -9 anywhere leaves a cache that loads.
In process (LiveMatcher, as each stage uses it) and through the real programs: the proxy
and the Squid helper speaking Squid's protocol on a pipe, sharing one cache_dir.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from blocklist.core.digests import Scope
from blocklist.core.errors import ConfigError
from blocklist.core.matcher import HostAction
from resolver_plugin import breaker
from resolver_plugin.breaker import BreakerState, Traffic
from resolver_plugin.cache import Cache, LiveMatcher
from resolver_plugin.config import load_config
from resolver_plugin.distribution.sync import Syncer
from resolver_plugin.operations.admin import make_admin_app
from resolver_plugin.operations.status import gather, render
from tests.conftest import Hotline, Plugin
from tests.support.plugin import plugin_cli
from tests.support.proxy import raw_exchange, start_proxy
from tests.support.repository import RepositorySimulator
from tests.support.squid import Helper
from tests.test_unbound import ORIGIN, PROXY, RESOLVER, dig, internet, start_resolver  # noqa: F401

SAFETY = {"max_block_ratio": 0.5, "min_requests": 20}
PAGE = "http://pages.example/bad.html"   # listed from version 1 on
POPULAR = "popular.example"             # listed whole by the bad version 2


def _versions(hotline: Hotline, plugin: Plugin, safety: object = SAFETY, **extra: object) -> None:
    """default v1 (a page) in the cache, then v2 (that, and popular.example whole) on top of it."""
    hotline.run("add", PAGE)
    hotline.run("publish")
    plugin.write_config(**({"safety": safety} if safety is not None else {}), **extra)
    plugin.install_published()
    hotline.run("add", "--scope", "domain", f"http://{POPULAR}/")
    hotline.run("publish")
    plugin.install_published()


def _traffic(live: LiveMatcher, count: int, blocked_share: float) -> None:
    """`count` requests, the first `blocked_share` of them to the host v2 lists whole."""
    bad = round(count * blocked_share)
    for i in range(count):
        live.check(f"http://www.{POPULAR}/{i}.html" if i < bad else f"http://other.example/{i}.html")


# -- in process -----------------------------------------------------------------------------


def test_a_bad_version_trips_within_min_requests_and_the_previous_one_is_enforced(
        hotline: Hotline, plugin: Plugin, caplog: pytest.LogCaptureFixture) -> None:
    _versions(hotline, plugin)
    live = LiveMatcher(plugin.config(), component="squid")
    assert live.matcher.versions() == {"default": 2} and live.watch is not None and live.watch.armed
    with caplog.at_level(logging.INFO, logger="blocklist.plugin"):
        _traffic(live, 19, 0.8)
        assert breaker.read_trip(Cache(plugin.config().cache_dir).breaker_dir, "default") is None
        assert live.check(f"http://{POPULAR}/last.html").blocked  # the 20th request: it trips
    trip = breaker.read_trip(Cache(plugin.config().cache_dir).breaker_dir, "default")
    assert trip is not None and trip.holds(2) and trip.fallback == 1
    assert (trip.requests, trip.blocks) == (20, 16) and trip.by.startswith("squid pid ")
    assert not live.check(f"http://{POPULAR}/").blocked         # the next request: v1 again
    assert live.matcher.versions() == {"default": 1}
    assert live.check(PAGE).blocked                               # never to nothing
    assert "breaker_tripped" in {getattr(r, "event", None) for r in caplog.records}
    assert "popular" not in caplog.text                           # no URL, no host in the logs
    audit = (Cache(plugin.config().cache_dir).breaker_dir / "audit.jsonl").read_text().splitlines()
    assert [json.loads(line)["event"] for line in audit] == ["breaker_tripped"]
    files = [p for p in Cache(plugin.config().cache_dir).breaker_dir.iterdir() if p.is_file()]
    assert files and all("popular" not in p.read_text() and "pages.example" not in p.read_text() for p in files)


def test_the_squid_helpers_batches_are_all_judged_while_a_version_is_watched(hotline: Hotline,
                                                                             plugin: Plugin) -> None:
    """The helper answers a remembered allowed authority without a check, but not while the breaker
    watches a version: every line counts, allowed ones too, so the ratio is the traffic's."""
    from resolver_plugin.enforcement.squid_helper import SquidHelper

    _versions(hotline, plugin)
    live = LiveMatcher(plugin.config(), component="squid")
    assert not live.matcher.check("http://other.example/").blocked  # remembered as allowed
    assert live.remembered() is None
    helper = SquidHelper(live)
    helper.start_batch()
    for i in range(15):  # 15 allowed lines of one authority, then 5 blocked: 25% is under the ratio
        assert helper.answer(b"http://other.example/%d.html -" % i) == b"ERR"
    for i in range(5):
        assert helper.answer(b"http://www.%s/%d.html -" % (POPULAR.encode(), i)).startswith(b"OK ")
    assert live.watch is not None and not live.watch.armed  # judged after 20 requests, and passed
    assert breaker.read_trip(Cache(plugin.config().cache_dir).breaker_dir, "default") is None
    helper.start_batch()
    assert live.remembered() is not None  # judged: the helper answers from the memory again


def test_every_process_of_the_node_follows_the_trip_unbound_too(hotline: Hotline, plugin: Plugin) -> None:
    _versions(hotline, plugin, resolver={"proxy_address": "192.0.2.80"}, safety=SAFETY)
    proxy = LiveMatcher(plugin.config(), check_interval=float("inf"), component="proxy")
    unbound = LiveMatcher(plugin.config(), check_interval=float("inf"), component="unbound")
    assert unbound.watch is None  # stage 1 counts no queries (docs/OPERATIONS.md)
    assert unbound.check_host(POPULAR).action is HostAction.BLOCK
    _traffic(proxy, 20, 0.9)
    assert proxy.matcher.versions() == {"default": 2}  # the proxy's reload loop picks it up
    assert proxy.maybe_reload() and unbound.maybe_reload()
    assert proxy.matcher.versions() == unbound.matcher.versions() == {"default": 1}
    assert unbound.check_host(POPULAR).action is HostAction.PASS
    assert unbound.check_host("pages.example").action is HostAction.PROXY


def test_a_version_under_the_ratio_passes_and_is_not_judged_again(hotline: Hotline, plugin: Plugin) -> None:
    _versions(hotline, plugin)
    live = LiveMatcher(plugin.config(), component="proxy")
    _traffic(live, 20, 0.5)  # 50% is not more than 50%
    assert live.watch is not None and not live.watch.armed
    _traffic(live, 40, 1.0)
    assert breaker.read_trip(Cache(plugin.config().cache_dir).breaker_dir, "default") is None
    assert live.matcher.versions() == {"default": 2}


def test_no_previous_version_no_breaker(hotline: Hotline, plugin: Plugin) -> None:
    hotline.run("add", "--scope", "domain", f"http://{POPULAR}/")
    hotline.run("publish")
    plugin.write_config(safety=SAFETY)
    plugin.install_published()
    live = LiveMatcher(plugin.config(), component="squid")
    _traffic(live, 40, 1.0)
    assert live.watch is not None and not live.watch.armed
    assert live.check(f"http://{POPULAR}/").blocked


@pytest.mark.parametrize("extra", [{"safety": None}, {"safety": {**SAFETY, "enabled": False}},
                                   {"lists": ["default", {"name": "trial", "mode": "monitor"}]}],
                         ids=["no safety section", "enabled false", "monitored list"])
def test_off_without_safety_and_for_monitored_lists(hotline: Hotline, plugin: Plugin, extra: dict) -> None:
    if "lists" in extra:  # the bad version is a monitored list's
        hotline.run("add", "http://x.example/", "--list", "trial", "--create-list")
        hotline.run("publish")
        plugin.write_config(safety=SAFETY, **extra)
        plugin.install_published()
        hotline.run("add", "--scope", "domain", f"http://{POPULAR}/", "--list", "trial")
        hotline.run("publish")
        plugin.install_published()
    else:
        _versions(hotline, plugin, **extra)
    live = LiveMatcher(plugin.config(), component="squid")
    for i in range(40):
        live.check(f"http://{POPULAR}/{i}")
    assert not (Cache(plugin.config().cache_dir).breaker_dir / "default.json").exists()
    assert not (Cache(plugin.config().cache_dir).breaker_dir / "trial.json").exists()


def test_status_metric_reset_and_a_newer_version(hotline: Hotline, plugin: Plugin) -> None:
    _versions(hotline, plugin)
    live = LiveMatcher(plugin.config(), component="squid")
    _traffic(live, 20, 1.0)
    report = gather(plugin.config())
    assert report.state.name == "CRITICAL" and report.lists[0].enforced == 1 and report.lists[0].breaker_open
    assert "default: circuit breaker open: v2 blocked 20 of 20 requests" in report.summary
    assert "enforcing v1" in render(report)
    result = plugin_cli(plugin, "status", "--json")
    assert result.exit_code == 2
    doc = json.loads(result.output)["lists"][0]
    assert doc["breaker"]["open"] and doc["breaker"]["version"] == 2 and doc["enforced"] == 1

    result = plugin_cli(plugin, "breaker", "reset", "default", "--json")
    assert result.exit_code == 0, result.output
    done = json.loads(result.output)
    assert done["reset"] and done["state"] == "reset" and done["reset_by"] and done["reset_at"]
    assert plugin_cli(plugin, "breaker", "reset", "default").exit_code == 1  # not open any more
    assert plugin_cli(plugin, "breaker", "reset", "nosuch").exit_code == 2
    assert live.check(f"http://{POPULAR}/").blocked and live.matcher.versions() == {"default": 2}
    _traffic(live, 40, 1.0)  # judged once: not again after a reset
    after = gather(plugin.config())  # WARNING at most: this node has no sync status
    assert after.state.name == "WARNING" and not after.lists[0].breaker_open and after.lists[0].enforced == 2
    audit = (Cache(plugin.config().cache_dir).breaker_dir / "audit.jsonl").read_text().splitlines()
    assert [json.loads(line)["event"] for line in audit] == ["breaker_tripped", "breaker_reset"]
    assert json.loads(audit[1])["who"] == done["reset_by"]

    hotline.run("add", "http://pages.example/v3.html")
    hotline.run("publish")
    plugin.install_published()  # v3: the record about v2 goes
    assert not (Cache(plugin.config().cache_dir).breaker_dir / "default.json").exists()
    live.maybe_reload()
    assert live.check("http://pages.example/v3.html").blocked and live.matcher.versions() == {"default": 3}
    assert live.watch is not None and live.watch.armed  # v3 is judged: it has v2 to fall back to


def test_a_newer_version_clears_an_open_breaker(hotline: Hotline, plugin: Plugin) -> None:
    _versions(hotline, plugin)
    live = LiveMatcher(plugin.config(), component="squid")
    _traffic(live, 20, 1.0)
    assert not live.check(f"http://{POPULAR}/").blocked
    hotline.run("remove", f"http://{POPULAR}/")
    hotline.run("publish")
    plugin.install_published()
    live.maybe_reload()
    assert live.check(PAGE).blocked and live.matcher.versions() == {"default": 3}
    assert gather(plugin.config()).lists[0].breaker is None
    events = [json.loads(line)["event"]
              for line in (Cache(plugin.config().cache_dir).breaker_dir / "audit.jsonl").read_text().splitlines()]
    assert events == ["breaker_tripped", "breaker_closed"]


async def test_metric_says_the_breaker_is_open(hotline: Hotline, plugin: Plugin, aiohttp_client: Any) -> None:
    _versions(hotline, plugin)
    client = await aiohttp_client(make_admin_app(plugin.config()))
    assert 'blocklist_breaker_open{list="default"} 0.0' in await (await client.get("/metrics")).text()
    _traffic(LiveMatcher(plugin.config(), component="proxy"), 20, 1.0)
    assert 'blocklist_breaker_open{list="default"} 1.0' in await (await client.get("/metrics")).text()


def test_a_damaged_previous_version_leaves_the_newest_in_force(hotline: Hotline, plugin: Plugin,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    _versions(hotline, plugin)
    cache = Cache(plugin.config().cache_dir)
    previous = cache.previous("default")
    assert previous is not None and previous.version == 1
    for name in (previous.snapshot, previous.compiled):  # the signed snapshot and the mapped file
        assert name is not None
        (cache.list_dir("default") / name).write_bytes(b"damaged")
    live = LiveMatcher(plugin.config(), component="squid")
    with caplog.at_level(logging.ERROR, logger="blocklist.plugin.cache"):
        _traffic(live, 21, 1.0)
    assert live.check(f"http://{POPULAR}/").blocked and live.matcher.versions() == {"default": 2}
    assert "breaker_fallback_failed" in {getattr(r, "event", None) for r in caplog.records}


def test_the_cache_keeps_exactly_the_previous_version(hotline: Hotline, plugin: Plugin) -> None:
    _versions(hotline, plugin)
    cache = Cache(plugin.config().cache_dir)
    folder = cache.list_dir("default")
    assert _files(folder) == ["compiled-1", "compiled-2", "previous.json", "snapshot-1", "snapshot-2", "state.json"]
    hotline.run("add", "http://pages.example/v3.html")
    hotline.run("publish")
    plugin.install_published()
    assert _files(folder) == ["compiled-2", "compiled-3", "previous.json", "snapshot-2", "snapshot-3", "state.json"]
    state = cache.state("default")
    assert state is not None
    cache.write_list("default", state, {})  # the same version again (a repair) keeps the previous one
    previous = cache.previous("default")
    assert previous is not None and previous.version == 2


def _files(folder: Path) -> list[str]:
    """The list folder's file names, a compiled file's by its version alone (the rest is a checksum)."""
    return sorted(p.name.rsplit("-", 1)[0] if p.name.startswith("compiled-") else p.name for p in folder.iterdir())


def test_two_processes_tripping_at_once_record_one_trip(tmp_path: Path) -> None:
    first = breaker.Trip("iwf", 8, 7, BreakerState.OPEN, 1.0, "squid pid 1 on n", 20, 19, 0.95, 0.5)
    second = breaker.Trip("iwf", 8, 7, BreakerState.OPEN, 2.0, "proxy pid 2 on n", 20, 18, 0.9, 0.5)
    assert breaker.record_trip(tmp_path, first) == first
    assert breaker.record_trip(tmp_path, second) == first
    assert len((tmp_path / "audit.jsonl").read_text().splitlines()) == 1


def test_kill_9_anywhere_leaves_a_cache_that_loads(hotline: Hotline, plugin: Plugin) -> None:
    """A writer of versions and of breaker records, killed at random points, over and over."""
    _versions(hotline, plugin)
    config = plugin.config()
    cache = Cache(config.cache_dir)
    states = {state.version: (state, (cache.list_dir("default") / state.snapshot).read_bytes())
              for state in (cache.previous("default"), cache.state("default")) if state is not None}
    assert sorted(states) == [1, 2]
    for run in range(8):
        pid = os.fork()
        if pid == 0:  # the child: sync writing versions 1, 2, 1, 2... and processes recording trips
            try:
                for i in range(10_000):
                    state, data = states[1 + i % 2]
                    cache.write_list("default", state, {state.snapshot: data})
                    breaker.record_trip(cache.breaker_dir, breaker.Trip(
                        "default", 2 + i, 1, BreakerState.OPEN, time.time(), "t", 20, 20, 1.0, 0.5))
            finally:
                os._exit(0)
        time.sleep(0.02 + 0.013 * run)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        live = LiveMatcher(config, component="squid")
        assert live.matcher.versions().get("default") in (1, 2), f"run {run}: nothing enforced"
        previous = cache.previous("default")
        if previous is not None:
            assert cache.load_list("default", config.public_keys, 1 << 30, previous) is not None
        breaker.read_trip(cache.breaker_dir, "default")  # complete or absent, never torn
        with breaker._locked(cache.breaker_dir):  # the next writer removes what the killed one left
            pass
        assert not list(cache.breaker_dir.glob(".*.tmp-*"))


# -- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(("safety", "line", "message"), [
    ("  max_block_ratio: 1.5\n", 3, "safety.max_block_ratio must be a number between 0 and 1"),
    ("  min_requests: 0\n", 3, "safety.min_requests must be a whole number of at least 1"),
    ("  min_requests: 10\n  traffic: some\n", 4, "safety.traffic must be all or steered"),
    ("  enabled: yes please\n", 3, "safety.enabled must be true or false"),
    ("  max_ratio: 0.2\n", 3, "unknown key safety.max_ratio"),
])
def test_config_errors_name_the_line(plugin: Plugin, safety: str, line: int, message: str) -> None:
    plugin.write_config()
    text = plugin.config_path.read_text()
    plugin.config_path.write_text("# a comment\nsafety:\n" + safety + text)
    with pytest.raises(ConfigError) as err:
        load_config(plugin.config_path)
    assert f"plugin.yaml:{line}: {message}" in str(err.value)


def test_defaults_follow_the_deployment(plugin: Plugin) -> None:
    plugin.write_config()
    assert not plugin.config().safety.enabled  # off without the section
    plugin.write_config(safety={})
    assert (plugin.config().safety.traffic, plugin.config().safety.max_block_ratio,
            plugin.config().safety.min_requests) == (Traffic.ALL, 0.1, 2000)
    plugin.write_config(safety={}, resolver={"proxy_address": "192.0.2.80"})
    assert (plugin.config().safety.traffic, plugin.config().safety.max_block_ratio,
            plugin.config().safety.min_requests) == (Traffic.STEERED, 0.8, 1000)
    plugin.write_config(safety={"traffic": "all", "min_requests": 50}, resolver={"proxy_address": "192.0.2.80"})
    assert (plugin.config().safety.max_block_ratio, plugin.config().safety.min_requests) == (0.1, 50)
    plugin.config_path.write_text(plugin.config_path.read_text().replace("safety:\n  min_requests: 50\n  "
                                                                          "traffic: all\n", "safety:\n"))
    assert plugin.config().safety.enabled  # a bare `safety:` turns it on


# -- the real programs ----------------------------------------------------------------------


async def test_proxy_and_squid_helper_processes_fall_back_together(hotline: Hotline, plugin: Plugin, origin: str,
                                                                   tmp_path: Path) -> None:
    hotline.run("add", f"http://{origin}/listed.html")
    hotline.run("publish")
    plugin.extra["safety"] = SAFETY
    plugin.write_config()
    plugin.install_published()
    hotline.run("add", "--scope", "domain", "http://127.0.0.1/")  # v2 lists the whole origin
    hotline.run("publish")
    plugin.install_published()
    proxy = start_proxy(plugin, tmp_path)
    helper = Helper(plugin.config_path, tmp_path)
    try:
        assert helper.ask(f"0 http://{origin}/free.html".encode()).startswith(b"0 OK")  # v2 blocks it
        answers = [await raw_exchange(proxy.port, f"GET http://{origin}/{i}.html HTTP/1.1\r\nHost: {origin}\r\n"
                                      "Connection: close\r\n\r\n".encode()) for i in range(20)]
        assert all(a.startswith(b"HTTP/1.1 451") for a in answers)  # 20 requests, all blocked: it trips
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the proxy's reload loop: within a second
            answer = await raw_exchange(proxy.port, f"GET http://{origin}/after.html HTTP/1.1\r\nHost: {origin}\r\n"
                                        "Connection: close\r\n\r\n".encode())
            if answer.startswith(b"HTTP/1.1 200"):
                break
            time.sleep(0.1)
        assert answer.startswith(b"HTTP/1.1 200")
        listed = await raw_exchange(proxy.port, f"GET http://{origin}/listed.html HTTP/1.1\r\nHost: {origin}\r\n"
                                    "Connection: close\r\n\r\n".encode())
        assert listed.startswith(b"HTTP/1.1 451")  # v1 enforced, not nothing
        time.sleep(1.1)  # the helper checks the cache at most once a second
        assert helper.ask(f"1 http://{origin}/free.html".encode()) == b"1 ERR"
        assert helper.ask(f"2 http://{origin}/listed.html".encode()).startswith(b"2 OK")
        assert b'log="blocklist:default:v1"' in helper.ask(f"3 http://{origin}/listed.html".encode())
        trip = breaker.read_trip(Cache(plugin.config().cache_dir).breaker_dir, "default")
        assert trip is not None and trip.holds(2) and trip.by.startswith("proxy pid ")

        assert plugin_cli(plugin, "breaker", "reset", "default").exit_code == 0
        time.sleep(1.1)
        assert helper.ask(f"4 http://{origin}/free.html".encode()).startswith(b"4 OK")
    finally:
        proxy.stop()
        helper.close()
    assert b"free.html" not in proxy.stderr.read_bytes() and "free.html" not in helper.stderr


async def test_squid_helper_process_trips_within_min_requests(hotline: Hotline, plugin: Plugin,
                                                              tmp_path: Path) -> None:
    _versions(hotline, plugin)
    helper = Helper(plugin.config_path, tmp_path)
    try:
        lines = b"".join(f"{i} http://{POPULAR}/{i}.html\n".encode() for i in range(20))
        helper.send(lines)
        answers = helper.read_lines(20)
        assert all(b" OK " in a for a in answers)
        assert helper.ask(f"20 http://{POPULAR}/next.html".encode()) == b"20 ERR"  # the next request: v1
        assert helper.ask(f"21 {PAGE}".encode()).startswith(b"21 OK")
    finally:
        helper.close()
    trip = breaker.read_trip(Cache(plugin.config().cache_dir).breaker_dir, "default")
    assert trip is not None and trip.by.startswith("squid pid ") and trip.requests == 20


def test_real_unbound_follows_a_trip_of_the_proxy(hotline: Hotline, plugin: Plugin,
                                                  start_resolver) -> None:  # noqa: F811
    hotline.run("add", "http://pages.example/bad.html")
    hotline.run("publish")
    plugin.write_config(resolver=RESOLVER, safety=SAFETY)
    plugin.install_published()
    hotline.run("add", "--scope", "domain", "http://good.example/")  # the bad version
    hotline.run("publish")
    plugin.install_published()
    port = start_resolver().port
    assert dig(port, "good.example").status == "NXDOMAIN"
    proxy = LiveMatcher(plugin.config(), check_interval=float("inf"), component="proxy")
    for i in range(20):
        assert proxy.check(f"http://good.example/{i}.html").blocked
    deadline = time.monotonic() + 10
    while dig(port, "good.example").data != [ORIGIN] and time.monotonic() < deadline:
        time.sleep(0.2)  # the module's reload thread looks once a second
    assert dig(port, "good.example").data == [ORIGIN]   # v1: resolves normally
    assert dig(port, "pages.example").data == [PROXY]   # v1 still enforced: to the proxy


async def test_sync_keeps_the_previous_version_of_a_delta_and_reports_what_the_node_enforces(
        tmp_path: Path, no_sockets: None) -> None:
    sim = RepositorySimulator()
    sim.add(PAGE)
    sim.publish()
    node = Syncer(sim.plugin_config(tmp_path / "plugin", safety=SAFETY), sim)
    assert await node.sync_once()
    sim.add(f"http://{POPULAR}/", scope=Scope.DOMAIN)  # the bad version lists the host whole
    sim.publish()
    assert await node.sync_once() and node.filters["default"].version == 2
    assert [r.path for r in sim.requests if "delta" in r.path] == ["lists/default/delta-1-2"]
    live = LiveMatcher(node.config, component="squid")
    _traffic(live, 20, 1.0)
    assert live.check(PAGE).blocked and live.matcher.versions() == {"default": 1}  # from the kept files
    sim.requests.clear()
    assert await node.sync_once()
    assert sim.requests[0].headers["X-Blocklist-Have"] == "default=1"  # the fleet sees the node behind
    assert node.filters["default"].version == 2  # sync itself stays at the newest: deltas build on it
    sim.remove(f"http://{POPULAR}/")
    sim.publish()
    assert await node.sync_once()
    sim.requests.clear()
    assert await node.sync_once()
    assert sim.requests[0].headers["X-Blocklist-Have"] == "default=3"
    assert breaker.read_trip(node.cache.breaker_dir, "default") is None


def test_local_policy_and_fail_closed_hold_across_a_trip(hotline: Hotline, plugin: Plugin) -> None:
    _versions(hotline, plugin, fail_closed=True,
              local={"allow": [{"url": "http://pages.example/bad.html"}],
                     "block": [{"url": "http://court.example/", "scope": "domain"}]})
    live = LiveMatcher(plugin.config(), component="squid")
    assert live.watch is not None and live.watch.armed
    _traffic(live, 20, 1.0)  # local decisions and the lists' blocks: v2 blocks 20 of 20
    assert live.matcher.versions() == {"default": 2}
    assert not live.check(f"http://{POPULAR}/").blocked and live.matcher.versions() == {"default": 1}
    assert live.check("http://www.court.example/x").list == "local"   # the ISP's own block
    assert not live.check(PAGE).blocked                                # the ISP's allow still wins
    assert not live.fail_closed_active and live.matcher                # a list is loaded: not fail-closed
