"""The plugin's admin HTTP endpoint: /healthz, /status (JSON or an HTML page), /selftest and /metrics.

One per node: `admin.listen` (loopback by default) names one port, and the
first long-running process to bind it serves it. Everything it shows is read
at request time from the files `sync` writes (status.json, the cache) and the
counter files of every enforcement process (resolver_plugin.operations.metrics), the last
`selftest` result the cache keeps (/selftest: 404 before the first run), so it does not
matter which process that is. Intended use:

    # in the sync daemon and in the proxy, inside their event loop:
    metrics.share_counters(config.cache_dir, live)    # enforcement processes only
    runner = await start_admin(config, live)          # None: disabled or port taken
    try:
        ...serve...
    finally:
        if runner is not None:
            await runner.cleanup()

The Squid helper and the Unbound module call only `metrics.share_counters`.
Pass `live` where there is one: /healthz then answers for what this process
enforces in memory, and its Bloom counters are harvested.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
from collections import Counter
from collections.abc import Iterator
from importlib import resources
from string import Template

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from blocklist.core.timefmt import relative, utc
from resolver_plugin.cache import Cache, ListState, LiveMatcher
from resolver_plugin.config import PluginConfig, parse_listen
from resolver_plugin.operations import metrics
from resolver_plugin.operations.node_status import ERROR_KINDS
from resolver_plugin.operations.status import HEADERS, ListReport, Report, gather, scrub, table_rows

log = logging.getLogger("blocklist.plugin.admin")

CONFIG = web.AppKey("config", PluginConfig)
LIVE = web.AppKey("live", LiveMatcher)
REGISTRY = web.AppKey("registry", CollectorRegistry)

REFRESH_SECONDS = 10
SECURITY_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
                    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'"}
_PAGE = Template(resources.files("resolver_plugin").joinpath("templates/status.html").read_text("utf-8"))


def _gauge(name: str, doc: str, labels: list[str], samples: list[tuple[list[str], float]]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=labels)
    for values, value in samples:
        family.add_metric(values, value)
    return family


def _counter(name: str, doc: str, labels: list[str], samples: Counter[tuple[str, ...]]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=labels)
    for values, value in sorted(samples.items()):
        family.add_metric(list(values), value)
    return family


def _source_of(name: str) -> str:
    """The source of a list by its node name ("police/terror" -> "police"); "" for any other label."""
    return name.partition("/")[0] if "/" in name else ""


def _with_source(samples: Counter[tuple[str, ...]], position: int) -> Counter[tuple[str, ...]]:
    """`samples` with the source of the list at `position` appended as a label."""
    out: Counter[tuple[str, ...]] = Counter()
    for labels, value in samples.items():
        out[(*labels, _source_of(labels[position]))] += value
    return out


class PluginCollector(Collector):
    """Reads status.json, the cache and the counter files at scrape time, so any process can serve it.

    With plugin.yaml `sources:` every sample that names a list also carries a `source` label
    (the list label is the node's name, "police/terror"), and the manifest, status and sync
    error samples are one per source; the one-source form's samples keep the labels they had.
    """

    def __init__(self, config: PluginConfig) -> None:
        self.config = config

    def collect(self) -> Iterator[Metric]:
        report = gather(self.config)
        lists = report.lists
        several = self.config.several_sources
        labels = ["list", "source"] if several else ["list"]

        def per_list(name: str, doc: str, values: list[tuple[ListReport, float]]) -> GaugeMetricFamily:
            return _gauge(name, doc, labels, [([r.name, r.source] if several else [r.name], v) for r, v in values])

        yield _gauge("blocklist_node_info", "This node's id", ["node_id"], [([report.node_id], 1)])
        yield _gauge("blocklist_status", "Overall state, as `status` exits: 0 OK, 1 WARNING, 2 CRITICAL, "
                     "3 UNKNOWN", [], [([], int(report.state))])
        yield per_list("blocklist_list_state", "State of a list: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN",
                       [(r, int(r.state)) for r in lists])
        yield per_list("blocklist_list_enforced_version", "Version in the cache, that enforcement loads (0: none)",
                       [(r, r.enforced) for r in lists])
        yield per_list("blocklist_list_newest_seen_version", "Newest version a verified manifest announced",
                       [(r, r.newest_seen) for r in lists])
        yield per_list("blocklist_list_lag_versions", "Versions behind the newest seen",
                       [(r, r.lag_versions) for r in lists])
        yield per_list("blocklist_list_lag_seconds", "Seconds since a newer version was seen, while behind",
                       [(r, r.lag_seconds) for r in lists])
        yield per_list("blocklist_list_entries", "Entries in the enforced version",
                       [(r, r.entries) for r in lists if r.entries is not None])
        yield per_list("blocklist_list_last_success_timestamp_seconds", "Last sync that left the list current",
                       [(r, r.last_success) for r in lists if r.last_success])
        yield per_list("blocklist_list_expiry_timestamp_seconds", "Expiry of the manifest behind the enforced version",
                       [(r, r.expires) for r in lists if r.expires])
        yield per_list("blocklist_breaker_open", "1 while the circuit breaker holds the cached version of a list "
                       "and the node enforces the previous one (plugin.yaml safety:; always 0 without it)",
                       [(r, int(r.breaker_open)) for r in lists if r.mode == "enforce"])
        yield from self._sync_samples(report)

        selftest = report.selftest
        if selftest is not None and isinstance(selftest.get("exit_code"), int):
            yield _gauge("blocklist_selftest_state", "The last selftest, as it exited: 0 OK (every stage blocks "
                         "the canary and passes the control), 2 CRITICAL, 3 UNKNOWN", [],
                         [([], selftest["exit_code"])])
            if isinstance(selftest.get("checked_at"), int | float):
                yield _gauge("blocklist_selftest_timestamp_seconds", "When the last selftest ran", [],
                             [([], selftest["checked_at"])])
        tally = metrics.total(self.config.cache_dir)
        blocks, monitor, bloom = tally.blocks, tally.monitor, tally.bloom
        if several:
            blocks, monitor, bloom = _with_source(blocks, 1), _with_source(monitor, 1), _with_source(bloom, 0)
        src = ["source"] if several else []
        yield _counter("blocklist_checks", "URL and host checks answered", ["component", "kind"], tally.checks)
        yield _counter("blocklist_blocks", "Checks answered 'blocked' (or sent to the proxy), by list",
                       ["component", "list", "action", *src], blocks)
        yield _counter("blocklist_invalid_requests", "Requests that could not be checked",
                       ["component"], tally.invalid)
        yield _counter("blocklist_local_decisions", "Checks the local policy decided (allow: un-blocked, "
                       "block: blocked what no list blocks)", ["component", "policy"], tally.local)
        yield _counter("blocklist_monitor_hits", "Checks a monitored list would have blocked (or, at stage 1, "
                       "sent to the proxy); it blocked nothing", ["component", "list", *src], monitor)
        yield _counter("blocklist_refused_requests", "Requests refused by a rule other than a list "
                       "(reason: connect_port, not_tls, destination)", ["component", "reason"], tally.refused)
        yield _counter("blocklist_bloom_hits", "Bloom filter hits the exact digests confirmed or refuted",
                       ["list", "outcome", *src], bloom)
        histogram = HistogramMetricFamily("blocklist_check_seconds", "Time to answer one check",
                                          labels=["component"])
        for component, values in sorted(tally.latency.items()):
            cumulative, buckets = 0.0, []
            for bound, count in zip([*(repr(b) for b in metrics.BUCKETS), "+Inf"], values, strict=False):
                cumulative += count
                buckets.append((bound, cumulative))
            histogram.add_metric([component], buckets, values[-1])
        yield histogram

    def _sync_samples(self, report: Report) -> Iterator[Metric]:
        """The manifest, the status file and the sync errors: the node's, or one sample per source."""
        if report.sources:
            yield _gauge("blocklist_source_state", "State of a source (its worst list): 0 OK, 1 WARNING, "
                         "2 CRITICAL, 3 UNKNOWN", ["source"], [([s.name], int(s.state)) for s in report.sources])
            yield _gauge("blocklist_manifest_version", "Version of the source's last verified manifest", ["source"],
                         [([s.name], s.manifest_version) for s in report.sources])
            yield _gauge("blocklist_status_updated_timestamp_seconds", "When sync last wrote the source's status",
                         ["source"], [([s.name], s.status_updated) for s in report.sources if s.status_updated])
            errors: Counter[tuple[str, ...]] = Counter()
            for s in report.sources:
                errors.update({(kind.value, s.name): 0 for kind in ERROR_KINDS})
                errors.update({(kind, s.name): count for kind, count in s.errors_total.items()})
            yield _counter("blocklist_sync_errors", "Sync attempts that failed, by kind and source",
                           ["kind", "source"], errors)
            return
        yield _gauge("blocklist_manifest_version", "Version of the last verified manifest", [],
                     [([], report.manifest_version)])
        if report.status_updated:
            yield _gauge("blocklist_status_updated_timestamp_seconds", "When sync last wrote its status", [],
                         [([], report.status_updated)])
        totals: Counter[tuple[str, ...]] = Counter({(kind.value,): 0 for kind in ERROR_KINDS})
        totals.update({(kind,): count for kind, count in report.errors_total.items()})
        yield _counter("blocklist_sync_errors", "Sync attempts that failed, by kind", ["kind"], totals)


def status_page(report: Report) -> str:
    """The HTML page: the state banner, one table row per list, the node's totals."""
    e = html.escape
    rows = []
    for report_row, row in zip(report.lists, table_rows(report), strict=True):
        reasons = f'<div class="reasons">{e(", ".join(report_row.reasons))}</div>' if report_row.reasons else ""
        cells = [f"<td>{e(row[0])}</td>",
                 f'<td><span class="state {row[1]}">{row[1]}</span>{reasons}</td>',
                 *(f'<td class="num">{e(cell)}</td>' for cell in row[2:6]),
                 *(f"<td>{e(cell)}</td>" for cell in row[6:])]
        rows.append(f"<tr>{''.join(cells)}</tr>")
    footer = []
    if report.status_updated:
        footer.append(f"status written {relative(report.status_updated, report.now)}")
    if report.manifest_version and not report.sources:
        footer.append(f"manifest v{report.manifest_version}")
    if report.errors_total:
        footer.append("sync errors: " + ", ".join(f"{k} {v}" for k, v in sorted(report.errors_total.items())))
    footer += [one.text(report.now) for one in report.sources]
    if report.policy_text():
        footer.append(report.policy_text())
    if report.selftest_text():
        footer.append(report.selftest_text())
    return scrub(_PAGE.substitute(
        refresh=REFRESH_SECONDS, node_id=e(report.node_id), state=report.state.name,
        summary=e(report.summary), checked_at=utc(report.now),
        headers="".join(f"<th>{e(h)}</th>" for h in HEADERS), rows="\n".join(rows),
        footer=e(" · ".join(footer))))


def _wants_html(request: web.Request) -> bool:
    fmt = request.query.get("format")
    if fmt in ("json", "html"):
        return fmt == "html"
    return "text/html" in request.headers.get("Accept", "")


async def healthz(request: web.Request) -> web.Response:
    """200 "ok" while a list is enforced (this process's, or the cache's without one), else 503."""
    live = request.app.get(LIVE)
    if live is not None:
        enforced = bool(live.matcher)
    else:
        states = Cache(request.app[CONFIG].cache_dir).list_states(request.app[CONFIG])
        enforced = any(isinstance(state, ListState) for state in states.values())
    if enforced:
        return web.Response(text="ok\n", headers=SECURITY_HEADERS)
    return web.Response(status=503, text="no list enforced\n", headers=SECURITY_HEADERS)


async def status(request: web.Request) -> web.Response:
    report = await asyncio.to_thread(gather, request.app[CONFIG])
    if _wants_html(request):
        return web.Response(text=status_page(report), content_type="text/html", headers=SECURITY_HEADERS)
    return web.Response(text=json.dumps(report.as_json(), indent=1), content_type="application/json",
                        headers=SECURITY_HEADERS)


async def selftest(request: web.Request) -> web.Response:
    """The last `selftest` result, as the command printed it with --json; 404 before the first."""
    doc = await asyncio.to_thread(Cache(request.app[CONFIG].cache_dir).selftest)
    if doc is None:
        doc, code = {"state": "UNKNOWN", "exit_code": 3, "summary": "no selftest has run on this node"}, 404
    else:
        code = 200
    return web.Response(status=code, text=json.dumps(doc, indent=1), content_type="application/json",
                        headers=SECURITY_HEADERS)


async def metrics_handler(request: web.Request) -> web.Response:
    data = await asyncio.to_thread(generate_latest, request.app[REGISTRY])
    return web.Response(body=data, headers={**SECURITY_HEADERS, "Content-Type": CONTENT_TYPE_LATEST})


async def index(request: web.Request) -> web.Response:
    raise web.HTTPFound("/status")


def make_admin_app(config: PluginConfig, live: LiveMatcher | None = None) -> web.Application:
    """The admin application; `live` is this process's matcher, if it enforces."""
    app = web.Application()
    app[CONFIG] = config
    if live is not None:
        app[LIVE] = live
        metrics.watch(live)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PluginCollector(config))
    ProcessCollector(registry=registry)
    app[REGISTRY] = registry
    app.router.add_get("/", index)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/status", status)
    app.router.add_get("/selftest", selftest)
    app.router.add_get("/metrics", metrics_handler)
    return app


async def start_admin(config: PluginConfig, live: LiveMatcher | None = None) -> web.AppRunner | None:
    """Serve the admin app on admin.listen; None when disabled or when the port is taken.

    A taken port is normal when another process of this node (the sync daemon
    or the proxy) already serves it: it shows the same files. The caller
    awaits `runner.cleanup()` on shutdown.
    """
    if config.admin.listen is None:
        return None
    host, port = parse_listen(config.admin.listen, "admin.listen")
    runner = web.AppRunner(make_admin_app(config, live), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        log.warning("admin: cannot listen on %s (%s); another process of this node may serve it",
                    config.admin.listen, exc.strerror or exc,
                    extra={"event": "admin_listen_failed", "listen": config.admin.listen,
                           "reason": str(exc.strerror or exc)})
        await runner.cleanup()
        return None
    log.info("admin: /healthz, /status, /selftest and /metrics on %s", config.admin.listen,
             extra={"event": "admin_started", "listen": config.admin.listen})
    return runner
