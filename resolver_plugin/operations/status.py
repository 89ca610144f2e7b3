"""`blocklist-plugin status`: judge this node's sync state, in the Nagios plugin style.

The enforced version of each list is what the cache holds (what every
enforcement process loads); the rest comes from the status file `sync` writes.
`evaluate` is pure; `gather` reads the files; `render` and `Report.as_json`
are the two outputs, shared by the CLI, the admin endpoint and /metrics.

Per configured list, the worst of:

    CRITICAL  no cached version ("no list"), or its state.json is unreadable;
              the circuit breaker holds the cached version (plugin.yaml `safety:`,
              resolver_plugin.breaker): the list and the version that tripped, and the
              previous version the node enforces instead (`enforced`);
              the manifest that announced it has expired;
              lag_versions >= warn_lag_versions for crit_lag_seconds or more;
              no successful sync for crit_lag_seconds or more
    WARNING   the same lag or silence past warn_lag_seconds;
              a sync was refused by verification (ErrorKind.is_verification: bad
              signature, rollback, expired, checksum, size, format) and no verified
              sync of the list has succeeded since: someone may be tampering or the
              hotline rotated its keys in a way this node cannot follow. Later
              network errors are shown beside it and never clear it;
              a cached list with no sync record at all;
              plugin.yaml pins a bare public key (from before root keys), not a root
    UNKNOWN   the status file is unreadable (a cached list cannot be judged)

and overall the worst list (UNKNOWN outranks WARNING, CRITICAL outranks all).
With several sources (plugin.yaml `sources:`) each source has its own status file and
is judged on its own: its lists (named "<source>/<list>"), its manifest, its errors
and, when its status file cannot be read, UNKNOWN with a reason that names it. The
node's state is the worst of them, and every reason names the list, so the source.
A monitored list (`lists: [{name, mode: monitor}]`) is judged the same way: it is synced
and will block once enforced. The report also shows the local policy (how many entries,
how many checks it decided) and what each monitored list would have blocked, from the
counters of every enforcing process (resolver_plugin.operations.metrics), and the last
`selftest` result (resolver_plugin.operations.selftest), which does not change the state:
the selftest is its own Nagios check, and a node does not alert twice for one fault.
Network errors alone are no problem until they make the node lag or go silent.
No output names the source or any other URL.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from blocklist.core.errors import BlocklistError, ConfigError, ErrorKind
from blocklist.core.severity import Severity, worst
from blocklist.core.table import render as render_table
from blocklist.core.timefmt import human_duration, relative, utc
from resolver_plugin.breaker import Trip, read_trip
from resolver_plugin.cache import Cache
from resolver_plugin.config import PluginConfig, SourceConfig, load_config
from resolver_plugin.operations import metrics
from resolver_plugin.operations.node_status import ListStatus, NodeStatus, read_status

BARE_KEY = "plugin.yaml pins a bare key, not a root: pin the output of `blocklist key export`"
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]+")


def scrub(text: str) -> str:
    """`text` with every URL replaced by "<url>": status output never names one."""
    return _URL.sub("<url>", text)


@dataclass(frozen=True)
class ListReport:
    name: str
    state: Severity
    reasons: tuple[str, ...]
    enforced: int              # from the cache; 0: none
    newest_seen: int
    lag_versions: int
    lag_seconds: float
    entries: int | None        # None when the status file describes another version
    last_success: float        # 0: never
    last_error: str | None
    last_error_kind: ErrorKind | None
    last_error_at: float
    expires: float             # 0: unknown
    refused: str | None = None  # a verification failure not yet repaired by a verified sync
    refused_kind: ErrorKind | None = None
    refused_at: float = 0.0
    mode: str = "enforce"        # or "monitor": never blocks
    breaker: Trip | None = None  # the circuit breaker's record about the cached version
    breaker_open: bool = False   # it holds that version: `enforced` is the previous one
    source: str = ""             # the source's name ("" in the one-source form)

    def as_json(self, now: float) -> dict[str, Any]:
        breaker = {**self.breaker.as_json(), "open": self.breaker_open} if self.breaker else None
        return {"list": self.name, **({"source": self.source} if self.source else {}), "mode": self.mode,
                "breaker": breaker, "state": self.state.name, "reasons": list(self.reasons),
                "enforced": self.enforced, "newest_seen": self.newest_seen,
                "lag_versions": self.lag_versions, "lag_seconds": round(self.lag_seconds, 3),
                "entries": self.entries, "last_success": self.last_success or None,
                "last_success_age": round(now - self.last_success, 3) if self.last_success else None,
                "last_error": self.last_error, "last_error_kind": self.last_error_kind,
                "last_error_at": self.last_error_at or None,
                "refused": self.refused, "refused_kind": self.refused_kind, "refused_at": self.refused_at or None,
                "expires": self.expires or None,
                "expires_in": round(self.expires - now, 3) if self.expires else None}


@dataclass(frozen=True)
class SourceReport:
    """One source of a node with `sources:`: its state (the worst of its lists), manifest and errors."""

    name: str
    state: Severity
    problem: str | None = None          # why its status file cannot be read
    status_updated: float = 0.0
    manifest_version: int = 0
    manifest_expires: float = 0.0
    errors_total: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"source": self.name, "state": self.state.name, "problem": self.problem,
                "status_updated": self.status_updated or None,
                "manifest": {"version": self.manifest_version, "expires": self.manifest_expires or None},
                "errors_total": dict(sorted(self.errors_total.items()))}

    def text(self, now: float) -> str:
        parts = [f"source {self.name} {self.state.name}"]
        if self.status_updated:
            parts.append(f"status written {relative(self.status_updated, now)}")
        if self.manifest_version:
            parts.append(f"manifest v{self.manifest_version}")
        if self.errors_total:
            parts.append("sync errors: " + ", ".join(f"{k} {v}" for k, v in sorted(self.errors_total.items())))
        return ", ".join(parts)


@dataclass(frozen=True)
class Report:
    now: float
    node_id: str
    lists: tuple[ListReport, ...]
    problem: str | None = None            # why the node's state cannot be read
    status_updated: float = 0.0
    manifest_version: int = 0
    manifest_expires: float = 0.0
    errors_total: dict[str, int] = field(default_factory=dict)
    thresholds: dict[str, int] = field(default_factory=dict)
    local_entries: dict[str, int] = field(default_factory=dict)    # "allow"/"block" -> entries in plugin.yaml
    local_decisions: dict[str, int] = field(default_factory=dict)  # "allow"/"block" -> checks it decided
    monitor_hits: dict[str, int] = field(default_factory=dict)     # monitored list -> would-be blocks
    sources: tuple[SourceReport, ...] = ()  # with plugin.yaml `sources:`, one per source
    selftest: dict[str, Any] | None = None  # the last `selftest` result, as it kept it; None: never run

    @property
    def state(self) -> Severity:
        return worst([r.state for r in self.lists] + ([Severity.UNKNOWN] if self.problem else []))

    @property
    def summary(self) -> str:
        problems = [f"{r.name}: {', '.join(r.reasons)}" for r in self.lists if r.state is not Severity.OK]
        if self.problem:
            problems.insert(0, self.problem)
        if problems:
            return "; ".join(problems)
        return ", ".join(f"{r.name} v{r.enforced}" for r in self.lists) + " in sync"

    def perfdata(self) -> str:
        t = self.thresholds
        return " ".join(f"{r.name}_version={r.enforced} {r.name}_lag_versions={r.lag_versions} "
                        f"{r.name}_lag_seconds={int(r.lag_seconds)}s;{t.get('warn_lag_seconds', '')};"
                        f"{t.get('crit_lag_seconds', '')}" for r in self.lists)

    def as_json(self) -> dict[str, Any]:
        return {"state": self.state.name, "exit_code": int(self.state), "summary": self.summary,
                "checked_at": self.now, "node_id": self.node_id, "problem": self.problem,
                "status_updated": self.status_updated or None,
                "manifest": {"version": self.manifest_version, "expires": self.manifest_expires or None},
                "errors_total": dict(sorted(self.errors_total.items())),
                "thresholds": self.thresholds,
                "local": {"entries": self.local_entries, "decisions": self.local_decisions},
                "monitor_hits": self.monitor_hits,
                **({"sources": [s.as_json() for s in self.sources]} if self.sources else {}),
                "selftest": self.selftest_summary(),
                "lists": [r.as_json(self.now) for r in self.lists]}

    def selftest_summary(self) -> dict[str, Any] | None:
        """The last selftest's state, summary and time (its probes: the admin endpoint's /selftest)."""
        doc = self.selftest
        if doc is None:
            return None
        at = doc.get("checked_at")
        age = round(self.now - at, 3) if isinstance(at, int | float) else None
        return {"state": doc.get("state"), "exit_code": doc.get("exit_code"), "summary": doc.get("summary"),
                "checked_at": at, "age": age}

    def selftest_text(self) -> str:
        """One line on the last selftest ("" when none has run)."""
        doc = self.selftest_summary()
        if doc is None:
            return ""
        at = doc["checked_at"]
        when = f" {relative(at, self.now)}" if isinstance(at, int | float) else ""
        return f"last selftest{when}: {doc['state']} - {doc['summary']}"

    def policy_text(self) -> str:
        """The local policy and the monitored lists in one line ("" when the node has neither)."""
        parts = []
        if any(self.local_entries.values()):
            e, d = self.local_entries, self.local_decisions
            parts.append(f"local policy: {e.get('allow', 0)} allow, {e.get('block', 0)} block entries "
                         f"(decided: {d.get('allow', 0)} allowed, {d.get('block', 0)} blocked)")
        if self.monitor_hits:
            parts.append("monitor: " + ", ".join(f"{n} would have blocked {c}"
                                                 for n, c in sorted(self.monitor_hits.items())))
        return "; ".join(parts)


def _judge_list(config: PluginConfig, source: SourceConfig, name: str, ls: ListStatus, status: str,
                enforced: int, cache_error: str | None, manifest_expires: float,
                now: float) -> ListReport:
    """One list; `status` is "read", "missing" or "unreadable" (the status file)."""
    t = config.status
    newest = max(ls.newest_seen, enforced)
    lag_versions = newest - enforced
    lag_seconds = max(0.0, now - ls.newest_seen_at) if lag_versions and ls.newest_seen_at else 0.0
    expires = ls.expires or (manifest_expires if enforced else 0.0)
    found: list[tuple[Severity, str]] = []

    def over(seconds: float, what: str) -> None:
        if seconds >= t.crit_lag_seconds:
            found.append((Severity.CRITICAL, what))
        elif seconds >= t.warn_lag_seconds:
            found.append((Severity.WARNING, what))

    kind = ls.last_error_kind
    refusal = ls.standing_refusal() if status == "read" else None
    if cache_error:
        found.append((Severity.CRITICAL, "cached list unreadable"))
    elif not enforced:
        found.append((Severity.CRITICAL, f"no list (last sync failed: {kind})" if kind else "no list"))
    if expires and expires <= now:
        found.append((Severity.CRITICAL, f"expired {relative(expires, now)}"))
    if status == "read":
        if lag_versions and lag_versions >= t.warn_lag_versions:
            plural = "" if lag_versions == 1 else "s"
            over(lag_seconds, f"{lag_versions} version{plural} behind for {human_duration(lag_seconds)}")
        if ls.last_success:
            over(now - ls.last_success, f"no successful sync for {human_duration(now - ls.last_success)}")
        elif enforced:
            found.append((Severity.WARNING, "no successful sync recorded"))
        if refusal is not None:
            later = kind if kind is not None and ls.last_error_at > refusal.at else None
            found.append((Severity.WARNING, f"sync refused ({refusal.kind})"
                          + (f", not repaired; latest error: {later}" if later and not later.is_verification
                             else "")))
    elif enforced and status == "unreadable":
        found.append((Severity.UNKNOWN, "status unreadable"))
    elif enforced:
        found.append((Severity.WARNING, "no sync status yet (has `sync` run?)"))
    if source.anchor.bare_key:
        found.append((Severity.WARNING, BARE_KEY))
    return ListReport(
        name=name, state=worst(s for s, _ in found), reasons=tuple(r for _, r in found),
        enforced=enforced, newest_seen=newest, lag_versions=lag_versions, lag_seconds=lag_seconds,
        entries=ls.entries if status == "read" and ls.version == enforced and enforced else None,
        last_success=ls.last_success, last_error=scrub(ls.last_error) if ls.last_error else None,
        last_error_kind=kind, last_error_at=ls.last_error_at, expires=expires,
        refused=scrub(refusal.error) if refusal else None, refused_kind=refusal.kind if refusal else None,
        refused_at=refusal.at if refusal else 0.0, source=source.name)


# What `gather` read of one source's status file: the status (None: none yet or unreadable) and why unreadable.
SourceRecord = tuple[NodeStatus | None, str | None]


def evaluate(config: PluginConfig, status: NodeStatus | None, cached_versions: Mapping[str, int | None],
             now: float, *, status_error: str | None = None,
             cache_errors: Mapping[str, str] | None = None, tally: metrics.Tally | None = None,
             records: Mapping[str, SourceRecord] | None = None, trips: Mapping[str, Trip] | None = None,
             selftest: dict[str, Any] | None = None) -> Report:
    """Judge every configured list; pure: the caller reads the files (see `gather`).

    `cached_versions` maps a list (by its node name) to its cached version (None: not
    cached); `status` and `status_error` are the status file of the one-source form, or
    `records` maps each source's name to its own; `cache_errors` says which lists' cache
    state could not be read; `tally` holds the node's counters; `trips` the circuit
    breaker's records about each list's cached version; `selftest` the last selftest result.
    """
    cache_errors = cache_errors or {}
    if records is None:
        records = {config.sources[0].name: (status, status_error)}
    reports: list[ListReport] = []
    sources: list[SourceReport] = []
    for source in config.sources:
        st, error = records.get(source.name, (None, None))
        how = "read" if st is not None else "unreadable" if error else "missing"
        mine = []
        for name in source.lists:
            label = source.qualified(name)
            ls = st.lists.get(name, ListStatus()) if st else ListStatus()
            enforced = 0 if label in cache_errors else (cached_versions.get(label) or 0)
            report = _judge_list(config, source, label, ls, how, enforced, cache_errors.get(label),
                                 st.manifest.expires if st else 0.0, now)
            if label in config.monitored:
                report = dataclasses.replace(report, mode="monitor")
            elif trip := (trips or {}).get(label):
                report = _with_breaker(report, trip)
            mine.append(report)
        reports += mine
        problem = scrub(f"{source.name + ': ' if source.name else ''}status unreadable: {error}") if error else None
        sources.append(SourceReport(
            name=source.name, problem=problem,
            state=worst([r.state for r in mine] + ([Severity.UNKNOWN] if problem else [])),
            status_updated=st.updated if st else 0.0, manifest_version=st.manifest.version if st else 0,
            manifest_expires=st.manifest.expires if st else 0.0, errors_total=dict(st.errors_total) if st else {}))
    t = config.status
    decided: dict[str, int] = {"allow": 0, "block": 0}
    hits = dict.fromkeys(sorted(config.monitored), 0)
    for (_, policy), count in (tally.local if tally else {}).items():
        decided[policy] = decided.get(policy, 0) + int(count)
    for (_, name), count in (tally.monitor if tally else {}).items():
        if name in hits:
            hits[name] += int(count)
    errors: dict[str, int] = {}
    for one in sources:
        for kind, count in one.errors_total.items():
            errors[kind] = errors.get(kind, 0) + count
    first = sources[0]
    problems = [one.problem for one in sources if one.problem]
    return Report(now=now, node_id=config.node_id, lists=tuple(reports),
                  problem="; ".join(problems) if problems else None,
                  status_updated=max(one.status_updated for one in sources),
                  manifest_version=first.manifest_version, manifest_expires=first.manifest_expires,
                  errors_total=errors,
                  thresholds={"warn_lag_seconds": t.warn_lag_seconds, "crit_lag_seconds": t.crit_lag_seconds,
                              "warn_lag_versions": t.warn_lag_versions},
                  local_entries={"allow": len(config.local.allow), "block": len(config.local.block)},
                  local_decisions=decided, monitor_hits=hits,
                  sources=tuple(sources) if config.several_sources else (), selftest=selftest)


def _with_breaker(report: ListReport, trip: Trip) -> ListReport:
    """`report` with the breaker's record about its cached version; CRITICAL while it holds it."""
    if not trip.holds(report.enforced):
        return dataclasses.replace(report, breaker=trip)
    reason = (f"circuit breaker open: v{trip.version} blocked {trip.blocks} of {trip.requests} requests "
              f"({trip.ratio:.0%} > {trip.max_block_ratio:.0%}, {trip.by}); enforcing v{trip.fallback} "
              f"until a newer version or `breaker reset {report.name}`")
    return dataclasses.replace(report, state=Severity.CRITICAL, reasons=(reason, *report.reasons),
                               enforced=trip.fallback, breaker=trip, breaker_open=True,
                               lag_versions=report.newest_seen - trip.fallback, entries=None)


def gather(config: PluginConfig, now: float | None = None) -> Report:
    """Read the cache states and every source's status file, and `evaluate` them."""
    now = time.time() if now is None else now
    cache = Cache(config.cache_dir)
    cached: dict[str, int | None] = {}
    cache_errors: dict[str, str] = {}
    for name, state in cache.list_states(config).items():
        if isinstance(state, BlocklistError):
            cache_errors[name] = str(state)
        else:
            cached[name] = state.version if state else None
    records: dict[str, SourceRecord] = {}
    for source in config.sources:
        path = cache.source(source.name).status_file
        try:
            records[source.name] = (read_status(path), None)
        except OSError as exc:
            records[source.name] = (None, f"{path}: {exc.strerror}")
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            records[source.name] = (None, f"{path}: corrupt ({type(exc).__name__})")
    trips: dict[str, Trip] = {}
    for name in config.lists if config.safety.enabled else ():
        trip = read_trip(cache.breaker_dir, name)
        if trip is not None and trip.version == cached.get(name):
            trips[name] = trip
    tally = metrics.total(config.cache_dir) if config.local or config.monitored else None
    return evaluate(config, None, cached, now, cache_errors=cache_errors, tally=tally, records=records, trips=trips,
                    selftest=cache.selftest())


def _lag_text(r: ListReport) -> str:
    if not r.lag_versions:
        return "-"
    text = f"{r.lag_versions} version{'' if r.lag_versions == 1 else 's'}"
    return text + (f", {human_duration(r.lag_seconds)}" if r.lag_seconds else "")


def _short(text: str, width: int) -> str:
    return text if not width or len(text) <= width else text[:width - 3] + "..."


def table_rows(report: Report, error_width: int = 0) -> list[list[str]]:
    """One row of display texts per list, for the terminal table and the HTML page.

    `error_width` shortens the last error's text to that many characters (0: never).
    """
    now = report.now
    return [[r.name if r.mode == "enforce" else f"{r.name} ({r.mode})", r.state.name,
             str(r.enforced) if r.enforced else "none",
             str(r.newest_seen) if r.newest_seen else "-", _lag_text(r),
             "-" if r.entries is None else str(r.entries),
             relative(r.last_success, now) if r.last_success else "never", _errors_text(r, now, error_width),
             f"{utc(r.expires)} ({relative(r.expires, now)})" if r.expires else "-"]
            for r in report.lists]


def _errors_text(r: ListReport, now: float, width: int) -> str:
    """The latest error, and the standing refusal when that is another one."""
    texts = [f"{_short(r.last_error, width)} ({relative(r.last_error_at, now)})"] if r.last_error else []
    if r.refused and (r.refused, r.refused_at) != (r.last_error, r.last_error_at):
        texts.append(f"refused: {_short(r.refused, width)} ({relative(r.refused_at, now)})")
    return "; ".join(texts) or "-"


HEADERS = ("LIST", "STATE", "ENFORCED", "NEWEST SEEN", "LAG", "ENTRIES", "LAST SYNC", "LAST ERROR", "EXPIRES")


def render(report: Report) -> str:
    """The terminal form: the Nagios line (with perfdata), the table, the node's totals."""
    lines = [f"BLOCKLIST {report.state.name} - {report.summary} | {report.perfdata()}".rstrip(" |")]
    if report.lists:
        lines += ["", render_table(HEADERS, table_rows(report, error_width=48))]
    footer = f"node {report.node_id}"
    if report.status_updated:
        footer += f", status written {relative(report.status_updated, report.now)}"
    if report.manifest_version and not report.sources:
        footer += f", manifest v{report.manifest_version}"
    if report.errors_total:
        footer += ", sync errors: " + ", ".join(f"{k} {v}" for k, v in sorted(report.errors_total.items()))
    lines += ["", footer, *(one.text(report.now) for one in report.sources)]
    if report.policy_text():
        lines.append(report.policy_text())
    if report.selftest_text():
        lines.append(report.selftest_text())
    return scrub("\n".join(lines))


def run_status(config_path: Path, as_json: bool = False) -> int:
    """The `status` command: print the report, return its Nagios exit code."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        summary = scrub(f"config: {exc}")
        if as_json:
            click.echo(json.dumps({"state": "UNKNOWN", "exit_code": 3, "summary": summary, "lists": []}))
        else:
            click.echo(f"BLOCKLIST UNKNOWN - {summary}")
        return int(Severity.UNKNOWN)
    report = gather(config)
    click.echo(json.dumps(report.as_json(), indent=1) if as_json else render(report))
    return int(report.state)
