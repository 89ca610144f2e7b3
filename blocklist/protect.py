"""Protected hosts: names no entry may block whole, the guard rail against listing a popular site by mistake.

Protecting a host covers its subdomains. An entry blocks one of those names whole
when it is a domain entry on the host, on a parent of it or on a name below it, or
a folder entry at the root path "/" of the host or of a name below it. `blocklist
add`, `import` and `revert` refuse such an entry, naming the protected host, unless
forced with a reason, which the audit log keeps. An entry below a protected host (a
page, or a folder below "/") is accepted; stage 1 then steers that whole host through
the filtering proxy, which `blocklist publish --dry-run` flags.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from blocklist.core.digests import Entry, Reach, Scope, domain_keys, is_ip, www_base
from blocklist.core.errors import BlocklistError, InvalidURL
from blocklist.core.urls import canonicalize_host
from blocklist.importer import ImportFileError
from blocklist.store import ListInfo, Refused, Store

# How many protected names below one domain entry a refusal names (one is enough to refuse).
NAMES_BELOW = 3


class Protection(NamedTuple):
    host: str
    reason: str
    added_by: str
    added_at: int

    def as_json(self) -> dict[str, Any]:
        return self._asdict()


def canonical_host(text: str) -> str:
    """The host as entries and the matcher see it; InvalidURL if it is none or a single label."""
    host = canonicalize_host(text.strip())
    if "." not in host and not is_ip(host):
        raise InvalidURL(f"a protected host needs at least two labels: {host!r}")
    return host


def protections(store: Store) -> list[Protection]:
    return [Protection(*row) for row in
            store.db.execute("SELECT host, reason, added_by, added_at FROM protected ORDER BY rhost")]


def add(store: Store, hosts: Iterable[str], reason: str, actor: str, source: str = "") -> tuple[list[str], list[str]]:
    """Protect canonical `hosts`; returns (added, already protected). Inside a transaction.

    One audit record per host, or one for a whole file when `source` names it.
    """
    now = int(time.time())
    added: list[str] = []
    already: list[str] = []
    for host in dict.fromkeys(hosts):
        cur = store.db.execute("INSERT OR IGNORE INTO protected VALUES (?, ?, ?, ?, ?)",
                               (host, host[::-1], reason, actor, now))
        (added if cur.rowcount else already).append(host)
        if cur.rowcount and not source:
            store.audit(actor, "protect-add", "", {"host": host, "reason": reason})
    if source:
        store.audit(actor, "protect-import", "", {"file": source, "added": len(added),
                                                  "already_protected": len(already), "reason": reason})
    return added, already


def remove(store: Store, hosts: Iterable[str], actor: str, reason: str = "") -> int:
    """Unprotect canonical `hosts`, all or none (Refused naming those not protected)."""
    hosts = list(dict.fromkeys(hosts))
    missing = [h for h in hosts if store.db.execute("SELECT 1 FROM protected WHERE host = ?", (h,)).fetchone() is None]
    if missing:
        raise Refused(f"not protected: {', '.join(missing)}; nothing removed")
    for host in hosts:
        store.db.execute("DELETE FROM protected WHERE host = ?", (host,))
        store.audit(actor, "protect-remove", "", {"host": host, "reason": reason})
    return len(hosts)


def parse_file(path: Path) -> list[str]:
    """The canonical hosts of a file, one a line, or ImportFileError naming every bad line.

    "#" starts a comment. A line "RANK,HOST" (the form of top-sites lists such as
    Tranco's) gives HOST.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ImportFileError(str(path), [f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})"]) from None
    hosts, problems = [], []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        rank, comma, rest = text.partition(",")
        if comma and rank.strip().isdigit():
            text = rest.strip()
        try:
            hosts.append(canonical_host(text))
        except BlocklistError as exc:
            problems.append(f"{path}:{number}: {exc}")
    if problems:
        raise ImportFileError(str(path), problems)
    return hosts


def blocks_whole(entry: Entry) -> bool:
    """Whether the entry blocks its host whole: a domain entry, or a folder entry at "/"."""
    return entry.scope is Scope.DOMAIN or (entry.scope is Scope.FOLDER and entry.key == entry.host + "/")


@dataclass(frozen=True)
class Hit:
    """An entry that touches a protected host: blocks a protected name whole, or lies below one."""

    protected: str
    entry: Entry

    @property
    def whole(self) -> bool:
        return blocks_whole(self.entry)

    def describe(self) -> str:
        e, p = self.entry, self.protected
        what = f"{e.url} ({e.scope.value})"
        if not self.whole:
            return f"{what} is below protected host {p}: stage 1 steers all of {e.host} through the filtering proxy"
        if e.scope is Scope.FOLDER:
            if e.host == p or (e.reach is Reach.TWIN and www_base(p) == e.host):  # the host or its www. twin
                return f"{what} would block every page of protected host {p}"
            return f"{what} would block every page of {e.host}, a name below protected host {p}"
        if e.host == p:
            return f"{what} would block protected host {p} and every name below it"
        if p.endswith("." + e.host):
            return f"{what} would block all of {e.host}, which includes protected host {p}"
        return f"{what} would block {e.host} whole, a name below protected host {p}"

    def as_json(self) -> dict[str, Any]:
        return {"protected": self.protected, "url": self.entry.url, "scope": self.entry.scope.value,
                "effect": "blocked whole" if self.whole else "steered to the proxy"}


class Guard:
    """Finds the protected hosts entries touch; one lookup per host, remembered."""

    def __init__(self, store: Store) -> None:
        self.db = store.db
        self.empty = self.db.execute("SELECT 1 FROM protected LIMIT 1").fetchone() is None
        self._covering: dict[str, list[str]] = {}

    def covering(self, host: str) -> list[str]:
        """The protected hosts that cover `host`: itself and its parents, the nearest first."""
        found = self._covering.get(host)
        if found is None:
            suffixes = domain_keys(host)
            marks = ", ".join("?" * len(suffixes))
            listed = {h for (h,) in self.db.execute(f"SELECT host FROM protected WHERE host IN ({marks})", suffixes)}
            found = self._covering[host] = [s for s in suffixes if s in listed]
        return found

    def below(self, host: str, limit: int) -> list[str]:
        """Up to `limit` protected hosts strictly below `host` (rhost is the reversed host: one range)."""
        if is_ip(host):
            return []
        low = host[::-1] + "."
        high = low[:-1] + chr(ord(".") + 1)
        return [h for (h,) in self.db.execute("SELECT host FROM protected WHERE rhost >= ? AND rhost < ? "
                                              "ORDER BY rhost LIMIT ?", (low, high, limit))]

    def hits(self, entry: Entry, below: int = NAMES_BELOW) -> list[Hit]:
        """The protected hosts `entry` touches; for a domain entry, up to `below` names under it too."""
        if self.empty:
            return []
        names = self.covering(entry.host)
        if entry.scope is Scope.DOMAIN or entry.reach is Reach.SUBDOMAINS:
            names = names + self.below(entry.host, below)
        elif entry.reach is Reach.TWIN and not is_ip(entry.host):  # the host's www. twin too
            names = names + [h for h in self.covering("www." + entry.host) if h not in names]
        return [Hit(p, entry) for p in names]


def guard_entries(store: Store, info: ListInfo, entries: Iterable[tuple[str, Entry]], actor: str,
                  force: bool = False, reason: str = "") -> list[str]:
    """Refuse (label, entry) pairs that would block a protected host whole, or audit the override.

    Raises Refused naming every such entry (after its label, e.g. FILE:LINE) unless
    `force`; forced, writes one "protect-override" audit record with `reason`.
    Returns notes on entries below protected hosts, which are accepted. Entries the
    list already holds are passed over: they add nothing. Call inside the
    transaction that adds the entries.
    """
    guard = Guard(store)
    refused: list[str] = []
    overridden: list[dict[str, Any]] = []
    notes: list[str] = []
    for label, entry in entries:
        hits = guard.hits(entry)
        if hits and store.has_entry(info, entry):
            continue
        for hit in hits:
            line = f"{label}: {hit.describe()}" if label else hit.describe()
            if hit.whole:
                refused.append(line)
                overridden.append({"where": label, **hit.as_json()})
            else:
                notes.append(line)
    if refused and not force:
        count = len({(o["where"], o["url"], o["scope"]) for o in overridden})
        raise Refused(f"{count} entr{'y' if count == 1 else 'ies'} would block a protected host whole; "
                      "nothing changed (override with --force --reason TEXT)", refused)
    if refused:
        store.audit(actor, "protect-override", info.name, {"reason": reason, "count": len(overridden),
                                                           "overridden": overridden[:100]})
    return notes


def blocked_already(store: Store, hosts: Iterable[str]) -> list[str]:
    """Entries already listed that block one of `hosts` (just protected) whole, as warnings."""
    wanted = set(hosts)
    guard = Guard(store)
    rows = store.db.execute(
        "SELECT l.name, e.scope, e.key, e.url, e.reach FROM entries e JOIN lists l ON l.id = e.list_id "
        "WHERE e.scope = 'domain' OR (e.scope = 'folder' AND instr(e.key, '/') = length(e.key))")
    warnings = []
    for name, scope, key, url, reach in rows:
        entry = Entry(Scope(scope), key, key.rstrip("/"), url, Reach(reach))
        for hit in guard.hits(entry, below=-1):  # every name below: the new ones may be any of them
            if hit.protected in wanted:
                warnings.append(f"{hit.describe()}: already listed in {name}; protecting does not remove it")
    return warnings
