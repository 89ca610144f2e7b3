"""The fleet on `blocklist serve`: /fleet (an HTML page), /fleet.json and /metrics (Prometheus).

`blocklist serve` calls `add_fleet_routes(app, home)` on its application. Every
request reads the poll records and the published manifest afresh (in a
thread: SQLite and a signature check), so the pages never disagree with
`blocklist fleet`. Other hotline metrics can join /metrics by registering a
collector in `app[METRICS_REGISTRY]`.

The publish tree may be public; the fleet (which ISP nodes exist, their
addresses) is not: these routes answer only clients in `allowed` (loopback by
default) and 403 everyone else.
"""

from __future__ import annotations

import asyncio
import html
import ipaddress
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from string import Template

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from blocklist.core.errors import BlocklistError
from blocklist.core.timefmt import utc
from blocklist.fleet import FleetReport, fleet_report, fleet_table, published_line
from blocklist.home import Home

log = logging.getLogger("blocklist.fleet")

FLEET_HOME = web.AppKey("fleet_home", Home)
FLEET_ALLOWED = web.AppKey("fleet_allowed", tuple)
METRICS_REGISTRY = web.AppKey("metrics_registry", CollectorRegistry)

REFRESH_SECONDS = 15
SECURITY_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
                    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'"}

PAGE = Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="refresh" content="$refresh">
<title>$state - blocklist fleet</title>
<style>
  body { font: 15px/1.45 system-ui, sans-serif; margin: 2em; color: #1d232a; background: #f6f7f9; }
  h1 { font-size: 1.3em; margin: 0 0 .2em; } .meta { color: #5b6570; margin: 0 0 1.2em; }
  .banner { padding: .8em 1.1em; border-radius: 6px; color: #fff; font-weight: 600; margin-bottom: 1.2em; }
  table { border-collapse: collapse; width: 100%; background: #fff; box-shadow: 0 1px 2px rgba(0,0,0,.08); }
  th, td { text-align: left; padding: .5em .8em; border-bottom: 1px solid #e3e6ea; }
  th { background: #eef0f3; font-size: .85em; }
  .OK { background: #1e8a3e; } .WARNING { background: #c77700; }
  .CRITICAL { background: #c62828; } .UNKNOWN { background: #6b7280; }
  td.flag { font-weight: 600; } td.flag.WARNING { color: #c77700; background: none; }
</style>
</head>
<body>
<h1>Blocklist fleet</h1>
<p class="meta">Checked $checked_at &middot; $published &middot; <a href="/fleet.json">JSON</a></p>
<div class="banner $state" id="state">FLEET $state &ndash; $summary</div>
<table id="nodes"><thead><tr>$headers</tr></thead>
<tbody>
$rows
</tbody></table>
</body>
</html>
""")


def fleet_page(report: FleetReport) -> str:
    e = html.escape
    headers, rows = fleet_table(report)
    body = []
    for row in rows:
        flag = "OK" if row[1] == "OK" else "WARNING"
        cells = [f"<td>{e(row[0])}</td>", f'<td class="flag {flag}">{e(row[1])}</td>',
                 *(f"<td>{e(cell)}</td>" for cell in row[2:])]
        body.append(f"<tr>{''.join(cells)}</tr>")
    if not rows:
        body.append(f'<tr><td colspan="{len(headers)}">no node registered</td></tr>')
    return PAGE.substitute(refresh=REFRESH_SECONDS, state=report.state.name, summary=e(report.summary),
                           checked_at=utc(report.now), published=e(published_line(report)),
                           headers="".join(f"<th>{e(h)}</th>" for h in headers), rows="\n".join(body))


class FleetCollector(Collector):
    """Per-node, per-list versions, lag and last poll, read at scrape time."""

    def __init__(self, home: Home) -> None:
        self.home = home

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("blocklist_fleet_report_ok", "1 when the fleet records and manifest were read")
        try:
            report = fleet_report(self.home)
        except BlocklistError as exc:
            log.error("fleet: %s", exc, extra={"event": "fleet_unreadable", "reason": str(exc)})
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        families = {
            "state": GaugeMetricFamily("blocklist_fleet_state", "As `blocklist fleet` exits: 0 OK, "
                                       "1 WARNING, 2 CRITICAL"),
            "nodes": GaugeMetricFamily("blocklist_fleet_nodes", "Registered nodes"),
            "silent": GaugeMetricFamily("blocklist_fleet_nodes_silent", "Nodes silent past fleet_silent_seconds"),
            "never": GaugeMetricFamily("blocklist_fleet_nodes_never_reported",
                                       "Registered nodes without a verified poll yet"),
            "published": GaugeMetricFamily("blocklist_published_version", "Published version", labels=["list"]),
            "expiry": GaugeMetricFamily("blocklist_published_manifest_expiry_timestamp_seconds",
                                        "Expiry of the published manifest"),
            "version": GaugeMetricFamily("blocklist_fleet_node_version", "Version a node last reported",
                                         labels=["node", "list"]),
            "lag": GaugeMetricFamily("blocklist_fleet_node_lag_versions", "Versions a node is behind",
                                     labels=["node", "list"]),
            "seen": GaugeMetricFamily("blocklist_fleet_node_last_seen_timestamp_seconds", "A node's last poll",
                                      labels=["node"]),
            "is_silent": GaugeMetricFamily("blocklist_fleet_node_silent", "1 when silent past fleet_silent_seconds",
                                           labels=["node"]),
        }
        families["state"].add_metric([], int(report.state))
        families["nodes"].add_metric([], len(report.nodes))
        families["silent"].add_metric([], sum(n.silent for n in report.nodes))
        families["never"].add_metric([], sum(not n.reported for n in report.nodes))
        for name, version in report.published.items():
            families["published"].add_metric([name], version)
        if report.manifest_expires:
            families["expiry"].add_metric([], report.manifest_expires)
        for node in report.nodes:
            if node.reported:
                families["seen"].add_metric([node.node_id], node.last_seen)
            families["is_silent"].add_metric([node.node_id], int(node.silent))
            for name, version in node.versions.items():
                families["version"].add_metric([node.node_id, name], version)
            for name, lag in node.lag.items():
                families["lag"].add_metric([node.node_id, name], lag)
        yield from families.values()


def _check_client(request: web.Request) -> None:
    try:
        client = ipaddress.ip_address((request.remote or "").split("%")[0])
    except ValueError:
        client = None
    if isinstance(client, ipaddress.IPv6Address) and client.ipv4_mapped:
        client = client.ipv4_mapped  # a dual-stack listener
    if client is None or not any(client in net for net in request.app[FLEET_ALLOWED]):
        raise web.HTTPForbidden(text="the fleet is visible to the hotline's own networks only\n")


async def _report(request: web.Request) -> FleetReport:
    _check_client(request)
    try:
        return await asyncio.to_thread(fleet_report, request.app[FLEET_HOME])
    except BlocklistError as exc:
        log.error("fleet: %s", exc, extra={"event": "fleet_unreadable", "reason": str(exc)})
        raise web.HTTPServiceUnavailable(text="fleet records unavailable\n") from None


async def fleet_html(request: web.Request) -> web.Response:
    report = await _report(request)
    return web.Response(text=fleet_page(report), content_type="text/html", headers=SECURITY_HEADERS)


async def fleet_json(request: web.Request) -> web.Response:
    report = await _report(request)
    return web.Response(text=json.dumps(report.as_json(), indent=1), content_type="application/json",
                        headers=SECURITY_HEADERS)


async def metrics_handler(request: web.Request) -> web.Response:
    _check_client(request)
    data = await asyncio.to_thread(generate_latest, request.app[METRICS_REGISTRY])
    return web.Response(body=data, headers={**SECURITY_HEADERS, "Content-Type": CONTENT_TYPE_LATEST})


def add_fleet_routes(app: web.Application, home: Home | Path,
                     allowed: Sequence[str] = ("127.0.0.0/8", "::1/128")) -> None:
    """Add /fleet, /fleet.json and /metrics to `blocklist serve`'s application.

    `allowed` are the client networks that may read them; raises ValueError on a bad one.
    """
    app[FLEET_HOME] = home if isinstance(home, Home) else Home(Path(home))
    app[FLEET_ALLOWED] = tuple(ipaddress.ip_network(net, strict=False) for net in allowed)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(app[FLEET_HOME]))
    app[METRICS_REGISTRY] = registry
    app.router.add_get("/fleet", fleet_html)
    app.router.add_get("/fleet.json", fleet_json)
    app.router.add_get("/metrics", metrics_handler)
