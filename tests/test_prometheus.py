"""contrib/prometheus and contrib/grafana: the rules check, their unit tests pass, and a real Prometheus
sees the alerts fire and resolve against the real programs.

- `promtool check rules` and `promtool test rules contrib/prometheus/tests/*.yml` (every alert
  firing and not firing, at production thresholds and `for:` durations);
- the rules and the Grafana dashboard name only metrics the plugin's admin endpoint or
  `blocklist serve` export (or series the rules record), and the error kinds the rules call
  refusals are exactly those ErrorKind calls verification failures;
- Debian's `prometheus` on 127.0.0.1 scrapes a real `blocklist-plugin sync` (its admin
  endpoint) and a real `blocklist serve` every second, with a copy of the rules whose `for:`
  are 1 s and whose range windows are 10 s. The test makes the node stale (a manifest that
  expires within a day), lagging and refusing a tampered update, and watches
  /api/v1/alerts: each alert fires, and resolves once the hotline publishes a fresh manifest
  and the mirror serves the genuine files again.

Without promtool or prometheus these tests skip, except under CI=true where they fail.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from blocklist.core.errors import ErrorKind
from blocklist.fleet_web import add_fleet_routes
from blocklist.home import Home
from blocklist.nodes import FleetStore
from resolver_plugin.cache import Cache, LiveMatcher
from resolver_plugin.operations import metrics
from resolver_plugin.operations.admin import make_admin_app
from resolver_plugin.operations.node_status import write_status
from tests.conftest import Hotline, Plugin, require_program
from tests.support.net import free_port
from tests.support.plugin import state_version
from tests.support.processes import PLUGIN, Program, connect_when_listening, launch
from tests.support.status import HOUR, SOURCE, node_status, publish

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "contrib" / "prometheus" / "blocklist-rules.yml"
RULE_TESTS = sorted((ROOT / "contrib" / "prometheus" / "tests").glob("*.yml"))
DASHBOARD = ROOT / "contrib" / "grafana" / "blocklist.json"
LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a configured HTTP proxy


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


# ----------------------------------------------------------------------------- promtool

def test_promtool_checks_the_rules() -> None:
    promtool = require_program("promtool")
    result = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    promtool = require_program("promtool")
    assert RULE_TESTS
    result = subprocess.run([promtool, "test", "rules", *map(str, RULE_TESTS)], capture_output=True, text=True,
                            timeout=120, cwd=RULE_TESTS[0].parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS)


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    fired, quiet = set(), set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    assert alerts - fired == set(), "never seen firing"
    assert alerts - quiet == set(), "never seen not firing"


def test_every_alert_waits_has_a_severity_and_names_its_node_and_list_without_a_url() -> None:
    """The summary names what the alert's labels single out: the node and, per list, the list."""
    fired_labels = {}
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                for alert in check["exp_alerts"]:
                    fired_labels[check["alertname"]] = alert["exp_labels"]
    alerts = [rule for rule in rules() if "alert" in rule]
    assert len(alerts) >= 12
    for rule in alerts:
        name, summary = rule["alert"], rule["annotations"]["summary"]
        assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), f"{name}: no for:"
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert summary and rule["annotations"]["description"], name
        assert all("://" not in text for text in rule["annotations"].values()), name
        for label in ("node_id", "node", "list", "kind"):
            if label in fired_labels[name]:
                assert f"$labels.{label} " in summary, f"{name}: the summary does not name the {label}"


def test_refusals_are_the_error_kinds_that_mean_verification() -> None:
    exprs = {rule["record"]: rule["expr"] for rule in rules() if "record" in rule}
    refusals = re.search(r'kind=~"([a-z|]+)"', exprs["blocklist:sync_refusals:increase10m"])
    failures = re.search(r'kind=~"([a-z|]+)"', exprs["blocklist:sync_failures:increase15m"])
    assert refusals and failures
    assert set(refusals.group(1).split("|")) == {k.value for k in ErrorKind if k.is_verification}
    assert set(failures.group(1).split("|")) == {k.value for k in ErrorKind if not k.is_verification}


# ----------------------------------------------------------------------------- the metric names

def sample_names(text: str) -> set[str]:
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


def series_names(expr: str) -> set[str]:
    """The metric and recorded series names a PromQL expression reads (ours and the process ones)."""
    expr = re.sub(r'"[^"]*"', '""', expr)  # label values such as job="blocklist-plugin"
    return {name for name in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr)
            if "blocklist" in name or name.startswith("process_")}


async def test_rules_and_dashboard_read_only_metrics_that_exist(installed: Plugin, aiohttp_client: Any) -> None:
    now = time.time()
    # a monitored list and a local allow, so that their counters have samples too
    installed.hotline.run("add", "http://trial.example/", "--list", "trial", "--create-list")
    installed.hotline.run("publish")
    installed.write_config(source=SOURCE, lists=["default", {"name": "trial", "mode": "monitor"}],
                           local={"allow": [{"url": "http://bad.example/b.html"}]})
    installed.install_published()
    write_status(Cache(installed.config().cache_dir).status_file,
                 node_status(now, {"network": 7, "signature": 1}, newest_seen=3, newest_seen_at=now - 2 * HOUR,
                             last_success=now - 2 * HOUR, last_error="network: refused", last_error_at=now - 3))
    Cache(installed.config().cache_dir).write_selftest(  # a selftest has run: its gauges are exported
        {"state": "OK", "exit_code": 0, "summary": "proxy: canary of default v1 as expected", "checked_at": now})
    live = LiveMatcher(installed.config())
    metrics.observe_check("names", live.check("http://bad.example/a.html"), 1e-5)  # a Bloom hit too
    metrics.observe_host_check("names", live.check_host("bad.example"), 1e-5)
    metrics.observe_invalid("names")
    metrics.observe_refused("names", "destination")  # else its samples exist only after the proxy's tests ran
    assert not live.check("http://bad.example/b.html").blocked and not live.check("http://trial.example/").blocked
    app = make_admin_app(installed.config(), live)
    plugin_text = await (await (await aiohttp_client(app)).get("/metrics")).text()
    fleet_store = FleetStore(Home(installed.hotline.home).fleet_path)
    fleet_store.add_node("n1")
    assert fleet_store.record_poll("n1", {"default": 1}, "192.0.2.1")
    hotline_app = web.Application()
    add_fleet_routes(hotline_app, installed.hotline.home)
    hotline_text = await (await (await aiohttp_client(hotline_app)).get("/metrics")).text()
    exported = sample_names(plugin_text) | sample_names(hotline_text)
    recorded = {rule["record"] for rule in rules() if "record" in rule}

    for rule in rules():
        assert series_names(rule["expr"]) - exported - recorded == set(), rule.get("alert") or rule.get("record")
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    queries += [var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
                for var in dashboard["templating"]["list"] if var["type"] == "query"]
    assert len(queries) >= 15
    read = set()
    for expr in queries:
        names = series_names(expr)
        assert names, f"reads no blocklist metric: {expr}"
        assert names - exported == set(), expr  # the dashboard works without the rules loaded
        read |= names
    families = {family.name for text in (plugin_text, hotline_text)
                for family in text_string_to_metric_families(text) if family.name.startswith("blocklist_")}
    shown = {family for family in families if any(name.startswith(family) for name in read)}
    assert families - shown == set(), "exported but on no panel"


def test_dashboard_is_grafana_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["uid"] and dashboard["schemaVersion"] >= 30
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]), panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}" and target["refId"], panel["title"]
    assert "://" not in DASHBOARD.read_text()


# ----------------------------------------------------------------------------- a real Prometheus

def fast_rules(folder: Path) -> Path:
    """The rules with every `for:` at 1 s and every range window at 10 s, for a test in seconds."""
    text, fors = re.subn(r"\bfor: \d+[smh]\b", "for: 1s", RULES.read_text())
    text, windows = re.subn(r"\[\d+m\]", "[10s]", text)
    assert fors >= 12 and windows >= 2
    path = folder / "blocklist-rules.yml"
    path.write_text(text)
    return path


class Prometheus:
    """Debian's prometheus on 127.0.0.1 scraping `targets` (job -> host:port) every second."""

    def __init__(self, folder: Path, rules: Path, targets: dict[str, str]) -> None:
        self.port = free_port()
        config = {"global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
                  "rule_files": [str(rules)],
                  "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target]}]}
                                     for job, target in targets.items()]}
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.program = launch([require_program("prometheus"), f"--config.file={folder / 'prometheus.yml'}",
                               f"--storage.tsdb.path={folder / 'tsdb'}",
                               f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                              folder / "prometheus.stderr")
        connect_when_listening(self.port, self.program).close()
        wait_for("prometheus ready", lambda: self._get("/-/ready") is not None, 30)

    def _get(self, path: str) -> Any:
        try:
            with LOCAL.open(f"http://127.0.0.1:{self.port}{path}", timeout=5) as resp:
                body = resp.read()
        except OSError:
            return None
        return json.loads(body) if path.startswith("/api/") else body

    def query(self, promql: str) -> list[dict[str, Any]]:
        doc = self._get("/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        return doc["data"]["result"] if doc else []

    def alerts(self) -> list[dict[str, Any]]:
        """The active alerts: pending or firing (resolved ones are not listed)."""
        doc = self._get("/api/v1/alerts")
        return doc["data"]["alerts"] if doc else []

    def state(self, name: str, **labels: str) -> str | None:
        """"firing", "pending" or None (not active) for the alert `name` with `labels`."""
        states = {a["state"] for a in self.alerts() if a["labels"]["alertname"] == name
                  and all(a["labels"].get(k) == v for k, v in labels.items())}
        return "firing" if "firing" in states else "pending" if states else None

    def stop(self) -> int:
        return self.program.stop()


def wait_for(what: str, condition: Callable[[], object], timeout: float = 60) -> float:
    """Poll `condition` every 200 ms until it holds; the seconds it took (fails past `timeout`)."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            pytest.fail(f"not within {timeout} s: {what}")
        time.sleep(0.2)
    return time.monotonic() - started


def stopped(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "T"


def set_expires_hours(hotline: Hotline, hours: float) -> None:
    path = hotline.home / "blocklist.yaml"
    settings = yaml.safe_load(path.read_text())
    settings["expires_hours"] = hours
    path.write_text(yaml.safe_dump(settings))


def test_prometheus_sees_stale_lagging_and_refusing_nodes_and_their_recovery(
        hotline: Hotline, plugin: Plugin, tmp_path: Path) -> None:
    require_program("prometheus")
    rules = fast_rules(tmp_path)
    plugin.write_config()
    publish(plugin, "http://bad.example/1.html")
    serve_port, admin_port = free_port(), free_port()
    started: list[Program | Prometheus] = []
    try:
        serve = launch([sys.executable, "-m", "blocklist", "--home", str(hotline.home), "serve",
                        "--port", str(serve_port)], tmp_path / "serve.stderr")
        started.append(serve)
        connect_when_listening(serve_port, serve).close()
        plugin.write_config(source=f"http://127.0.0.1:{serve_port}/", node_id="prom-node", long_poll=1,
                            timeouts={"connect": 2, "retry_first": 0.1, "retry_max": 0.5},
                            admin={"listen": f"127.0.0.1:{admin_port}"})
        sync = launch([*PLUGIN, "-c", str(plugin.config_path), "sync"], tmp_path / "sync.stderr")
        started.append(sync)
        wait_for("version 1 synced", lambda: state_version(plugin) == 1, 30)
        connect_when_listening(admin_port, sync).close()
        prometheus = Prometheus(tmp_path, rules, {"blocklist-plugin": f"127.0.0.1:{admin_port}",
                                                  "blocklist-hotline": f"127.0.0.1:{serve_port}"})
        started.append(prometheus)
        node, fleet_node = {"node_id": "prom-node", "list": "default"}, {"node": "prom-node", "list": "default"}

        # In sync, fresh: after the rules have run on both targets' figures, nothing is active.
        wait_for("the rules' view of the node", lambda: prometheus.query(
            'blocklist:list_enforced_version{node_id="prom-node"} == 1'
            ' and on () blocklist_fleet_node_version{node="prom-node"} == 1'), 30)
        time.sleep(2.5)  # two evaluations: a `for: 1s` alert would be firing by now
        watched = {"BlocklistListExpiresSoon", "BlocklistPublishedManifestExpiring", "BlocklistNodeLagging",
                   "BlocklistVerificationFailing", "BlocklistFleetNodeLagging", "BlocklistNoListEnforced",
                   "BlocklistListExpired", "BlocklistLastSyncTooOld", "BlocklistSyncDaemonSilent",
                   "BlocklistFleetNodeSilent", "BlocklistAdminEndpointDown", "BlocklistServeDown"}
        assert [a["labels"] for a in prometheus.alerts() if a["labels"]["alertname"] in watched] == []

        # Stale: the hotline publishes a manifest that lives 5 hours; the node enforces it.
        set_expires_hours(hotline, 5)
        publish(plugin, "http://bad.example/2.html")
        wait_for("stale alerts firing", lambda: prometheus.state("BlocklistListExpiresSoon", **node) == "firing"
                 and prometheus.state("BlocklistPublishedManifestExpiring") == "firing")
        assert state_version(plugin) == 2

        # Lagging and refusing: version 3 (a 24-hour manifest) with its files tampered on the mirror
        # before the node could fetch them (the daemon is paused meanwhile).
        os.kill(sync.pid, signal.SIGSTOP)
        try:
            wait_for("the daemon paused", lambda: stopped(sync.pid), 10)
            set_expires_hours(hotline, 24)
            publish(plugin, "http://bad.example/3.html")
            genuine = {}
            for name in ("snapshot-3", "delta-2-3"):
                path = hotline.publish_dir / "lists" / "default" / name
                genuine[path] = path.read_bytes()
                path.write_bytes(genuine[path][:-1] + bytes([genuine[path][-1] ^ 1]))
        finally:
            os.kill(sync.pid, signal.SIGCONT)
        wait_for("lagging and refusing alerts firing", lambda: (
            prometheus.state("BlocklistNodeLagging", **node) == "firing"
            and prometheus.state("BlocklistVerificationFailing", node_id="prom-node", kind="checksum") == "firing"
            and prometheus.state("BlocklistFleetNodeLagging", **fleet_node) == "firing"))
        assert state_version(plugin) == 2  # the last good version stays in force
        assert prometheus.state("BlocklistListExpiresSoon", **node) == "firing"  # still on version 2's manifest
        wait_for("the hotline's expiry alert resolved",
                 lambda: prometheus.state("BlocklistPublishedManifestExpiring") is None)
        firing = [a for a in prometheus.alerts() if a["state"] == "firing"]
        summaries = {a["labels"]["alertname"]: a["annotations"]["summary"] for a in firing}
        assert summaries["BlocklistVerificationFailing"] == (f"prom-node (127.0.0.1:{admin_port}) refuses updates: "
                                                             "checksum errors")
        assert summaries["BlocklistNodeLagging"] == f"prom-node (127.0.0.1:{admin_port}) is 1 version(s) behind " \
                                                    "on list default"
        assert all("://" not in text for a in firing for text in a["annotations"].values())

        # Fixed: the mirror serves the genuine files again; the node catches up to version 3.
        for path, data in genuine.items():
            path.write_bytes(data)
        wait_for("version 3 synced", lambda: state_version(plugin) == 3, 30)
        took = wait_for("every alert resolved", lambda: not any(
            a["labels"]["alertname"] in watched for a in prometheus.alerts()))
        assert took < 60  # the 10 s refusal window, a few evaluations
        assert sync.alive() and serve.alive()
    finally:
        for program in reversed(started):
            program.stop()
    assert "Traceback" not in sync.log() + serve.log()
    assert prometheus.program.proc.returncode == 0, prometheus.program.log()[-2000:]
