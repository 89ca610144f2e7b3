"""What a publish would change, list by list, read from the store alone: `blocklist publish --dry-run`.

For each list it compares the entries of its last published version
(blocklist.history) with the entries a publish would put out now, and says what
that means at the ISPs: hosts newly blocked whole, hosts stage 1 newly steers to
the filtering proxy (a host that newly carries page or folder entries), and the
protected hosts an added entry touches. It only reads: the store and the publish
directory stay byte for byte as they were. The output names plaintext URLs: it is
for hotline staff, like `blocklist ls`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from blocklist.core.canary import with_canary
from blocklist.core.digests import Entry, Reach, Scope, domain_keys
from blocklist.core.format.digestset import set_checksum
from blocklist.core.table import render
from blocklist.history import HistoryRow, current_entries, last_published_entries
from blocklist.protect import Guard, Hit, blocks_whole
from blocklist.store import ListInfo, Store


@dataclass(frozen=True)
class ListPreview:
    name: str                  # the list
    published: int             # the last published version; 0 if never published
    would_publish: bool        # whether a publish now makes a new version of this list
    baseline_recorded: bool    # False: no record of what `published` held, every entry counts as added
    added: list[HistoryRow]
    removed: list[HistoryRow]
    blocked_whole: list[Entry]  # added entries that block a host whole that was not before
    proxied: list[str]          # hosts stage 1 newly steers to the filtering proxy
    protected: list[Hit]        # added entries that touch a protected host

    def as_json(self) -> dict[str, Any]:
        return {
            "list": self.name, "published_version": self.published, "next_version": self.published + 1,
            "would_publish": self.would_publish, "baseline_recorded": self.baseline_recorded,
            "added": _by_scope(self.added), "removed": _by_scope(self.removed),
            "counts": {"added": _counts(self.added), "removed": _counts(self.removed)},
            "newly_blocked_whole": [{"host": e.host, "scope": e.scope.value, "url": e.url,
                                     "subdomains": e.scope is Scope.DOMAIN} for e in self.blocked_whole],
            "newly_proxied": self.proxied,
            "protected_touched": [hit.as_json() for hit in self.protected],
        }


def preview_list(store: Store, info: ListInfo, target: list[HistoryRow] | None = None) -> ListPreview:
    """What publishing `target` (default: the list's entries now) would change for the list."""
    target = current_entries(store, info) if target is None else target
    published = store.last_published(info)
    baseline = last_published_entries(store, info)
    base = baseline or []
    base_keys = {_key(r) for r in base}
    target_keys = {_key(r) for r in target}
    added = [r for r in target if _key(r) not in base_keys]
    removed = [r for r in base if _key(r) not in target_keys]

    base_domains = {r.entry.host for r in base if r.entry.scope is Scope.DOMAIN}
    base_roots = {r.entry.host for r in base if r.entry.scope is Scope.FOLDER and blocks_whole(r.entry)}
    blocked_whole = [r.entry for r in added if blocks_whole(r.entry)
                     and not _under(r.entry.host, base_domains)
                     and not (r.entry.scope is Scope.FOLDER and r.entry.host in base_roots)]
    target_domains = {r.entry.host for r in target if r.entry.scope is Scope.DOMAIN}
    proxied = sorted(_proxied(target, target_domains) - _proxied(base, base_domains))

    guard = Guard(store)
    protected = [hit for r in added for hit in guard.hits(r.entry)]
    if published == 0:
        would_publish = True
    elif baseline is not None and (added or removed):
        would_publish = True
    else:  # no record of the published entries, or no change to them: compare the digests, as publish
        # does (a version published before canaries gets one now: blocklist.core.canary)
        row = store.db.execute("SELECT checksum FROM publications WHERE list_id = ? AND version = ?",
                               (info.id, published)).fetchone()
        would_publish = row is None or row[0] != set_checksum(*with_canary(info.name, info.salt,
                                                                           *store.digest_sets(info)))
    return ListPreview(info.name, published, would_publish, baseline is not None, added, removed,
                       blocked_whole, proxied, protected)


def render_text(previews: Iterable[ListPreview]) -> str:
    """The human report: per list, the changed entries and what they do at the ISPs."""
    out = []
    for p in previews:
        if not p.would_publish:
            out.append(f"{p.name}: nothing changed since version {p.published}; a publish would not make a new one")
            continue
        since = f"since version {p.published}" if p.published else "(never published)"
        out.append(f"{p.name}: would publish version {p.published + 1}; changes {since}:")
        if not p.baseline_recorded:
            out.append(f"  no record of the entries of version {p.published} (published before blocklist kept "
                       "one): every entry is shown as added")
        rows = [["+", r.entry.scope.value, r.entry.url, r.added_by, r.reason] for r in p.added]
        rows += [["-", r.entry.scope.value, r.entry.url, r.added_by, r.reason] for r in p.removed]
        if rows:
            out.append(_indent(render(["+/-", "SCOPE", "URL", "BY", "REASON"], rows)))
        out.append(f"  added: {_summary(p.added)}; removed: {_summary(p.removed)}")
        for e in p.blocked_whole:
            whole = f"{e.host} and every name below it" if e.scope is Scope.DOMAIN else f"every page of {e.host}"
            out.append(f"  newly blocked whole: {whole} ({e.url}, {e.scope.value})")
        if p.proxied:
            out.append(f"  newly steered to the filtering proxy by stage 1: {', '.join(p.proxied)}")
        for hit in p.protected:
            out.append(f"  PROTECTED HOST TOUCHED: {hit.describe()}")
    return "\n".join(out)


def _key(row: HistoryRow) -> tuple[Scope, Reach, str]:
    return row.entry.scope, row.entry.reach, row.entry.key


def _under(host: str, domains: set[str]) -> bool:
    return any(suffix in domains for suffix in domain_keys(host))


def _proxied(rows: Iterable[HistoryRow], domains: set[str]) -> set[str]:
    """Hosts stage 1 steers to the proxy: they carry page or folder entries and no domain entry covers them."""
    return {r.entry.host for r in rows if r.entry.scope is not Scope.DOMAIN and not _under(r.entry.host, domains)}


def _by_scope(rows: list[HistoryRow]) -> dict[str, list[str]]:
    return {s.value: [r.entry.url for r in rows if r.entry.scope is s] for s in Scope}


def _counts(rows: list[HistoryRow]) -> dict[str, int]:
    return {s.value: sum(1 for r in rows if r.entry.scope is s) for s in Scope}


def _summary(rows: list[HistoryRow]) -> str:
    return ", ".join(f"{n} {scope}" for scope, n in _counts(rows).items())


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())
