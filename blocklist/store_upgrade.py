"""The store's schema 4: every entry gets a reach, and its key, digests and markers follow it.

Page and folder entries listed before reaches existed become twin entries (the
default since: the host and its www. twins, blocklist.core.digests), so a list
gains the coverage it lacked on the twin host; domain entries are exact. Two
entries that differ only by their host's www. labels become one twin entry: the
first one listed stays, and the audit record of the upgrade names the others.
The subtree markers are counted again (they now mark www bases), and every digest
before and after goes into the publish journal, so the next publish's delta takes
the old digests out and brings the new ones. What each published version held
(blocklist.history, schema 3) is re-keyed the same way, so a revert restores an old
entry as the twin entry it became; of two open rows that become one twin entry the
first stays. The journal of changed entries (`changed`) gets the reach too.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from blocklist.core.digests import Reach, Scope, entry_digests, make_entry, subtree_markers, www_base
from blocklist.core.errors import BlocklistError, StoreError

# The entries table as schema 4 has it (blocklist.store.SCHEMA creates the same for a new store).
ENTRIES_V4 = """
CREATE TABLE entries (
    id INTEGER PRIMARY KEY,
    list_id INTEGER NOT NULL REFERENCES lists(id),
    scope TEXT NOT NULL CHECK (scope IN ('page', 'folder', 'domain')),
    reach TEXT NOT NULL CHECK (reach IN ('exact', 'twin', 'subdomains')),
    key TEXT NOT NULL,
    url TEXT NOT NULL,
    digest BLOB,
    host_digest BLOB NOT NULL,
    added_by TEXT NOT NULL,
    added_at INTEGER NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    ref TEXT NOT NULL DEFAULT '',
    UNIQUE (list_id, scope, reach, key)
)"""
INDEXES = ("CREATE INDEX IF NOT EXISTS entries_digest ON entries(list_id, digest)",
           "CREATE INDEX IF NOT EXISTS entries_host_digest ON entries(list_id, host_digest)")
CHANGED_V4 = """
CREATE TABLE changed (
    list_id INTEGER NOT NULL REFERENCES lists(id),
    scope TEXT NOT NULL,
    reach TEXT NOT NULL,
    key TEXT NOT NULL,
    PRIMARY KEY (list_id, scope, reach, key)
) WITHOUT ROWID"""
HISTORY_OPEN = ("CREATE UNIQUE INDEX history_open ON history(list_id, scope, reach, key) "
                "WHERE until_version IS NULL")


def upgrade_entries(db: sqlite3.Connection, count_markers: Callable[[int, list[int]], None]) -> dict[str, Any]:
    """Rebuild the entries table with reaches if it has none, and count every subtree marker
    again; inside the caller's transaction. Returns the audit detail."""
    salts = dict(db.execute("SELECT id, salt FROM lists"))
    detail: dict[str, Any] = {}
    _journal_everything(db)
    rekey = "reach" not in _columns(db, "entries")
    if rekey:
        detail = _add_reach(db, salts)
    _upgrade_history(db, rekey)
    db.execute("DELETE FROM subtrees")
    for list_id, scope, key in db.execute("SELECT list_id, scope, key FROM entries").fetchall():
        host = key if scope == Scope.DOMAIN.value else key[:key.index("/")]
        count_markers(list_id, subtree_markers(salts[list_id], host))
    _journal_everything(db)
    return detail


def _journal_everything(db: sqlite3.Connection) -> None:
    """Every digest and marker of every list into the publish journal (blocklist.store `touched`)."""
    db.execute("INSERT OR IGNORE INTO touched SELECT list_id, 'entry', digest FROM entries WHERE digest IS NOT NULL")
    db.execute("INSERT OR IGNORE INTO touched SELECT list_id, 'host', host_digest FROM entries")
    db.execute("INSERT OR IGNORE INTO touched SELECT list_id, 'host', digest FROM subtrees WHERE entries > 0")


def _add_reach(db: sqlite3.Connection, salts: dict[int, bytes]) -> dict[str, Any]:
    db.execute("ALTER TABLE entries RENAME TO entries_v2")
    db.execute(ENTRIES_V4)
    merged: list[str] = []
    twins = 0
    rows = db.execute("SELECT id, list_id, scope, url, added_by, added_at, reason, ref FROM entries_v2 "
                      "ORDER BY id").fetchall()
    for row_id, list_id, scope, url, added_by, added_at, reason, ref in rows:
        try:
            entry = make_entry(url, Scope(scope), Reach.TWIN)
        except (BlocklistError, ValueError) as exc:
            raise StoreError(f"upgrade: entry {row_id} ({scope} {url}) cannot be re-keyed: {exc}") from None
        digest, host_digest = entry_digests(salts[list_id], entry)
        cur = db.execute(
            "INSERT OR IGNORE INTO entries (id, list_id, scope, reach, key, url, digest, host_digest, "
            "added_by, added_at, reason, ref) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (row_id, list_id, entry.scope.value, entry.reach.value, entry.key, entry.url,
             None if digest is None else digest.to_bytes(8, "big"), host_digest.to_bytes(8, "big"),
             added_by, added_at, reason, ref))
        if cur.rowcount:
            twins += entry.reach is Reach.TWIN
        else:
            merged.append(url)
    db.execute("DROP TABLE entries_v2")
    for statement in INDEXES:
        db.execute(statement)
    return {"twin_entries": twins, "merged_into_a_twin": merged}


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


def _upgrade_history(db: sqlite3.Connection, rekey: bool) -> None:
    """Give the history rows and the journal of changed entries a reach; re-key them if the entries were."""
    if "reach" not in _columns(db, "history"):
        db.execute("ALTER TABLE history ADD COLUMN reach TEXT NOT NULL DEFAULT 'exact' "
                   "CHECK (reach IN ('exact', 'twin', 'subdomains'))")
    if "reach" not in _columns(db, "changed"):
        db.execute("ALTER TABLE changed RENAME TO changed_v3")
        db.execute(CHANGED_V4)
        for list_id, scope, key in db.execute("SELECT list_id, scope, key FROM changed_v3").fetchall():
            db.execute("INSERT OR IGNORE INTO changed (list_id, scope, reach, key) VALUES (?, ?, ?, ?)",
                       (list_id, scope, *_twin_key(scope, key)))
        db.execute("DROP TABLE changed_v3")
    db.execute("DROP INDEX IF EXISTS history_open")
    if rekey:
        # Rows from before reaches hold the default 'exact': they get the reach their entries get.
        rows = db.execute("SELECT rowid, scope, url FROM history WHERE reach = 'exact' AND scope != 'domain' "
                          "ORDER BY rowid").fetchall()
        for rowid, scope, url in rows:
            try:
                entry = make_entry(url, Scope(scope), Reach.TWIN)
            except (BlocklistError, ValueError) as exc:
                raise StoreError(f"upgrade: history of {scope} {url} cannot be re-keyed: {exc}") from None
            db.execute("UPDATE history SET key = ?, reach = ? WHERE rowid = ?", (entry.key, entry.reach.value, rowid))
        db.execute("DELETE FROM history WHERE until_version IS NULL AND EXISTS (SELECT 1 FROM history h "
                   "WHERE h.until_version IS NULL AND h.list_id = history.list_id AND h.scope = history.scope "
                   "AND h.reach = history.reach AND h.key = history.key AND h.rowid < history.rowid)")
    db.execute(HISTORY_OPEN)


def _twin_key(scope: str, key: str) -> tuple[str, str]:
    """(reach, key) an entry keyed `key` in schema 3 has after the upgrade (as make_entry re-keys it)."""
    if scope == Scope.DOMAIN.value:
        return Reach.EXACT.value, key
    cut = key.index("/")
    return Reach.TWIN.value, www_base(key[:cut]) + key[cut:]
