"""Which node enforces which version: the poll records `blocklist serve` keeps, and `blocklist fleet`.

Every manifest poll names its node (header X-Blocklist-Node) and the list
versions it enforces (X-Blocklist-Have: "iwf=3,other=5"); serve records the
last poll of every node in <home>/fleet.sqlite.

`fleet_report` judges the records against the published manifest, in the
Nagios style the plugin's `status` uses too:

    OK        every node polled within fleet_silent_seconds and enforces the
              published version of every list it reports
    WARNING   a node is LAGGING (reports an older version than published) or
              SILENT (no poll for fleet_silent_seconds)
    CRITICAL  nothing is published, the published manifest has expired (every
              node will soon report CRITICAL), or every node is silent
              (`blocklist serve` or the network in front of it is likely down)
    UNKNOWN   the records cannot be read (the CLI's store error, exit 3)

A node is LAGGING from the moment a version is published until its next poll
reports it, usually seconds with long-polling: give a Nagios check a few retries
(max_check_attempts) rather than a grace period here.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blocklist.core.errors import StoreError
from blocklist.core.severity import Severity, worst
from blocklist.core.table import render
from blocklist.core.timefmt import human_duration, relative, utc
from blocklist.home import Home
from blocklist.publish import current_manifest

MAX_NAMED = 5  # nodes named in the summary line

SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    node_id TEXT PRIMARY KEY,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    remote TEXT NOT NULL DEFAULT '',
    versions TEXT NOT NULL DEFAULT '{}',
    polls INTEGER NOT NULL DEFAULT 0
);
"""


# ----------------------------------------------------------------------------- poll records

@dataclass(frozen=True)
class NodeRecord:
    node_id: str
    first_seen: float
    last_seen: float
    remote: str
    versions: dict[str, int]
    polls: int


class FleetStore:
    def __init__(self, path: Path) -> None:
        try:
            self.db = sqlite3.connect(path, isolation_level=None, timeout=10, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: cannot open the fleet records: {exc}") from None

    def record_poll(self, node_id: str, versions: dict[str, int], remote: str,
                    at: float | None = None) -> None:
        at = time.time() if at is None else at
        self.db.execute(
            "INSERT INTO nodes (node_id, first_seen, last_seen, remote, versions, polls) "
            "VALUES (?, ?, ?, ?, ?, 1) ON CONFLICT(node_id) DO UPDATE SET "
            "last_seen = excluded.last_seen, remote = excluded.remote, "
            "versions = excluded.versions, polls = polls + 1",
            (node_id, at, at, remote, json.dumps(versions, sort_keys=True)))

    def nodes(self) -> list[NodeRecord]:
        try:
            rows = self.db.execute("SELECT node_id, first_seen, last_seen, remote, versions, polls "
                                   "FROM nodes ORDER BY node_id").fetchall()
            return [NodeRecord(n, first, last, r, json.loads(v), p) for n, first, last, r, v, p in rows]
        except (sqlite3.Error, ValueError) as exc:
            raise StoreError(f"cannot read the fleet records: {exc}") from None

    def forget(self, node_ids: Iterable[str]) -> None:
        """Drop decommissioned nodes' records, all or none; StoreError names one that never polled."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for node_id in node_ids:
                if self.db.execute("DELETE FROM nodes WHERE node_id = ?", (node_id,)).rowcount == 0:
                    raise StoreError(f"no node named {node_id!r} has polled; nothing forgotten")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()


# ----------------------------------------------------------------------------- the fleet report

@dataclass(frozen=True)
class NodeReport:
    node_id: str
    remote: str
    first_seen: float
    last_seen: float
    polls: int
    versions: dict[str, int]       # what the node reported
    lag: dict[str, int]            # list -> versions behind the published one (published lists it reports)
    silent: bool

    @property
    def lagging(self) -> bool:
        return any(self.lag.values())

    @property
    def flags(self) -> list[str]:
        return [flag for flag, on in (("SILENT", self.silent), ("LAGGING", self.lagging)) if on]


@dataclass(frozen=True)
class FleetReport:
    now: float
    silent_seconds: int
    published: dict[str, int]               # list -> published version
    manifest_version: int = 0
    manifest_expires: float = 0.0
    nodes: list[NodeReport] = field(default_factory=list)

    @property
    def state(self) -> Severity:
        return worst(state for state, _ in self._findings())

    @property
    def summary(self) -> str:
        problems = [text for state, text in self._findings() if state is not Severity.OK]
        if problems:
            return "; ".join(problems)
        count = len(self.nodes)
        return f"{count} node{'' if count == 1 else 's'}, all in sync" if count else "no node has polled yet"

    def _findings(self) -> list[tuple[Severity, str]]:
        found: list[tuple[Severity, str]] = []
        if not self.manifest_version:
            found.append((Severity.CRITICAL, "nothing published"))
        elif self.manifest_expires <= self.now:
            found.append((Severity.CRITICAL, f"published manifest expired {relative(self.manifest_expires, self.now)}"))
        if self.nodes and all(n.silent for n in self.nodes):
            found.append((Severity.CRITICAL, f"all {len(self.nodes)} nodes silent"))
        node_problems = []
        for n in self.nodes:
            parts = [f"SILENT {human_duration(self.now - n.last_seen)}"] if n.silent else []
            if n.lagging:
                parts.append("LAGGING (" + ", ".join(f"{name} {lag} behind"
                                                     for name, lag in sorted(n.lag.items()) if lag) + ")")
            if parts:
                node_problems.append(f"{n.node_id} {', '.join(parts)}")
        if len(node_problems) > MAX_NAMED:  # a Nagios line, not a report: the table has them all
            node_problems[MAX_NAMED:] = [f"and {len(node_problems) - MAX_NAMED} more nodes"]
        found += [(Severity.WARNING, text) for text in node_problems]
        return found

    def as_json(self) -> dict[str, Any]:
        return {
            "state": self.state.name, "exit_code": int(self.state), "summary": self.summary,
            "checked_at": self.now, "silent_seconds": self.silent_seconds,
            "manifest": {"version": self.manifest_version, "expires": self.manifest_expires},
            "published": self.published,
            "nodes": [{"node_id": n.node_id, "remote": n.remote, "first_seen": n.first_seen,
                       "last_seen": n.last_seen, "last_seen_age": round(self.now - n.last_seen, 3),
                       "polls": n.polls, "versions": n.versions, "lag_versions": n.lag,
                       "silent": n.silent, "lagging": n.lagging, "flags": n.flags}
                      for n in self.nodes],
        }


def judge(records: list[NodeRecord], published: dict[str, int], silent_seconds: int, now: float,
          manifest_version: int = 0, manifest_expires: float = 0.0) -> FleetReport:
    """The pure part of `fleet_report`: poll records against the published versions."""
    nodes = [NodeReport(node_id=r.node_id, remote=r.remote, first_seen=r.first_seen,
                        last_seen=r.last_seen, polls=r.polls, versions=dict(r.versions),
                        lag={name: max(0, published[name] - version)
                             for name, version in sorted(r.versions.items()) if name in published},
                        silent=now - r.last_seen >= silent_seconds)
             for r in records]
    return FleetReport(now=now, silent_seconds=silent_seconds, published=published,
                       manifest_version=manifest_version, manifest_expires=manifest_expires, nodes=nodes)


def fleet_report(home: Home, now: float | None = None) -> FleetReport:
    """Every node that polled `blocklist serve`, judged against <home>/publish/manifest.json."""
    home.require()
    now = time.time() if now is None else now
    manifest = current_manifest(home, home.signing_key())
    store = FleetStore(home.fleet_path)
    try:
        records = store.nodes()
    finally:
        store.close()
    published = {name: ref.version for name, ref in sorted(manifest.lists.items())} if manifest else {}
    return judge(records, published, home.config().fleet_silent_seconds, now,
                 manifest.version if manifest else 0, manifest.expires if manifest else 0.0)


def fleet_table(report: FleetReport) -> tuple[list[str], list[list[str]]]:
    """Headers and display rows (one per node, a column per list), for the terminal and the web page."""
    names = list(report.published) + sorted({n for node in report.nodes for n in node.versions}
                                            - set(report.published))
    rows = []
    for node in report.nodes:
        cells = []
        for name in names:
            if name not in node.versions:
                cells.append("-")
            elif name not in report.published:
                cells.append(f"{node.versions[name]} (not published)")
            else:
                lag = node.lag[name]
                cells.append(f"{node.versions[name]}" + (f" ({lag} behind)" if lag else ""))
        rows.append([node.node_id, " ".join(node.flags) or "OK", relative(node.last_seen, report.now),
                     str(node.polls), *cells])
    return ["NODE", "STATE", "LAST SEEN", "POLLS", *names], rows


def published_line(report: FleetReport) -> str:
    if not report.manifest_version:
        return "nothing published yet"
    return ("published: " + (", ".join(f"{n} v{v}" for n, v in report.published.items()) or "no lists")
            + f" (manifest v{report.manifest_version}, expires {utc(report.manifest_expires)}, "
            f"{relative(report.manifest_expires, report.now)})")


def render_fleet(report: FleetReport) -> str:
    """The terminal form: a Nagios-style first line, what is published, one row per node."""
    lines = [f"FLEET {report.state.name} - {report.summary}", published_line(report)]
    if not report.nodes:
        lines.append("no node has polled `blocklist serve` yet")
    else:
        lines += ["", render(*fleet_table(report))]
    return "\n".join(lines)
