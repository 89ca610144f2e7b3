"""Which node enforces which version: the registered nodes' verified polls, and `blocklist fleet`.

Every manifest poll names its node (header X-Blocklist-Node), the list
versions it enforces (X-Blocklist-Have: "iwf=3,other=5") and proves the node's
credential (X-Blocklist-Proof); serve records the last verified poll of every
registered node in <home>/fleet.sqlite (blocklist.nodes). Polls of anyone else
are served and never recorded.

`fleet_report` judges the registered nodes against the published manifest, in
the Nagios style the plugin's `status` uses too:

    OK        every node polled within fleet_silent_seconds and enforces the
              published version of every list it reports
    WARNING   a node is LAGGING (reports an older version than published),
              SILENT (no poll for fleet_silent_seconds) or NEVER REPORTED
              (registered, no verified poll yet: not set up, or a wrong token)
    CRITICAL  nothing is published, the published manifest has expired (every
              node will soon report CRITICAL), or every node that has reported
              is silent (`blocklist serve` or the network in front of it is likely down)
    UNKNOWN   the records cannot be read (the CLI's store error, exit 3)

A node is LAGGING from the moment a version is published until its next poll
reports it, usually seconds with long-polling: give a Nagios check a few retries
(max_check_attempts) rather than a grace period here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from blocklist.core.severity import Severity, worst
from blocklist.core.table import render
from blocklist.core.timefmt import human_duration, relative, utc
from blocklist.home import Home
from blocklist.nodes import FleetStore, NodeRecord
from blocklist.publish import current_manifest

MAX_NAMED = 5  # nodes named in the summary line

# ----------------------------------------------------------------------------- the fleet report

@dataclass(frozen=True)
class NodeReport:
    node_id: str
    remote: str
    first_seen: float              # 0 with last_seen and polls: never reported
    last_seen: float
    polls: int
    versions: dict[str, int]       # what the node reported
    lag: dict[str, int]            # list -> versions behind the published one (published lists it reports)
    silent: bool                   # reported, but not for fleet_silent_seconds
    created: float = 0.0           # when `blocklist node add` registered it

    @property
    def reported(self) -> bool:
        return self.polls > 0

    @property
    def lagging(self) -> bool:
        return any(self.lag.values())

    @property
    def flags(self) -> list[str]:
        return [flag for flag, on in (("NEVER REPORTED", not self.reported), ("SILENT", self.silent),
                                      ("LAGGING", self.lagging)) if on]


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
        return (f"{count} node{'' if count == 1 else 's'}, all in sync" if count
                else "no node registered (`blocklist node add`)")

    def _findings(self) -> list[tuple[Severity, str]]:
        found: list[tuple[Severity, str]] = []
        if not self.manifest_version:
            found.append((Severity.CRITICAL, "nothing published"))
        elif self.manifest_expires <= self.now:
            found.append((Severity.CRITICAL, f"published manifest expired {relative(self.manifest_expires, self.now)}"))
        reported = [n for n in self.nodes if n.reported]
        if reported and all(n.silent for n in reported):
            found.append((Severity.CRITICAL, f"all {len(reported)} reporting nodes silent"))
        node_problems = []
        for n in self.nodes:
            parts = [] if n.reported else ["NEVER REPORTED"]
            if n.silent:
                parts.append(f"SILENT {human_duration(self.now - n.last_seen)}")
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
            "nodes": [{"node_id": n.node_id, "created": n.created, "reported": n.reported, "remote": n.remote,
                       "first_seen": n.first_seen or None, "last_seen": n.last_seen or None,
                       "last_seen_age": round(self.now - n.last_seen, 3) if n.reported else None,
                       "polls": n.polls, "versions": n.versions, "lag_versions": n.lag,
                       "silent": n.silent, "lagging": n.lagging, "flags": n.flags}
                      for n in self.nodes],
        }


def judge(records: list[NodeRecord], published: dict[str, int], silent_seconds: int, now: float,
          manifest_version: int = 0, manifest_expires: float = 0.0) -> FleetReport:
    """The pure part of `fleet_report`: the registered nodes' polls against the published versions."""
    nodes = [NodeReport(node_id=r.node_id, remote=r.remote, first_seen=r.first_seen,
                        last_seen=r.last_seen, polls=r.polls, versions=dict(r.versions),
                        lag={name: max(0, published[name] - version)
                             for name, version in sorted(r.versions.items()) if name in published},
                        silent=r.reported and now - r.last_seen >= silent_seconds, created=r.created)
             for r in records]
    return FleetReport(now=now, silent_seconds=silent_seconds, published=published,
                       manifest_version=manifest_version, manifest_expires=manifest_expires, nodes=nodes)


def fleet_report(home: Home, now: float | None = None) -> FleetReport:
    """Every registered node, judged against <home>/publish/manifest.json."""
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
                lag, version = node.lag[name], node.versions[name]
                cells.append(f"{version or 'none'}" + (f" ({lag} behind)" if lag else ""))
        rows.append([node.node_id, " ".join(node.flags) or "OK",
                     relative(node.last_seen, report.now) if node.reported else "never", str(node.polls), *cells])
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
        lines.append("no node is registered: `blocklist node add NODE_ID`, then node_token_file in its plugin.yaml")
    else:
        lines += ["", render(*fleet_table(report))]
    return "\n".join(lines)
