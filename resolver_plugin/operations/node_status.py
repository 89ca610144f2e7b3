"""The node status file: what this node enforces and how its sync is doing.

`sync` writes it (atomically) after every attempt; `status`, the admin endpoint
and the metrics read it. It never holds a URL: only list names, versions,
times, counts and error texts that name files and reasons, not entries.

    {
      "node_id": "isp1-proxy-3", "source": "http://...", "updated": 1763890000.5,
      "manifest": {"version": 7, "expires": 1764490000, "signed_by": "ab12...", "fetched_at": ...},
      "lists": {
        "iwf": {"version": 3, "entries": 120, "checksum": "...", "expires": 1764490000,
                "newest_seen": 4, "newest_seen_at": 1763889990.0,
                "last_success": 1763889000.0, "last_attempt": 1763890000.0,
                "last_error": "http: manifest.json: HTTP 503", "last_error_kind": "http",
                "last_error_at": 1763890000.0,
                "refused": "signature: bad signature by key ab12", "refused_kind": "signature",
                "refused_at": 1763889500.0}
      },
      "errors_total": {"signature": 1, "network": 3}
    }

Lag is derived, not stored: lag_versions = newest_seen - version, and
lag_seconds = now - newest_seen_at while behind (0 when in sync).

`last_error_kind` is the ErrorKind of `last_error`, whose text starts with it
too ("kind: reason", for people). Files written before the field existed carry
the kind only in that text: ListStatus.from_json reads it from there.

`last_error` is the latest failure of any kind. `refused` is the latest
verification failure (ErrorKind.is_verification: the source sent something
this node refused) and it stands until a verified sync of the list succeeds
(`record_success`): a network error after it adds `last_error` and never
hides it. Files written before `refused` existed have it in `last_error` when
that is a verification failure newer than last_success (`standing_refusal`).
Each list keeps these two texts, each at most MAX_ERROR_TEXT characters.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blocklist.core import atomic
from blocklist.core.errors import ErrorKind

# Every kind, in the order the `kind` label of the sync error counters lists them.
ERROR_KINDS: tuple[ErrorKind, ...] = tuple(ErrorKind)
MAX_ERROR_TEXT = 512


def bounded(text: str | None) -> str | None:
    """`text` cut to MAX_ERROR_TEXT characters: a source cannot grow status.json through its errors."""
    if text is None or len(text) <= MAX_ERROR_TEXT:
        return text
    return text[:MAX_ERROR_TEXT - 3] + "..."


@dataclass(frozen=True)
class Refusal:
    """A verification failure that stands: its text, kind and time."""

    error: str
    kind: ErrorKind
    at: float


@dataclass
class ListStatus:
    version: int = 0             # enforced version (0: none)
    entries: int = 0
    checksum: str = ""
    expires: float = 0.0         # expiry of the manifest that announced the enforced version
    newest_seen: int = 0         # newest version a verified manifest announced
    newest_seen_at: float = 0.0  # when we first saw newest_seen
    last_success: float = 0.0    # last sync that ended with this list at newest_seen
    last_attempt: float = 0.0
    last_error: str | None = None
    last_error_kind: ErrorKind | None = None  # the kind of last_error
    last_error_at: float = 0.0
    refused: str | None = None   # the latest verification failure, until a verified sync succeeds
    refused_kind: ErrorKind | None = None
    refused_at: float = 0.0

    def record_error(self, kind: ErrorKind, reason: str, now: float) -> None:
        text = bounded(f"{kind}: {reason}")
        self.last_error, self.last_error_kind, self.last_error_at = text, kind, now
        if kind.is_verification:
            self.refused, self.refused_kind, self.refused_at = text, kind, now

    def record_success(self, now: float) -> None:
        """A verified sync left the list at the newest version: a standing refusal is repaired."""
        self.last_success = now
        self.refused, self.refused_kind, self.refused_at = None, None, 0.0

    def standing_refusal(self) -> Refusal | None:
        """The verification failure not yet repaired by a verified sync, if any."""
        if self.refused and self.refused_kind is not None and self.refused_at >= self.last_success:
            return Refusal(self.refused, self.refused_kind, self.refused_at)
        kind = self.last_error_kind
        if self.last_error and kind is not None and kind.is_verification and self.last_error_at >= self.last_success:
            return Refusal(self.last_error, kind, self.last_error_at)  # a file from before `refused`
        return None

    def lag_versions(self) -> int:
        return max(0, self.newest_seen - self.version)

    def lag_seconds(self, now: float | None = None) -> float:
        if self.lag_versions() == 0 or not self.newest_seen_at:
            return 0.0
        return max(0.0, (time.time() if now is None else now) - self.newest_seen_at)

    @classmethod
    def from_json(cls, raw: Any) -> ListStatus:
        """One list's record; raises ValueError/TypeError if malformed."""
        if not isinstance(raw, dict):
            raise TypeError("status: a list's record is not an object")
        fields = dict(raw)
        kind = fields.pop("last_error_kind", None)
        refused_kind = fields.pop("refused_kind", None)
        status = cls(**fields)
        status.last_error, status.refused = bounded(status.last_error), bounded(status.refused)
        status.last_error_kind = _read_kind(kind, status.last_error)
        status.refused_kind = _read_kind(refused_kind, status.refused)
        return status


def _read_kind(value: Any, message: str | None) -> ErrorKind | None:
    """The kind of a recorded error: the field, else the "kind: reason" text that older
    files (and records built without a kind) carry it in; None for a kind this version
    does not know (a newer sync's), which is then judged as no particular kind."""
    if value is None and message:
        value = message.partition(":")[0].strip()
    if not isinstance(value, str):
        return None
    try:
        return ErrorKind(value)
    except ValueError:
        return None


@dataclass
class ManifestStatus:
    version: int = 0
    expires: float = 0.0
    signed_by: str = ""
    fetched_at: float = 0.0


@dataclass
class NodeStatus:
    node_id: str = ""
    source: str = ""
    updated: float = 0.0
    manifest: ManifestStatus = field(default_factory=ManifestStatus)
    lists: dict[str, ListStatus] = field(default_factory=dict)
    errors_total: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, raw: Any) -> NodeStatus:
        """Parse a status document; raises ValueError/TypeError/KeyError if malformed."""
        if not isinstance(raw, dict):
            raise TypeError("status: not an object")
        return cls(node_id=str(raw.get("node_id", "")), source=str(raw.get("source", "")),
                   updated=float(raw.get("updated", 0)),
                   manifest=ManifestStatus(**raw.get("manifest", {})),
                   lists={str(k): ListStatus.from_json(v) for k, v in raw.get("lists", {}).items()},
                   errors_total={str(k): int(v) for k, v in raw.get("errors_total", {}).items()})

    def count_error(self, kind: ErrorKind) -> None:
        self.errors_total[kind.value] = self.errors_total.get(kind.value, 0) + 1


def read_status(path: Path) -> NodeStatus | None:
    """The status at `path`, None if there is none yet; raises OSError/ValueError if unreadable."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return NodeStatus.from_json(json.loads(text))


def write_status(path: Path, status: NodeStatus) -> None:
    status.updated = time.time()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_bytes(path, json.dumps(status.as_json(), indent=1, sort_keys=True).encode())
