"""What each published version of a list held, entry by entry, so that a list can go back to one.

The store's `history` table holds one row per stretch of versions an entry was
published in: the entry is in version v when since_version <= v < until_version
(an open row, until_version NULL, is in the last recorded version). `publish`
records each new version in the transaction that publishes it: rows of entries
gone since the previous version are closed, rows for new entries opened. When
the previous version was recorded, only the entries the store journalled as
changed since are looked at, so a small publish stays fast on a large list;
otherwise (the first publish, or the first after the store learnt to record)
every entry is compared. A version re-issued unchanged by a key rotation is
recorded without touching a row.
"""

from __future__ import annotations

from dataclasses import dataclass

from blocklist.core.digests import Entry, Reach, Scope
from blocklist.store import ListInfo, Store

_COLUMNS = "list_id, scope, reach, key, url, added_by, added_at, reason, ref"
_INSERT = f"INSERT INTO history ({_COLUMNS}, since_version, until_version)"


@dataclass(frozen=True)
class HistoryRow:
    """An entry as a version published it, with who listed it, when and why."""

    entry: Entry
    added_by: str
    added_at: int
    reason: str
    ref: str


def is_recorded(store: Store, info: ListInfo, version: int) -> bool:
    return store.db.execute("SELECT 1 FROM recorded_versions WHERE list_id = ? AND version = ?",
                            (info.id, version)).fetchone() is not None


def recorded_versions(store: Store, info: ListInfo) -> list[int]:
    return [v for (v,) in store.db.execute(
        "SELECT version FROM recorded_versions WHERE list_id = ? ORDER BY version", (info.id,))]


def published_versions(store: Store, info: ListInfo) -> list[int]:
    return [v for (v,) in store.db.execute(
        "SELECT version FROM publications WHERE list_id = ? ORDER BY version", (info.id,))]


def record(store: Store, info: ListInfo, version: int) -> None:
    """Record that `version` of the list holds exactly the store's entries; inside publish's transaction."""
    previous = store.last_published(info)
    db = store.db
    if previous > 0 and is_recorded(store, info, previous):
        # Every journalled entry's open row closes and the entry, if still listed, opens
        # again: one rule for added, removed and re-added entries (a re-added one keeps
        # its new reason and ref).
        db.execute("UPDATE history SET until_version = ? WHERE list_id = ? AND until_version IS NULL "
                   "AND (scope, reach, key) IN (SELECT scope, reach, key FROM changed WHERE list_id = ?)",
                   (version, info.id, info.id))
        # CROSS JOIN keeps the journal the outer loop: a few probes into entries, not a scan of them.
        db.execute(f"{_INSERT} SELECT {_prefixed('e')}, ?, NULL FROM changed c CROSS JOIN entries e "
                   "ON e.list_id = c.list_id AND e.scope = c.scope AND e.reach = c.reach AND e.key = c.key "
                   "WHERE c.list_id = ?", (version, info.id))
    else:
        db.execute("UPDATE history SET until_version = ? WHERE list_id = ? AND until_version IS NULL "
                   "AND NOT EXISTS (SELECT 1 FROM entries e WHERE e.list_id = history.list_id "
                   "AND e.scope = history.scope AND e.reach = history.reach AND e.key = history.key)",
                   (version, info.id))
        db.execute(f"{_INSERT} SELECT {_prefixed('e')}, ?, NULL FROM entries e WHERE e.list_id = ? "
                   "AND NOT EXISTS (SELECT 1 FROM history h WHERE h.list_id = e.list_id AND h.scope = e.scope "
                   "AND h.reach = e.reach AND h.key = e.key AND h.until_version IS NULL)", (version, info.id))
    db.execute("INSERT OR IGNORE INTO recorded_versions VALUES (?, ?)", (info.id, version))
    db.execute("DELETE FROM changed WHERE list_id = ?", (info.id,))


def carry(store: Store, info: ListInfo, from_version: int, to_version: int) -> None:
    """Record `to_version` as a re-issue of `from_version` (same entries), if that one was recorded.

    The open rows still describe `from_version` when it is the list's last publication,
    and the journal keeps the changes made since for the next publish.
    """
    if store.last_published(info) == from_version and is_recorded(store, info, from_version):
        store.db.execute("INSERT OR IGNORE INTO recorded_versions VALUES (?, ?)", (info.id, to_version))


def entries_at(store: Store, info: ListInfo, version: int) -> list[HistoryRow]:
    """The entries `version` published (the caller checks is_recorded first)."""
    rows = store.db.execute(
        "SELECT scope, reach, key, url, added_by, added_at, reason, ref FROM history WHERE list_id = ? "
        "AND since_version <= ? AND (until_version IS NULL OR until_version > ?) ORDER BY url",
        (info.id, version, version))
    return [HistoryRow(_entry(scope, reach, key, url), by, at, reason, ref)
            for scope, reach, key, url, by, at, reason, ref in rows]


def last_published_entries(store: Store, info: ListInfo) -> list[HistoryRow] | None:
    """The entries of the list's last published version; [] if never published, None if not recorded."""
    last = store.last_published(info)
    if last == 0:
        return []
    return entries_at(store, info, last) if is_recorded(store, info, last) else None


def current_entries(store: Store, info: ListInfo) -> list[HistoryRow]:
    """The store's entries of the list now, in the same form."""
    rows = store.db.execute("SELECT scope, reach, key, url, added_by, added_at, reason, ref FROM entries "
                            "WHERE list_id = ? ORDER BY url", (info.id,))
    return [HistoryRow(_entry(scope, reach, key, url), by, at, reason, ref)
            for scope, reach, key, url, by, at, reason, ref in rows]


def _entry(scope: str, reach: str, key: str, url: str) -> Entry:
    host = key if scope == Scope.DOMAIN.value else key[:key.index("/")]  # the www base of a twin entry
    return Entry(Scope(scope), key, host, url, Reach(reach))


def _prefixed(alias: str) -> str:
    return ", ".join(f"{alias}.{c.strip()}" for c in _COLUMNS.split(","))
