"""The circuit breaker: a new list version that blocks an implausible share of requests gives way to the previous one.

plugin.yaml (off unless the section is there; docs/OPERATIONS.md, "Circuit breaker"):

    safety:
      enabled: true          # default true once `safety:` is there; false keeps the numbers, off
      traffic: all           # or steered (stage 2: only the hosts stage 1 sends); default:
                             # steered when resolver.proxy_address(6) is set, else all
      max_block_ratio: 0.1   # default 0.1 (all) or 0.8 (steered); 0 < R < 1
      min_requests: 2000     # default 2000 (all) or 1000 (steered)

The rules:
  - Each enforcing process that answers requests (the proxy with its TLS listener, each
    Squid helper; not the Unbound module, whose queries are no sample of requests) judges
    a version of a list once, over the first `min_requests` requests it answers with it,
    when the cache holds a previous version of that list to fall back to and no record
    exists for that version yet (`Watch`). Blocked share > max_block_ratio: it trips.
  - A trip is recorded once, in `cache_dir/breaker/<list>.json` (`<source>+<list>.json` for a
    list of `sources:`), written atomically under
    an flock on `breaker/.lock`: the first process to trip a version wins, the others
    find its record. Every process of the node (Unbound too) stats `breaker/` with the
    cache's generation and, while the record is `open` and names the version state.json
    names, loads the previous version (lists/<list>/previous.json) instead: verified as
    any cached file is, and never nothing (a previous version that fails to load leaves
    the newest in force).
  - A newer version clears it: the record no longer names the cached version, so it is
    ignored, and sync deletes it when it writes the newer one (`clear_stale`).
  - `blocklist-plugin breaker reset LIST` turns the record to `reset`: the node enforces
    the tripped version again and does not judge it again; a newer version is judged.
  - Every trip, reset and close is a line of `breaker/audit.jsonl` (who, when, what) and a
    log line with a stable event name. No URL is ever in either.

A record's JSON:
    {"list": "iwf", "version": 8, "fallback": 7, "state": "open", "at": 1764590000.1,
     "by": "squid pid 4242 on isp1-squid-1", "requests": 2000, "blocks": 1900, "ratio": 0.95,
     "max_block_ratio": 0.1, "reset_at": null, "reset_by": null}
"""

from __future__ import annotations

import enum
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from blocklist.core import atomic
from blocklist.core.errors import BlocklistError, ConfigError
from resolver_plugin.local_policy import Lines

log = logging.getLogger("blocklist.plugin.breaker")

AUDIT = "audit.jsonl"
COUNTED_COMPONENTS = frozenset({"proxy", "squid"})  # stages whose checks are requests


class Traffic(enum.StrEnum):
    """What the enforcing proxy or Squid sees: it sets the default thresholds."""

    ALL = "all"          # every request of its clients: a sane list blocks a tiny share
    STEERED = "steered"  # stage 2: only hosts that carry listed pages, where a high share is normal


DEFAULTS = {Traffic.ALL: (0.1, 2000), Traffic.STEERED: (0.8, 1000)}  # (max_block_ratio, min_requests)


@dataclass(frozen=True)
class SafetyConfig:
    enabled: bool = False  # no `safety:` section: no breaker
    traffic: Traffic = Traffic.ALL
    max_block_ratio: float = DEFAULTS[Traffic.ALL][0]
    min_requests: int = DEFAULTS[Traffic.ALL][1]


_KEYS = ("enabled", "traffic", "max_block_ratio", "min_requests")


def parse_safety(where: str, lines: Lines, raw: Any, stage_one: bool) -> SafetyConfig:
    """`safety:` of plugin.yaml; `stage_one`: resolver.proxy_address(6) is set. ConfigError names the line."""
    if raw is None:
        return SafetyConfig()

    def at(*path: str) -> str:
        line = lines.line("safety", *path)
        return f"{where}:{line}" if line is not None else where

    if not isinstance(raw, dict):
        raise ConfigError(f"{at()}: safety must be a mapping ({', '.join(_KEYS)})")
    unknown = sorted(str(k) for k in raw if k not in _KEYS)
    if unknown:
        raise ConfigError(f"{at(unknown[0])}: unknown key safety.{unknown[0]} (known: {', '.join(_KEYS)})")
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"{at('enabled')}: safety.enabled must be true or false")
    traffic_raw = raw.get("traffic", (Traffic.STEERED if stage_one else Traffic.ALL).value)
    try:
        traffic = Traffic(traffic_raw)
    except ValueError:
        raise ConfigError(f"{at('traffic')}: safety.traffic must be all or steered") from None
    ratio, minimum = DEFAULTS[traffic]
    ratio = raw.get("max_block_ratio", ratio)
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 < ratio < 1:
        raise ConfigError(f"{at('max_block_ratio')}: safety.max_block_ratio must be a number between 0 and 1 "
                          "(a share of requests, e.g. 0.1)")
    minimum = raw.get("min_requests", minimum)
    if isinstance(minimum, bool) or not isinstance(minimum, int) or minimum < 1:
        raise ConfigError(f"{at('min_requests')}: safety.min_requests must be a whole number of at least 1")
    return SafetyConfig(enabled, traffic, float(ratio), minimum)


# ----------------------------------------------------------------------------- records


class BreakerState(enum.StrEnum):
    OPEN = "open"    # the node enforces `fallback`
    RESET = "reset"  # the operator chose `version`: enforced, not judged again


@dataclass(frozen=True)
class Trip:
    list: str
    version: int       # the version that tripped
    fallback: int      # the version enforced instead while open
    state: BreakerState
    at: float
    by: str            # "<component> pid <pid> on <node_id>"
    requests: int
    blocks: int
    ratio: float
    max_block_ratio: float
    reset_at: float | None = None
    reset_by: str | None = None

    def holds(self, version: int) -> bool:
        """Open and about `version` (the cached one): the node enforces `fallback`."""
        return self.state is BreakerState.OPEN and self.version == version

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "state": self.state.value}

    @classmethod
    def from_json(cls, raw: Any) -> Trip:
        """Raises ValueError/TypeError/KeyError on anything malformed."""
        if not isinstance(raw, dict):
            raise TypeError("not an object")
        return cls(list=str(raw["list"]), version=int(raw["version"]), fallback=int(raw["fallback"]),
                   state=BreakerState(raw["state"]), at=float(raw["at"]), by=str(raw["by"]),
                   requests=int(raw["requests"]), blocks=int(raw["blocks"]), ratio=float(raw["ratio"]),
                   max_block_ratio=float(raw["max_block_ratio"]),
                   reset_at=None if raw.get("reset_at") is None else float(raw["reset_at"]),
                   reset_by=None if raw.get("reset_by") is None else str(raw["reset_by"]))


def _record(folder: Path, name: str) -> Path:
    """The record of the list the node calls `name`; a source's "police/terror" is police+terror.json
    ("+" is in no list or source name)."""
    return folder / f"{name.replace('/', '+')}.json"


def read_trip(folder: Path, name: str) -> Trip | None:
    """The record of list `name`, None when there is none; a damaged one is logged and ignored
    (the newest version stays in force, as with no breaker)."""
    try:
        trip = Trip.from_json(json.loads(_record(folder, name).read_bytes()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError) as exc:
        log.error("breaker: record of list %s unreadable (%s); ignoring it", name, exc,
                  extra={"event": "breaker_record_unreadable", "list": name, "reason": str(exc)})
        return None
    return trip if trip.list == name else None


def generation(folder: Path) -> int:
    """Changes whenever a record is written or removed (the folder's mtime): readers reload then."""
    try:
        return folder.stat().st_mtime_ns
    except OSError:
        return 0


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """The breaker folder's flock; writers left by a kill -9 lose their temp files here."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o664)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        for tmp in folder.glob(".*.tmp-*"):  # every writer holds this lock: these are a dead one's
            tmp.unlink(missing_ok=True)
        yield
    finally:
        os.close(fd)


def _audit(folder: Path, event: str, trip: Trip, **extra: Any) -> None:
    line = json.dumps({"event": event, "time": time.time(), "list": trip.list, "version": trip.version,
                       "fallback": trip.fallback, **extra}, sort_keys=True) + "\n"
    fd = os.open(folder / AUDIT, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o664)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def record_trip(folder: Path, trip: Trip) -> Trip:
    """Record `trip` unless its version already has a record; the record in force afterwards."""
    with _locked(folder):
        current = read_trip(folder, trip.list)
        if current is not None and current.version == trip.version:
            return current  # another process tripped it first, or the operator reset it
        atomic.write_bytes(_record(folder, trip.list), json.dumps(trip.as_json()).encode(), 0o664)
        _audit(folder, "breaker_tripped", trip, by=trip.by, requests=trip.requests, blocks=trip.blocks,
               ratio=trip.ratio, max_block_ratio=trip.max_block_ratio)
    log.critical("breaker: list %s v%d blocked %d of %d requests (%.1f%% > %.1f%%) at %s; the node goes "
                 "back to v%d", trip.list, trip.version, trip.blocks, trip.requests, 100 * trip.ratio,
                 100 * trip.max_block_ratio, trip.by, trip.fallback,
                 extra={"event": "breaker_tripped", "list": trip.list, "version": trip.version,
                        "fallback": trip.fallback, "counts": {"requests": trip.requests, "blocks": trip.blocks},
                        "who": trip.by})
    return trip


def reset(folder: Path, name: str, version: int, who: str) -> Trip | None:
    """Turn list `name`'s open record for `version` to reset by `who`; None if none is open."""
    with _locked(folder):
        current = read_trip(folder, name)
        if current is None or not current.holds(version):
            return None
        done = replace(current, state=BreakerState.RESET, reset_at=time.time(), reset_by=who)
        atomic.write_bytes(_record(folder, name), json.dumps(done.as_json()).encode(), 0o664)
        _audit(folder, "breaker_reset", done, who=who)
    log.warning("breaker: list %s reset by %s: v%d is enforced again and not judged again", name, who, version,
                extra={"event": "breaker_reset", "list": name, "version": version, "fallback": current.fallback,
                       "who": who})
    return done


def clear_stale(folder: Path, name: str, version: int) -> None:
    """Version `version` of list `name` is cached now: drop a record about an older one (sync)."""
    current = read_trip(folder, name)
    if current is None or current.version >= version:
        return
    try:
        with _locked(folder):
            current = read_trip(folder, name)
            if current is None or current.version >= version:
                return
            _record(folder, name).unlink(missing_ok=True)
            _audit(folder, "breaker_closed", current, newer=version)
    except OSError as exc:
        log.warning("breaker: cannot remove the record of list %s (%s); it is ignored anyway", name, exc.strerror)
        return
    if current.state is BreakerState.OPEN:
        log.warning("breaker: list %s closed: v%d arrived after v%d tripped", name, version, current.version,
                    extra={"event": "breaker_closed", "list": name, "version": version,
                           "reason": f"v{current.version} tripped; v{version} arrived"})


# ----------------------------------------------------------------------------- one process's judgment


class Versioned(Protocol):
    """What the breaker reads of a cached list state (resolver_plugin.cache.ListState)."""

    @property
    def version(self) -> int: ...


@dataclass
class _Window:
    version: int
    fallback: int
    requests: int = 0
    blocks: int = 0


class Watch:
    """Counts, per list, the requests this process answers with a version under judgment.

    `observe` is on the request path: with nothing armed it is one truthiness test in the
    caller. `arm` runs after each reload (another thread in the proxy): it builds a new
    dict and swaps it in, so a count racing a swap is lost at worst.
    """

    def __init__(self, safety: SafetyConfig, folder: Path, component: str, node_id: str) -> None:
        self.safety = safety
        self.folder = folder
        self.by = f"{component} pid {os.getpid()} on {node_id}"
        self.armed: dict[str, _Window] = {}
        self._judged: set[tuple[str, int]] = set()
        self._lock = threading.Lock()  # one judgment per window, whoever counts the last request

    def arm(self, candidates: dict[str, tuple[int, int]]) -> None:
        """Judge exactly `candidates` (list -> (version, fallback)), keeping running counts."""
        old = self.armed
        self.armed = {name: old[name] if name in old and old[name].version == version else _Window(version, fallback)
                      for name, (version, fallback) in candidates.items()
                      if (name, version) not in self._judged}

    def arm_for(self, enforced: dict[str, int], state: Callable[[str], Versioned | None],
                previous: Callable[[str], Versioned | None]) -> None:
        """Judge the `enforced` versions (list -> version) that are the cached one (`state`), have an
        older one to fall back to (`previous`) and no record yet (the cache's readers, which raise
        BlocklistError for a damaged file: that list is not judged)."""
        candidates = {}
        for name, version in enforced.items():
            try:
                current, before = state(name), previous(name)
            except BlocklistError:
                continue
            trip = read_trip(self.folder, name)
            if (current is not None and current.version == version and before is not None
                    and before.version < version and (trip is None or trip.version != version)):
                candidates[name] = (version, before.version)
        self.arm(candidates)

    def observe(self, blocked_by: str | None, version: int | None) -> bool:
        """Count one request (blocked by list `blocked_by` at `version`, or not); True when it tripped a list."""
        tripped = False
        for name, window in list(self.armed.items()):
            window.requests += 1
            if blocked_by == name and version == window.version:
                window.blocks += 1
            if window.requests >= self.safety.min_requests:
                tripped = self._judge(name, window) or tripped
        return tripped

    def _judge(self, name: str, window: _Window) -> bool:
        with self._lock:
            if (name, window.version) in self._judged:
                return False
            self._judged.add((name, window.version))
            self.armed = {n: w for n, w in self.armed.items() if n != name}
        ratio = window.blocks / window.requests
        if ratio <= self.safety.max_block_ratio:
            log.info("breaker: list %s v%d passed: blocked %d of %d requests", name, window.version,
                     window.blocks, window.requests,
                     extra={"event": "breaker_passed", "list": name, "version": window.version,
                            "counts": {"requests": window.requests, "blocks": window.blocks}})
            return False
        trip = Trip(name, window.version, window.fallback, BreakerState.OPEN, time.time(), self.by,
                    window.requests, window.blocks, ratio, self.safety.max_block_ratio)
        try:
            record_trip(self.folder, trip)
        except OSError as exc:
            log.error("breaker: list %s v%d tripped but %s cannot be written (%s): this process goes on "
                      "enforcing it", name, window.version, self.folder, exc.strerror,
                      extra={"event": "breaker_record_failed", "list": name, "version": window.version,
                             "reason": exc.strerror})
            return False
        return True
