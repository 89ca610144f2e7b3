"""The fleet store (<home>/fleet.sqlite): the registered nodes, their report keys and their last verified poll.

`blocklist node add` registers a node: a fresh token (blocklist.core.protocol.new_token)
is printed once and only its report key, SHA-256 of the token, is stored.
`blocklist serve` records a manifest poll only through `FleetStore.accept`,
which needs a registered node, a proof whose MAC verifies with that key, a
clock within PROOF_WINDOW_MS, and a proof time above the last one accepted
from that node. Nothing else writes a row, so the store holds one row per
registered node whatever anyone sends.

The report key is what proofs are made with. Whoever reads this file can
therefore forge any registered node's reports (make `blocklist fleet` show
versions it does not enforce); it learns no token, and a token opens nothing
but reports: the publish tree is public and signed. The file is created mode
0600; `blocklist node remove` then `node add` gives a node a new token.

Schema 2 replaced the unauthenticated poll records of schema 1 (any client
could write them): they are dropped when the store is first opened.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from blocklist.core.errors import StoreError
from blocklist.core.protocol import (
    PROOF_WINDOW_MS,
    Proof,
    ReportOutcome,
    clean_node_id,
    new_token,
    parse_have,
    parse_proof,
    report_key,
    verify_proof,
)

SCHEMA_VERSION = 2
SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    node_id TEXT PRIMARY KEY,
    report_key BLOB NOT NULL,            -- SHA-256 of the node's token; proofs are HMACs with it
    created REAL NOT NULL,
    last_proof INTEGER NOT NULL DEFAULT 0,  -- the newest proof time accepted (ms): the replay floor
    first_seen REAL NOT NULL DEFAULT 0,  -- 0: never reported
    last_seen REAL NOT NULL DEFAULT 0,
    remote TEXT NOT NULL DEFAULT '',
    versions TEXT NOT NULL DEFAULT '{}',
    polls INTEGER NOT NULL DEFAULT 0
);
"""


@dataclass(frozen=True)
class NodeRecord:
    """A registered node and its last verified poll (first_seen, last_seen 0 and polls 0: none yet)."""

    node_id: str
    first_seen: float
    last_seen: float
    remote: str
    versions: dict[str, int]
    polls: int
    created: float = 0.0

    @property
    def reported(self) -> bool:
        return self.polls > 0


def valid_node_id(node_id: str) -> str:
    """`node_id` if it can name a node (what plugin.yaml's node_id allows); StoreError otherwise."""
    if clean_node_id(node_id) != node_id:
        raise StoreError(f"{node_id!r} is not a node id: 1-128 printable characters without surrounding spaces")
    return node_id


def _create_private(path: Path) -> None:
    """Create the store file mode 0600 (SQLite's journal files take the mode of the database)."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    except OSError as exc:
        raise StoreError(f"{path}: cannot create the fleet store: {exc.strerror}") from None


class FleetStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.exists():
            _create_private(path)
        try:
            self.db = sqlite3.connect(path, isolation_level=None, timeout=10, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self._migrate()
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: cannot open the fleet store: {exc}") from None

    def _migrate(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version < SCHEMA_VERSION:
                self.db.execute("DROP TABLE IF EXISTS nodes")  # schema 1: unauthenticated records
                os.chmod(self.path, 0o600)  # schema 1 was created with the umask's mode
                self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self.db.execute(SCHEMA)
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- the registry

    def add_node(self, node_id: str, now: float | None = None) -> str:
        """Register `node_id`; returns its token, which is stored nowhere."""
        token = new_token()
        try:
            self.db.execute("INSERT INTO nodes (node_id, report_key, created) VALUES (?, ?, ?)",
                            (valid_node_id(node_id), report_key(token), time.time() if now is None else now))
        except sqlite3.IntegrityError:
            raise StoreError(f"node {node_id!r} is already registered; `blocklist node remove` it first "
                             "to issue a new token") from None
        return token

    def remove_nodes(self, node_ids: Iterable[str]) -> None:
        """Drop nodes, their keys and their records, all or none; StoreError names one not registered."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for node_id in node_ids:
                if self.db.execute("DELETE FROM nodes WHERE node_id = ?", (node_id,)).rowcount == 0:
                    raise StoreError(f"no node named {node_id!r} is registered; nothing removed")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def nodes(self) -> list[NodeRecord]:
        try:
            rows = self.db.execute("SELECT node_id, first_seen, last_seen, remote, versions, polls, created "
                                   "FROM nodes ORDER BY node_id").fetchall()
            return [NodeRecord(n, first, last, r, json.loads(v), p, c) for n, first, last, r, v, p, c in rows]
        except (sqlite3.Error, ValueError) as exc:
            raise StoreError(f"cannot read the fleet store: {exc}") from None

    # -- reports

    def accept(self, node_header: str, have_header: str, proof_header: str, remote: str,
               now: float | None = None) -> ReportOutcome:
        """Record one manifest poll if its proof holds; what serve did with it either way."""
        return self.accept_many([(node_header, have_header, proof_header, remote)], now)[0]

    def accept_many(self, polls: Sequence[tuple[str, str, str, str]],
                    now: float | None = None) -> list[ReportOutcome]:
        """`accept` for each (node, have, proof, remote) poll, in order, in one transaction.

        One disk sync for the lot, however many polls: serve gathers the polls
        that arrive while the previous lot is written (blocklist.serve.FleetRecorder).
        A poll that fails `precheck` costs no database access; a lot without a
        verified poll writes nothing.
        """
        now = time.time() if now is None else now
        checked = [(precheck(node, proof, now), node, have, remote) for node, have, proof, remote in polls]
        if not any(isinstance(c, Proof) for c, *_ in checked):
            return [c for c, *_ in checked if isinstance(c, ReportOutcome)]
        self.db.execute("BEGIN IMMEDIATE")
        try:
            outcomes = [c if isinstance(c, ReportOutcome) else self._accept(clean_node_id(node) or "", have, c,
                                                                           remote, now)
                        for c, node, have, remote in checked]
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")
        return outcomes

    def _accept(self, node: str, have_header: str, proof: Proof, remote: str, now: float) -> ReportOutcome:
        row = self.db.execute("SELECT report_key FROM nodes WHERE node_id = ?", (node,)).fetchone()
        if row is None or not verify_proof(row[0], proof, node, have_header):
            return ReportOutcome.REFUSED
        versions = _versions_json(have_header)
        updated = self.db.execute(
            "UPDATE nodes SET last_proof = ?, first_seen = CASE WHEN polls = 0 THEN ? ELSE first_seen END, "
            "last_seen = ?, remote = ?, versions = ?, polls = polls + 1 WHERE node_id = ? AND last_proof < ?",
            (proof.millis, now, now, remote[:64], versions, node, proof.millis))
        return ReportOutcome.RECORDED if updated.rowcount else ReportOutcome.REPLAY

    def record_poll(self, node_id: str, versions: dict[str, int], remote: str, at: float | None = None) -> bool:
        """Set a registered node's last poll directly (tests and tools; serve uses `accept`).

        False, and nothing written, when `node_id` is not registered.
        """
        at = time.time() if at is None else at
        return self.db.execute(
            "UPDATE nodes SET first_seen = CASE WHEN polls = 0 THEN ? ELSE first_seen END, last_seen = ?, "
            "remote = ?, versions = ?, polls = polls + 1 WHERE node_id = ?",
            (at, at, remote, json.dumps(versions, sort_keys=True), node_id)).rowcount > 0

    def close(self) -> None:
        self.db.close()


@functools.lru_cache(maxsize=1024)
def _versions_json(have_header: str) -> str:
    """The versions column for an X-Blocklist-Have value (a fleet reports a few distinct ones)."""
    return json.dumps(parse_have(have_header), sort_keys=True)


def precheck(node_header: str, proof_header: str, now: float) -> Proof | ReportOutcome:
    """The checks of a poll's report that need no key: the proof to verify, or the outcome already.

    In an order that tells a stranger nothing about which nodes exist: the
    grammar, then the clock; the key and MAC (one answer for an unknown node
    and a bad MAC), then the replay floor, are `FleetStore.accept`'s.
    """
    node = clean_node_id(node_header)
    proof = parse_proof(proof_header)
    if node is None or proof is None:
        return ReportOutcome.ANONYMOUS if not proof_header else ReportOutcome.MALFORMED
    if abs(proof.millis - now * 1000) > PROOF_WINDOW_MS:
        return ReportOutcome.CLOCK
    return proof
