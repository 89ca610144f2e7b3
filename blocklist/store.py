"""The hotline store: lists, entries and the append-only audit log, in SQLite (WAL).

It also holds the protected hosts (blocklist.protect) and what each published
version of a list held (blocklist.history); those modules own the queries.

Every change runs inside `Store.transaction()` (BEGIN IMMEDIATE ... COMMIT), so a
command either changes the store completely, audit rows included, or not at all;
a crash or kill -9 at any point leaves the last committed state. The plaintext
entries live here and only here: publishing reads digests, never URLs.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sqlite3
import time
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blocklist.core.canary import with_canary
from blocklist.core.digests import Entry, Reach, Scope, entry_digests, subtree_markers
from blocklist.core.errors import FormatError, StoreError
from blocklist.core.format.digestset import set_checksum
from blocklist.core.format.listmeta import ListMeta, meta_problem
from blocklist.core.format.strictjson import check_list_name

SCHEMA_VERSION = 4  # 2: the subtrees table; 3: protected hosts and what each version held;
#                     4: entries' reach (blocklist.store_upgrade), list_meta
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS lists (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    salt BLOB NOT NULL,
    error_rate REAL NOT NULL,
    created INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY,
    list_id INTEGER NOT NULL REFERENCES lists(id),
    scope TEXT NOT NULL CHECK (scope IN ('page', 'folder', 'domain')),
    reach TEXT NOT NULL CHECK (reach IN ('exact', 'twin', 'subdomains')),
    key TEXT NOT NULL,
    url TEXT NOT NULL,
    digest BLOB,          -- page/folder entry digest; NULL for domain entries
    host_digest BLOB NOT NULL,  -- host digest (page/folder) or domain digest
    added_by TEXT NOT NULL,
    added_at INTEGER NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    ref TEXT NOT NULL DEFAULT '',
    UNIQUE (list_id, scope, reach, key)
);
CREATE INDEX IF NOT EXISTS entries_digest ON entries(list_id, digest);
CREATE INDEX IF NOT EXISTS entries_host_digest ON entries(list_id, host_digest);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    list TEXT NOT NULL DEFAULT '',
    detail TEXT NOT NULL DEFAULT '{}'
);
CREATE TRIGGER IF NOT EXISTS audit_append_only_u BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_append_only_d BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
-- Digests whose membership may have changed since the list was last published:
-- publish recomputes just these against its previous snapshot (a fast delta publish).
CREATE TABLE IF NOT EXISTS touched (
    list_id INTEGER NOT NULL REFERENCES lists(id),
    kind TEXT NOT NULL CHECK (kind IN ('entry', 'host')),
    value BLOB NOT NULL,
    PRIMARY KEY (list_id, kind, value)
) WITHOUT ROWID;
-- Subtree markers (blocklist.core.digests.subtree_markers): how many entries put each one in
-- the host set; a marker is published while its count is above zero.
CREATE TABLE IF NOT EXISTS subtrees (
    list_id INTEGER NOT NULL REFERENCES lists(id),
    digest BLOB NOT NULL,
    entries INTEGER NOT NULL CHECK (entries >= 0),
    PRIMARY KEY (list_id, digest)
) WITHOUT ROWID;
-- Who blocks with a list (blocklist.core.format.listmeta), published in the signed manifest.
CREATE TABLE IF NOT EXISTS list_meta (
    list_id INTEGER PRIMARY KEY REFERENCES lists(id),
    title TEXT NOT NULL DEFAULT '',
    legal_basis TEXT NOT NULL DEFAULT '',
    appeal_url TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS publications (
    list_id INTEGER NOT NULL REFERENCES lists(id),
    version INTEGER NOT NULL,
    published_at INTEGER NOT NULL,
    checksum TEXT NOT NULL,
    entries INTEGER NOT NULL,
    PRIMARY KEY (list_id, version)
);
-- Hosts no entry may block whole (blocklist.protect). rhost is the host reversed, so the
-- names below a host are one index range.
CREATE TABLE IF NOT EXISTS protected (
    host TEXT PRIMARY KEY,
    rhost TEXT NOT NULL UNIQUE,
    reason TEXT NOT NULL,
    added_by TEXT NOT NULL,
    added_at INTEGER NOT NULL
);
-- What each published version of a list held (blocklist.history): a row is in version v
-- when since_version <= v and (until_version IS NULL or v < until_version).
CREATE TABLE IF NOT EXISTS history (
    list_id INTEGER NOT NULL REFERENCES lists(id),
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    url TEXT NOT NULL,
    added_by TEXT NOT NULL,
    added_at INTEGER NOT NULL,
    reason TEXT NOT NULL,
    ref TEXT NOT NULL,
    since_version INTEGER NOT NULL,
    until_version INTEGER CHECK (until_version > since_version),
    reach TEXT NOT NULL DEFAULT 'exact' CHECK (reach IN ('exact', 'twin', 'subdomains'))
);
CREATE UNIQUE INDEX IF NOT EXISTS history_open ON history(list_id, scope, reach, key) WHERE until_version IS NULL;
CREATE TABLE IF NOT EXISTS recorded_versions (
    list_id INTEGER NOT NULL REFERENCES lists(id),
    version INTEGER NOT NULL,
    PRIMARY KEY (list_id, version)
) WITHOUT ROWID;
-- Entries added or removed since the list's last publish: the next record of what the list
-- holds looks at just these (like `touched` for the digests).
CREATE TABLE IF NOT EXISTS changed (
    list_id INTEGER NOT NULL REFERENCES lists(id),
    scope TEXT NOT NULL,
    reach TEXT NOT NULL,
    key TEXT NOT NULL,
    PRIMARY KEY (list_id, scope, reach, key)
) WITHOUT ROWID;
"""


class Refused(StoreError):
    """A guard rail refused a change, or it would change nothing; `details` say why, a line each."""

    def __init__(self, message: str, details: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.details = list(details)


@dataclass(frozen=True)
class ListInfo:
    id: int
    name: str
    salt: bytes
    error_rate: float
    created: int


@dataclass(frozen=True)
class EntryRow:
    list: str
    scope: Scope
    url: str
    added_by: str
    added_at: int
    reason: str
    ref: str
    reach: Reach = Reach.EXACT

    def as_json(self) -> dict[str, Any]:
        return {"list": self.list, "scope": self.scope.value, "reach": self.reach.value, "url": self.url,
                "added_by": self.added_by, "added_at": self.added_at,
                "reason": self.reason, "ref": self.ref}


@dataclass(frozen=True)
class AuditRow:
    id: int
    at: int
    actor: str
    action: str
    list: str
    detail: dict[str, Any]


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


def _blob(value: int) -> bytes:
    return value.to_bytes(8, "big")


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.db = sqlite3.connect(path, isolation_level=None, timeout=300)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.executescript(SCHEMA)
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                            (str(SCHEMA_VERSION),))
            version = int(self.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0])
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: cannot open the store: {exc}") from None
        if version > SCHEMA_VERSION:
            raise StoreError(f"{path}: store schema {version} is newer than this blocklist "
                             f"understands ({SCHEMA_VERSION}); upgrade blocklist")
        if version < SCHEMA_VERSION:
            self._upgrade(version)

    def _upgrade(self, version: int) -> None:
        """Bring a store of an older schema up to date, in one transaction (audited)."""
        from blocklist.store_upgrade import upgrade_entries

        with self.transaction():
            detail: dict[str, Any] = {"from": version, "to": SCHEMA_VERSION}
            if version < 2:  # subtree markers: count them from the entries already listed
                salts = dict(self.db.execute("SELECT id, salt FROM lists"))
                for list_id, scope, key in self.db.execute("SELECT list_id, scope, key FROM entries").fetchall():
                    host = key if scope == Scope.DOMAIN.value else key[:key.index("/")]
                    self._count_markers(list_id, subtree_markers(salts[list_id], host), 1)
            if version < 3:  # a list at rest holds exactly its last published version: record it
                columns = "list_id, scope, key, url, added_by, added_at, reason, ref, since_version"
                if {"reach"} <= _columns(self.db, "entries") & _columns(self.db, "history"):
                    columns += ", reach"
                for info in self.lists():
                    last = self.last_published(info)
                    row = self.db.execute("SELECT checksum FROM publications WHERE list_id = ? AND version = ?",
                                          (info.id, last)).fetchone()
                    recorded = self.db.execute("SELECT 1 FROM recorded_versions WHERE list_id = ? AND version = ?",
                                               (info.id, last)).fetchone()
                    sets = self.digest_sets(info)  # published with the canary, or before canaries
                    held = {set_checksum(*sets), set_checksum(*with_canary(info.name, info.salt, *sets))}
                    if row and not recorded and row[0] in held:
                        values = columns.replace("since_version", "?")
                        self.db.execute(f"INSERT INTO history ({columns}) SELECT {values} FROM entries "
                                        "WHERE list_id = ?", (last, info.id))
                        self.db.execute("INSERT INTO recorded_versions VALUES (?, ?)", (info.id, last))
            if version < 4:  # reach: every entry re-keyed, its digests, markers and history rows with it
                detail.update(upgrade_entries(self.db, lambda list_id, markers: self._count_markers(
                    list_id, markers, 1)))
            self.db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
            self.audit("blocklist", "upgrade-store", "", detail)

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic change: everything inside commits together or not at all."""
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot start a transaction: {exc}") from None
        try:
            yield self.db
        except sqlite3.Error as exc:
            self._rollback()
            raise StoreError(f"{self.path}: {exc}; nothing changed") from None
        except BaseException:
            self._rollback()
            raise
        try:
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise StoreError(f"{self.path}: commit failed, nothing changed: {exc}") from None

    def _rollback(self) -> None:
        try:
            self.db.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # SQLite already rolled back (e.g. after a full disk)

    # -- lists

    def get_list(self, name: str) -> ListInfo | None:
        row = self.db.execute("SELECT id, name, salt, error_rate, created FROM lists WHERE name = ?",
                              (name,)).fetchone()
        return ListInfo(*row) if row else None

    def require_list(self, name: str) -> ListInfo:
        info = self.get_list(name)
        if info is None:
            known = ", ".join(info.name for info in self.lists()) or "none"
            raise StoreError(f"no list named {name!r} (lists: {known})")
        return info

    def lists(self) -> list[ListInfo]:
        rows = self.db.execute("SELECT id, name, salt, error_rate, created FROM lists ORDER BY name")
        return [ListInfo(*row) for row in rows]

    def create_list(self, name: str, error_rate: float, actor: str) -> ListInfo:
        """Create a list with a fresh random salt; call inside a transaction."""
        try:
            check_list_name(name)
        except FormatError as exc:
            raise StoreError(str(exc)) from None
        if not 0 < error_rate < 0.5:
            raise StoreError(f"error rate {error_rate} must be between 0 and 0.5")
        if self.get_list(name) is not None:
            raise StoreError(f"list {name!r} already exists")
        now = int(time.time())
        self.db.execute("INSERT INTO lists (name, salt, error_rate, created) VALUES (?, ?, ?, ?)",
                        (name, secrets.token_bytes(16), error_rate, now))
        self.audit(actor, "create-list", name, {"error_rate": error_rate})
        return self.require_list(name)

    def set_error_rate(self, name: str, error_rate: float, actor: str) -> None:
        info = self.require_list(name)
        if not 0 < error_rate < 0.5:
            raise StoreError(f"error rate {error_rate} must be between 0 and 0.5")
        self.db.execute("UPDATE lists SET error_rate = ? WHERE id = ?", (error_rate, info.id))
        self.audit(actor, "set-error-rate", name, {"from": info.error_rate, "to": error_rate})

    def list_meta(self, info: ListInfo) -> ListMeta:
        row = self.db.execute("SELECT title, legal_basis, appeal_url FROM list_meta WHERE list_id = ?",
                              (info.id,)).fetchone()
        return ListMeta(*row) if row else ListMeta()

    def set_list_meta(self, name: str, changes: dict[str, str], actor: str) -> ListMeta:
        """Change some fields of a list's metadata ("" clears one); StoreError if out of bounds."""
        info = self.require_list(name)
        old = self.list_meta(info)
        new = ListMeta(**{**old.__dict__, **changes})
        problem = meta_problem(new)
        if problem is not None:
            raise StoreError(f"list {name}: {problem}; nothing changed")
        self.db.execute("INSERT OR REPLACE INTO list_meta VALUES (?, ?, ?, ?)",
                        (info.id, new.title, new.legal_basis, new.appeal_url))
        self.audit(actor, "set-list-meta", name, {"from": old.as_json(), "to": new.as_json()})
        return new

    # -- entries

    def has_entry(self, info: ListInfo, entry: Entry) -> bool:
        return self.db.execute("SELECT 1 FROM entries WHERE list_id = ? AND scope = ? AND reach = ? AND key = ?",
                               (info.id, entry.scope.value, entry.reach.value, entry.key)).fetchone() is not None

    def add_entries(self, info: ListInfo, items: Iterable[tuple[Entry, str, str]], actor: str,
                    source: str = "") -> tuple[int, int]:
        """Add (entry, reason, ref) items; returns (added, already listed). Inside a transaction."""
        now, added, already = int(time.time()), 0, 0
        journal = self.last_published(info) > 0
        for entry, reason, ref in items:
            if self._insert(info, entry, actor, now, reason, ref, journal):
                added += 1
                if not source:
                    self.audit(actor, "add", info.name, {"scope": entry.scope.value, "reach": entry.reach.value,
                                                        "url": entry.url, "reason": reason, "ref": ref})
            else:
                already += 1
        if source:  # one audit row for a whole import, naming the file
            self.audit(actor, "import", info.name, {"file": source, "added": added,
                                                    "already_listed": already})
        return added, already

    def restore_entries(self, info: ListInfo, rows: Iterable[tuple[Entry, str, int, str, str]]) -> int:
        """Re-add (entry, added_by, added_at, reason, ref) rows as they were; the caller audits."""
        journal = self.last_published(info) > 0
        return sum(self._insert(info, entry, by, at, reason, ref, journal) for entry, by, at, reason, ref in rows)

    def _insert(self, info: ListInfo, entry: Entry, by: str, at: int, reason: str, ref: str, journal: bool) -> bool:
        digest, host_digest = entry_digests(info.salt, entry)
        cur = self.db.execute(
            "INSERT OR IGNORE INTO entries (list_id, scope, reach, key, url, digest, host_digest, "
            "added_by, added_at, reason, ref) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (info.id, entry.scope.value, entry.reach.value, entry.key, entry.url,
             None if digest is None else _blob(digest), _blob(host_digest), by, at, reason, ref))
        if not cur.rowcount:
            return False
        markers = subtree_markers(info.salt, entry.host)
        self._count_markers(info.id, markers, 1)
        if journal:
            self._touch(info, digest, host_digest, markers, entry)
        return True

    def _touch(self, info: ListInfo, digest: int | None, host_digest: int, markers: list[int],
               entry: Entry) -> None:
        self.db.execute("INSERT OR IGNORE INTO changed (list_id, scope, reach, key) VALUES (?, ?, ?, ?)",
                        (info.id, entry.scope.value, entry.reach.value, entry.key))
        if digest is not None:
            self.db.execute("INSERT OR IGNORE INTO touched VALUES (?, 'entry', ?)", (info.id, _blob(digest)))
        self.db.executemany("INSERT OR IGNORE INTO touched VALUES (?, 'host', ?)",
                            [(info.id, _blob(v)) for v in (host_digest, *markers)])

    def _count_markers(self, list_id: int, markers: list[int], step: int) -> None:
        rows = [(list_id, _blob(v)) for v in markers]
        if step > 0:
            self.db.executemany("INSERT INTO subtrees VALUES (?, ?, 1) "
                                "ON CONFLICT DO UPDATE SET entries = entries + 1", rows)
        else:
            self.db.executemany("UPDATE subtrees SET entries = entries - 1 WHERE list_id = ? AND digest = ?", rows)

    def remove_entry(self, info: ListInfo, entry: Entry, actor: str, audit: bool = True) -> bool:
        cur = self.db.execute("DELETE FROM entries WHERE list_id = ? AND scope = ? AND reach = ? AND key = ?",
                              (info.id, entry.scope.value, entry.reach.value, entry.key))
        if cur.rowcount:
            markers = subtree_markers(info.salt, entry.host)
            self._count_markers(info.id, markers, -1)
            if self.last_published(info) > 0:
                self._touch(info, *entry_digests(info.salt, entry), markers, entry)
            if audit:
                self.audit(actor, "remove", info.name, {"scope": entry.scope.value, "reach": entry.reach.value,
                                                        "url": entry.url})
        return bool(cur.rowcount)

    def entries(self, list_name: str | None = None) -> Iterator[EntryRow]:
        sql = ("SELECT l.name, e.scope, e.url, e.added_by, e.added_at, e.reason, e.ref, e.reach "
               "FROM entries e JOIN lists l ON l.id = e.list_id")
        args: tuple[Any, ...] = ()
        if list_name is not None:
            sql, args = sql + " WHERE l.name = ?", (list_name,)
        for name, scope, url, by, at, reason, ref, reach in self.db.execute(sql + " ORDER BY l.name, e.url", args):
            yield EntryRow(name, Scope(scope), url, by, at, reason, ref, Reach(reach))

    def count(self, info: ListInfo) -> dict[str, int]:
        rows = self.db.execute("SELECT scope, COUNT(*) FROM entries WHERE list_id = ? GROUP BY scope",
                               (info.id,))
        return {scope: n for scope, n in rows}

    def digest_sets(self, info: ListInfo) -> tuple[array, array]:
        """(entry digests, host-level digests) of a list, sorted and unique."""
        entries, hosts = set(), set()
        for digest, host_digest in self.db.execute(
                "SELECT digest, host_digest FROM entries WHERE list_id = ?", (info.id,)):
            if digest is not None:
                entries.add(int.from_bytes(digest, "big"))
            hosts.add(int.from_bytes(host_digest, "big"))
        for (marker,) in self.db.execute("SELECT digest FROM subtrees WHERE list_id = ? AND entries > 0", (info.id,)):
            hosts.add(int.from_bytes(marker, "big"))
        return array("Q", sorted(entries)), array("Q", sorted(hosts))

    def touched_changes(self, info: ListInfo) -> tuple[dict[int, bool], dict[int, bool]]:
        """For every digest touched since the last publish: is it in the list now?

        Returns ({entry digest: present}, {host-level digest: present}).
        """
        entries: dict[int, bool] = {}
        hosts: dict[int, bool] = {}
        for kind, value in self.db.execute("SELECT kind, value FROM touched WHERE list_id = ?", (info.id,)):
            if kind == "entry":
                present = self.db.execute("SELECT 1 FROM entries WHERE list_id = ? AND digest = ? LIMIT 1",
                                          (info.id, value)).fetchone()
                entries[int.from_bytes(value, "big")] = present is not None
            else:
                present = self.db.execute(
                    "SELECT 1 FROM entries WHERE list_id = ? AND host_digest = ? UNION ALL "
                    "SELECT 1 FROM subtrees WHERE list_id = ? AND digest = ? AND entries > 0 LIMIT 1",
                    (info.id, value, info.id, value)).fetchone()
                hosts[int.from_bytes(value, "big")] = present is not None
        return entries, hosts

    def clear_touched(self, info: ListInfo) -> None:
        self.db.execute("DELETE FROM touched WHERE list_id = ?", (info.id,))

    def entries_with_digest(self, info: ListInfo, value: int) -> list[EntryRow]:
        """The entries behind a digest: how the hotline explains a match to its staff."""
        blob = _blob(value)
        rows = self.db.execute(
            "SELECT scope, url, added_by, added_at, reason, ref, reach FROM entries "
            "WHERE list_id = ? AND (digest = ? OR (digest IS NULL AND host_digest = ?))",
            (info.id, blob, blob))
        return [EntryRow(info.name, Scope(s), u, b, a, r, f, Reach(h)) for s, u, b, a, r, f, h in rows]

    # -- audit and publications

    def audit(self, actor: str, action: str, list_name: str = "", detail: dict[str, Any] | None = None) -> None:
        self.db.execute("INSERT INTO audit (at, actor, action, list, detail) VALUES (?, ?, ?, ?, ?)",
                        (int(time.time()), actor, action, list_name, json.dumps(detail or {}, sort_keys=True)))

    def log(self, limit: int | None = None, list_name: str | None = None) -> list[AuditRow]:
        sql, args = "SELECT id, at, actor, action, list, detail FROM audit", list[str | int]()
        if list_name:
            sql += " WHERE list = ?"
            args.append(list_name)
        sql += " ORDER BY id DESC"
        if limit:
            sql += " LIMIT ?"
            args.append(limit)
        rows = [AuditRow(i, at, actor, action, lst, json.loads(detail))
                for i, at, actor, action, lst, detail in self.db.execute(sql, args)]
        rows.reverse()
        return rows

    def record_publication(self, info: ListInfo, version: int, checksum: str, entries: int) -> None:
        self.db.execute("INSERT OR REPLACE INTO publications VALUES (?, ?, ?, ?, ?)",
                        (info.id, version, int(time.time()), checksum, entries))

    def last_published(self, info: ListInfo) -> int:
        row = self.db.execute("SELECT MAX(version) FROM publications WHERE list_id = ?",
                              (info.id,)).fetchone()
        return row[0] or 0


def default_actor() -> str:
    return os.environ.get("BLOCKLIST_ACTOR") or os.environ.get("USER") or "unknown"
