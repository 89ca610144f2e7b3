"""The admin endpoint: /healthz, /status and /metrics agree with `status --json`; counters of every process."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from resolver_plugin.cache import Cache, LiveMatcher
from resolver_plugin.cli import main as plugin_main
from resolver_plugin.config import load_config
from resolver_plugin.operations import metrics
from resolver_plugin.operations.admin import make_admin_app, start_admin
from resolver_plugin.operations.node_status import write_status
from tests.conftest import Plugin
from tests.support.net import free_port
from tests.support.status import HOUR, SOURCE, node_status, publish

ROOT = Path(__file__).resolve().parent.parent


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of a Prometheus text exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def lagging_with_errors(plugin: Plugin) -> None:
    now = time.time()
    status = node_status(now, {"network": 7, "signature": 1}, newest_seen=3, newest_seen_at=now - 2 * HOUR,
                         last_success=now - 2 * HOUR, last_error="network: refused", last_error_at=now - 3)
    write_status(Cache(plugin.config().cache_dir).status_file, status)


async def test_metrics_show_the_figures_of_status_json(installed: Plugin, aiohttp_client: Any) -> None:
    lagging_with_errors(installed)
    client = await aiohttp_client(make_admin_app(installed.config()))
    resp = await client.get("/metrics")
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
    got = samples(await resp.text())
    doc = json.loads(CliRunner().invoke(plugin_main, ["-c", str(installed.config_path), "status", "--json"]).output)
    row = doc["lists"][0]
    default = (("list", "default"),)
    assert got[("blocklist_status", ())] == doc["exit_code"] == 1
    assert got[("blocklist_list_state", default)] == 1
    assert got[("blocklist_list_enforced_version", default)] == row["enforced"] == 1
    assert got[("blocklist_list_newest_seen_version", default)] == row["newest_seen"] == 3
    assert got[("blocklist_list_lag_versions", default)] == row["lag_versions"] == 2
    assert got[("blocklist_list_lag_seconds", default)] == pytest.approx(row["lag_seconds"], abs=5)
    assert got[("blocklist_list_entries", default)] == row["entries"] == 2
    assert got[("blocklist_list_last_success_timestamp_seconds", default)] == row["last_success"]
    assert got[("blocklist_list_expiry_timestamp_seconds", default)] == row["expires"]
    for kind, count in doc["errors_total"].items():
        assert got[("blocklist_sync_errors_total", (("kind", kind),))] == count
    assert got[("blocklist_sync_errors_total", (("kind", "rollback"),))] == 0  # every kind, from the start
    assert got[("blocklist_node_info", (("node_id", "test-node"),))] == 1


async def test_healthz_follows_what_is_enforced(plugin: Plugin, aiohttp_client: Any) -> None:
    plugin.write_config(source=SOURCE)
    fresh = await aiohttp_client(make_admin_app(plugin.config()))
    resp = await fresh.get("/healthz")
    assert resp.status == 503
    live = LiveMatcher(plugin.config())
    assert (await (await aiohttp_client(make_admin_app(plugin.config(), live))).get("/healthz")).status == 503
    publish(plugin, "http://bad.example/a.html")
    plugin.install_published()
    resp = await fresh.get("/healthz")
    assert (resp.status, await resp.text()) == (200, "ok\n")
    live.reload()
    assert (await (await aiohttp_client(make_admin_app(plugin.config(), live))).get("/healthz")).status == 200


async def test_status_is_json_for_scripts_and_a_page_for_browsers(installed: Plugin, aiohttp_client: Any) -> None:
    lagging_with_errors(installed)
    client = await aiohttp_client(make_admin_app(installed.config()))
    for kwargs in ({}, {"headers": {"Accept": "application/json"}}, {"params": {"format": "json"}}):
        resp = await client.get("/status", **kwargs)
        doc = await resp.json()
        assert doc["state"] == "WARNING" and doc["lists"][0]["lag_versions"] == 2
    resp = await client.get("/status", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    page = await resp.text()
    assert resp.content_type == "text/html"
    assert '<meta http-equiv="refresh"' in page and '<table id="lists">' in page
    assert 'class="state WARNING"' in page and "2 versions, 2h" in page
    assert "://" not in page and "<script" not in page and "src=" not in page
    assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
    assert (await client.get("/status?format=html")).content_type == "text/html"


async def test_checks_blocks_latency_and_bloom_counters(installed: Plugin, aiohttp_client: Any) -> None:
    live = LiveMatcher(installed.config())
    client = await aiohttp_client(make_admin_app(installed.config(), live))
    component = "test-counters"
    for url in ("http://bad.example/a.html", "http://bad.example/other.html", "http://good.example/"):
        started = time.perf_counter()
        verdict = live.check(url)
        metrics.observe_check(component, verdict, time.perf_counter() - started)
    metrics.observe_host_check(component, live.check_host("bad.example"), 1e-6)
    metrics.observe_invalid(component)
    metrics.observe_refused(component, "connect_port")
    got = samples(await (await client.get("/metrics")).text())
    c = ("component", component)
    assert got[("blocklist_refused_requests_total", (c, ("reason", "connect_port")))] == 1
    assert got[("blocklist_checks_total", (c, ("kind", "url")))] == 3
    assert got[("blocklist_checks_total", (c, ("kind", "host")))] == 1
    assert got[("blocklist_blocks_total", (("action", "block"), c, ("list", "default")))] == 1
    assert got[("blocklist_blocks_total", (("action", "proxy"), c, ("list", "default")))] == 1
    assert got[("blocklist_invalid_requests_total", (c,))] == 1
    assert got[("blocklist_check_seconds_count", (c,))] == 4
    assert got[("blocklist_check_seconds_bucket", (c, ("le", "+Inf")))] == 4
    f = live.matcher.filters[0]
    assert f.bloom_confirmed >= 2  # the host, then the page
    confirmed = got[("blocklist_bloom_hits_total", (("list", "default"), ("outcome", "confirmed")))]
    assert confirmed >= f.bloom_confirmed  # earlier tests' filters count too; never fewer


HELPER = """
import sys, time
from resolver_plugin.operations import metrics
from resolver_plugin.cache import LiveMatcher
from resolver_plugin.config import load_config
config = load_config(sys.argv[1])
live = LiveMatcher(config)
metrics.share_counters(config.cache_dir, live, interval=0.05)
for url in sys.argv[2:]:
    metrics.observe_check("helper", live.check(url), 1e-5)
if sys.stdin.readline() == "wait\\n":
    time.sleep(0.3)
    print("flushed", flush=True)
    sys.stdin.readline()
"""


def run_helper(plugin: Plugin, *urls: str, stay: bool = False) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", HELPER, str(plugin.config_path), *urls], env=env, cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    if stay:
        proc.stdin.write("wait\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "flushed\n"
    else:
        proc.communicate("", timeout=30)
    return proc


async def test_counters_of_other_processes_reach_metrics_and_survive_their_exit(
        installed: Plugin, aiohttp_client: Any) -> None:
    client = await aiohttp_client(make_admin_app(installed.config()))
    folder = Cache(installed.config().cache_dir).metrics_dir

    async def helper_checks() -> float:
        got = samples(await (await client.get("/metrics")).text())
        return got.get(("blocklist_checks_total", (("component", "helper"), ("kind", "url"))), 0)

    alive = run_helper(installed, "http://bad.example/a.html", "http://good.example/", stay=True)
    try:
        assert await helper_checks() == 2
        assert any(p.name.startswith(f"{alive.pid}-") for p in folder.iterdir())  # alive: not retired
    finally:
        alive.communicate("\n", timeout=30)
    assert await helper_checks() == 2  # exited: merged into retired.json, not lost
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == ["retired.json"]
    run_helper(installed, "http://bad.example/b.html")
    assert await helper_checks() == 3
    assert await helper_checks() == 3  # merged once only


async def test_start_admin_serves_and_steps_aside_when_the_port_is_taken(
        installed: Plugin, caplog: pytest.LogCaptureFixture) -> None:
    assert await start_admin(installed.config()) is None  # admin.listen: null in the test config
    port = free_port()
    installed.write_config(source=SOURCE, admin={"listen": f"127.0.0.1:{port}"})
    config = load_config(installed.config_path)
    runner = await start_admin(config)
    assert runner is not None
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
                assert resp.status == 200
        with caplog.at_level(logging.WARNING, logger="blocklist.plugin.admin"):
            assert await start_admin(config) is None
        assert "cannot listen on" in caplog.text
    finally:
        await runner.cleanup()
