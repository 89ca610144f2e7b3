"""Which node enforces which version: the poll records `blocklist serve` keeps, and `blocklist fleet`.

Every manifest poll names its node (header X-Blocklist-Node) and the list
versions it enforces (X-Blocklist-Have: "iwf=3,other=5"); serve records the
last poll of every node in <home>/fleet.sqlite.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from blocklist.errors import StoreError

MAX_NODE_ID = 128
MAX_LISTS_REPORTED = 64

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


@dataclass(frozen=True)
class NodeRecord:
    node_id: str
    first_seen: float
    last_seen: float
    remote: str
    versions: dict[str, int]
    polls: int


def parse_have(header: str) -> dict[str, int]:
    """"iwf=3,other=5" -> {"iwf": 3, "other": 5}; malformed items are dropped."""
    versions: dict[str, int] = {}
    for item in header.split(",")[:MAX_LISTS_REPORTED]:
        name, sep, version = item.strip().partition("=")
        if sep and version.isdigit() and 0 < len(name) <= 64 and len(version) <= 12:
            versions[name] = int(version)
    return versions


def format_have(versions: dict[str, int]) -> str:
    return ",".join(f"{name}={version}" for name, version in sorted(versions.items()))


def clean_node_id(node_id: str) -> str | None:
    node_id = node_id.strip()
    if not node_id or len(node_id) > MAX_NODE_ID or not node_id.isprintable():
        return None
    return node_id


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
        rows = self.db.execute("SELECT node_id, first_seen, last_seen, remote, versions, polls "
                               "FROM nodes ORDER BY node_id")
        return [NodeRecord(n, f, l, r, json.loads(v), p) for n, f, l, r, v, p in rows]

    def close(self) -> None:
        self.db.close()
