"""Check counters of every plugin process, summed for the admin endpoint's /metrics.

Enforcement shells call `observe_check` / `observe_host_check` / `observe_invalid`
on every decision; labels are list names and components, never URLs or hosts. A
block of a list's canary (blocklist.core.canary: the selftest's probe) is counted
with action "canary", never "block" or "proxy", so real block counts and ratios
leave the selftest out.

Getting counters from processes that cannot serve HTTP (Squid helpers, the
Unbound module) to the one admin endpoint: each process that calls
`share_counters(cache_dir, live)` keeps its counters in memory and a daemon
thread rewrites `cache_dir/metrics/<pid>-<start>-<pid namespace>.json` (tmp +
rename) at most every `interval` seconds when they changed, and once more at
exit. `total` (which the admin endpoint's collector calls) sums every file, its
own process's live counters, and `retired.json`: the totals of processes that
have exited, merged in (under a flock, idempotently) so that a helper restart
never makes a counter go down, which Prometheus would read as a reset and turn
into a spike. A process is dead when its pid is gone or now belongs to a
process with another start time, judged only within our pid namespace.

Why not prometheus_client's multiprocess mode: it is switched on by an
environment variable that must be set before prometheus_client is first
imported (easy to get wrong inside Unbound's embedded Python), and its per-pid
files must be wiped by a common parent at start, which Squid helpers, the
Unbound module and the proxy do not have. The price here is up to `interval`
seconds of staleness, and of counts lost on a kill -9.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import logging
import os
import threading
import weakref
from bisect import bisect_left
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from blocklist.core.canary import CanaryHostVerdict, CanaryVerdict
from blocklist.core.matcher import HostVerdict, Verdict
from resolver_plugin.cache import Cache, LiveMatcher

log = logging.getLogger("blocklist.plugin.metrics")

BUCKETS = (1e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2, 0.1)
RETIRED = "retired.json"


class Tally:
    """Counters of one process, or the sum of several; keys are label tuples."""

    def __init__(self) -> None:
        self.checks: Counter[tuple[str, ...]] = Counter()   # (component, kind)
        self.blocks: Counter[tuple[str, ...]] = Counter()   # (component, list, action)
        self.invalid: Counter[tuple[str, ...]] = Counter()  # (component,)
        self.bloom: Counter[tuple[str, ...]] = Counter()    # (list, outcome)
        self.local: Counter[tuple[str, ...]] = Counter()    # (component, policy): local allow/block decisions
        self.monitor: Counter[tuple[str, ...]] = Counter()  # (component, list): a monitored list's would-be blocks
        self.refused: Counter[tuple[str, ...]] = Counter()  # (component, reason): refused by a rule, not a list
        self.latency: dict[str, list[float]] = {}           # component -> per-bucket counts, +Inf, sum

    _COUNTERS = ("checks", "blocks", "invalid", "bloom", "local", "monitor", "refused")

    def add(self, other: Tally) -> None:
        for name in self._COUNTERS:
            getattr(self, name).update(getattr(other, name))
        for component, values in other.latency.items():
            mine = self.latency.setdefault(component, [0.0] * (len(BUCKETS) + 2))
            for i, value in enumerate(values):
                mine[i] += value

    def copy(self) -> Tally:
        out = Tally()
        out.add(self)
        return out

    def as_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {name: [[list(k), v] for k, v in sorted(getattr(self, name).items())]
                               for name in self._COUNTERS}
        doc["buckets"] = list(BUCKETS)
        doc["latency"] = self.latency
        return doc

    @classmethod
    def from_json(cls, doc: Any) -> Tally:
        """Raises ValueError/TypeError/KeyError on anything malformed."""
        out = cls()
        for name in cls._COUNTERS:
            counter = getattr(out, name)
            for labels, value in doc.get(name, ()):  # a counter newer than the file's writer: none yet
                if not all(isinstance(label, str) for label in labels) or float(value) < 0:
                    raise ValueError(f"bad {name} sample")
                counter[tuple(labels)] += float(value)
        if list(doc["buckets"]) == list(BUCKETS):  # other buckets: a process of another release
            for component, values in doc["latency"].items():
                if not isinstance(component, str) or len(values) != len(BUCKETS) + 2:
                    raise ValueError("bad latency sample")
                out.latency[component] = [float(v) for v in values]
        return out


# ----------------------------------------------------------------------------- this process

_lock = threading.Lock()
_tally = Tally()
_changes = 0
_share: _Sharing | None = None
_bloom_seen: dict[int, tuple[weakref.ref, int, int]] = {}  # id(filter) -> (filter, confirmed, refuted)
_watched: list[weakref.ref] = []


def _count(component: str, kind: str, count: int, seconds: float) -> None:
    """`count` checks of `kind` that took `seconds` together, each recorded with their mean
    latency (a batch costs one lock and one bisect); call with _lock held."""
    global _changes
    _changes += count
    _tally.checks[(component, kind)] += count
    values = _tally.latency.get(component)
    if values is None:
        values = _tally.latency[component] = [0.0] * (len(BUCKETS) + 2)
    values[bisect_left(BUCKETS, seconds / count)] += count
    values[-1] += seconds


CANARY = "canary"  # the action label of a canary hit


def observe_check(component: str, verdict: Verdict, seconds: float) -> None:
    with _lock:
        _count(component, "url", 1, seconds)
        if verdict.blocked:
            _tally.blocks[(component, verdict.list or "", CANARY if isinstance(verdict, CanaryVerdict)
                           else "block")] += 1


def observe_canary(component: str, list_name: str) -> None:
    """A canary hit in a batch of checks (see observe_checks): its check is in the batch."""
    global _changes
    with _lock:
        _changes += 1
        _tally.blocks[(component, list_name, CANARY)] += 1


def observe_checks(component: str, count: int, blocks: Mapping[str, int], seconds: float) -> None:
    """A batch of `count` URL checks that took `seconds` together (the Squid helper's hot loop)."""
    if count <= 0:
        return
    with _lock:
        _count(component, "url", count, seconds)
        for name, n in blocks.items():
            _tally.blocks[(component, name, "block")] += n


def observe_host_passes(component: str, count: int, seconds: float) -> None:
    """A batch of `count` host checks that passed, taking `seconds` together (Unbound's quick path)."""
    if count <= 0:
        return
    with _lock:
        _count(component, "host", count, seconds)


def observe_host_check(component: str, verdict: HostVerdict, seconds: float) -> None:
    with _lock:
        _count(component, "host", 1, seconds)
        if verdict.list is not None:
            action = CANARY if isinstance(verdict, CanaryHostVerdict) else verdict.action.value
            _tally.blocks[(component, verdict.list, action)] += 1


def observe_invalid(component: str) -> None:
    global _changes
    with _lock:
        _changes += 1
        _tally.invalid[(component,)] += 1


def observe_refused(component: str, reason: str) -> None:
    """A request refused by a rule that is not a list (a CONNECT port, a destination, not TLS)."""
    global _changes
    with _lock:
        _changes += 1
        _tally.refused[(component, reason)] += 1


def watch(live: LiveMatcher) -> None:
    """Count the Bloom hits `live`'s filters confirm and refute (they count; we harvest)."""
    with _lock:
        if not any(ref() is live for ref in _watched):
            _watched.append(weakref.ref(live))


def _harvest_bloom() -> None:
    """Add what the watched filters counted since the last harvest, and the watched matchers'
    local policy and monitor counts (taken: a count made during the swap may be lost); call
    with _lock held.

    A reload replaces a filter (whose counts start at 0): what the old one counted
    after the last harvest is lost, a few seconds' worth at most.
    """
    global _changes
    for ref in _watched:
        live = ref()
        if live is None:
            continue
        for mine, theirs in ((_tally.local, "local_counts"), (_tally.monitor, "monitor_counts")):
            taken = getattr(live, theirs)
            if taken:
                setattr(live, theirs, Counter())
                mine.update(taken)
                _changes += sum(taken.values())
        for f in live.matcher.filters:
            seen = _bloom_seen.get(id(f))
            confirmed, refuted = f.bloom_confirmed, f.bloom_refuted
            base = seen[1:] if seen is not None and seen[0]() is f else (0, 0)
            _tally.bloom[(f.name, "confirmed")] += confirmed - base[0]
            _tally.bloom[(f.name, "refuted")] += refuted - base[1]
            _bloom_seen[id(f)] = (weakref.ref(f), confirmed, refuted)
    for key in [key for key, seen in _bloom_seen.items() if seen[0]() is None]:
        del _bloom_seen[key]
    _watched[:] = [ref for ref in _watched if ref() is not None]


def snapshot() -> Tally:
    """This process's counters now."""
    with _lock:
        _harvest_bloom()
        return _tally.copy()


def _reset_after_fork() -> None:
    global _tally, _changes, _share, _lock
    _lock = threading.Lock()
    _tally, _changes, _share = Tally(), 0, None  # the parent owns what it counted
    _bloom_seen.clear()


os.register_at_fork(after_in_child=_reset_after_fork)


# ----------------------------------------------------------------------------- sharing by files

def _start_time(pid: int | str) -> str | None:
    """A process's start time (ticks since boot) from /proc: None if not visible, "" if unreadable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return ""
    return stat.rpartition(")")[2].split()[19]


def _alive(pid: int, start: str) -> bool:
    """Whether the process that wrote a counter file still runs; True when we cannot tell."""
    now_started = _start_time(pid)
    if now_started is not None:
        return now_started in ("", start)
    try:
        os.kill(pid, 0)  # /proc may hide other users' processes (hidepid): ask the kernel
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists, as another user
    return True


def _namespace() -> str:
    """Our pid namespace ("pid:[4026531836]"), "" without /proc: pids mean something only within one."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


class _Sharing:
    def __init__(self, folder: Path, interval: float) -> None:
        self.folder = folder
        self.interval = interval
        start, namespace = _start_time("self") or "", _namespace()
        ns_id = "".join(c for c in namespace if c.isdigit()) or "0"
        self.path = folder / f"{os.getpid()}-{start or 0}-{ns_id}.json"
        self.doc = {"pid": os.getpid(), "start": start, "ns": namespace}
        self.flushed = -1
        self.stop = threading.Event()
        self.writing = threading.Lock()  # the timer thread, atexit and stop_sharing may meet

    def flush(self) -> None:
        if os.getpid() != self.doc["pid"]:
            return  # a forked child running its inherited atexit: the file is the parent's
        with self.writing:
            self._flush()

    def _flush(self) -> None:
        with _lock:
            _harvest_bloom()
            if _changes == self.flushed:
                return
            changes, tally = _changes, _tally.copy()
        data = json.dumps({**self.doc, "tally": tally.as_json()}).encode()
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("metrics: cannot write %s: %s", self.path, exc.strerror)
            return
        self.flushed = changes

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            self.flush()


def share_counters(cache_dir: Path, live: LiveMatcher | None = None, interval: float = 5.0) -> bool:
    """Make this process's counters reach /metrics of whichever process serves it.

    Call once at start, after any fork. Returns False (and logs why) when
    cache_dir/metrics/ cannot be written: the counters then stay in-process.
    """
    global _share
    if live is not None:
        watch(live)
    if _share is not None:
        return True
    folder = Cache(cache_dir).metrics_dir
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK):
            raise PermissionError(13, "not writable")
    except OSError as exc:
        log.warning("metrics: %s: %s; this process's counters stay out of /metrics", folder, exc.strerror)
        return False
    _share = _Sharing(folder, interval)
    retire_dead(folder)
    threading.Thread(target=_share.run, name="blocklist-metrics", daemon=True).start()
    atexit.register(_share.flush)
    return True


def stop_sharing() -> None:
    """Write the counters a last time and stop (tests; exit does this by itself)."""
    global _share
    if _share is not None:
        _share.stop.set()
        _share.flush()
        atexit.unregister(_share.flush)
        _share = None


def _read_tally(path: Path) -> tuple[dict[str, Any], Tally]:
    doc = json.loads(path.read_bytes())
    return doc, Tally.from_json(doc["tally"])


class _Locked:
    """An exclusive flock on folder/.lock, or nothing if the folder is read-only to us."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.fd: int | None = None

    def __enter__(self) -> bool:
        try:
            self.fd = os.open(self.folder / ".lock", os.O_RDWR | os.O_CREAT, 0o664)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except OSError:
            return False
        return True

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)


def retire_dead(folder: Path) -> None:
    """Merge the files of exited processes into retired.json and remove them, exactly once."""
    with _Locked(folder) as locked:
        if locked:
            _retire(folder)


def _retire(folder: Path) -> None:
    namespace = _namespace()
    try:
        doc, retired = _read_tally(folder / RETIRED)
        merged = set(doc.get("merged", []))
    except FileNotFoundError:
        retired, merged = Tally(), set()
    except (OSError, ValueError, TypeError, KeyError) as exc:
        log.error("metrics: %s unreadable (%s); starting the retired totals again", folder / RETIRED, exc)
        retired, merged = Tally(), set()
    dead = []
    for path in folder.glob("[0-9]*.json"):
        try:
            doc, tally = _read_tally(path)
            pid = int(doc["pid"])
        except FileNotFoundError:
            continue
        except (OSError, ValueError, TypeError, KeyError):
            dead.append(path)  # a torn or foreign file: nothing to merge
            continue
        if not namespace or doc.get("ns") != namespace or not doc.get("start"):
            continue  # another pid namespace, or no /proc: we cannot tell if it is alive
        if _alive(pid, doc["start"]):
            continue
        if path.stem not in merged:
            retired.add(tally)
            merged.add(path.stem)
        dead.append(path)
    if not dead:
        return
    # Names are pruned once their file is gone, so a crash between write and unlink
    # never merges a file twice, and the list stays short.
    present = {p.stem for p in folder.glob("[0-9]*.json")}
    data = json.dumps({"merged": sorted(merged & present), "tally": retired.as_json()}).encode()
    tmp = folder / f".{RETIRED}.tmp-{os.getpid()}"
    try:
        tmp.write_bytes(data)
        os.replace(tmp, folder / RETIRED)
        for path in dead:
            path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("metrics: cannot retire exited processes' counters in %s: %s", folder, exc.strerror)


def total(cache_dir: Path) -> Tally:
    """Every process's counters: exited ones, others' files, and this process's live ones."""
    folder = Cache(cache_dir).metrics_dir
    out = snapshot()
    if not folder.is_dir():
        return out
    own = _share.path if _share is not None else None
    with _Locked(folder) as locked:
        if locked:
            _retire(folder)
        for path in [folder / RETIRED, *folder.glob("[0-9]*.json")]:
            if path == own:
                continue
            try:
                out.add(_read_tally(path)[1])
            except FileNotFoundError:
                continue
            except (OSError, ValueError, TypeError, KeyError) as exc:
                log.warning("metrics: skipping %s: %s", path.name, exc)
    return out
