"""The plugin's local cache of verified artifacts, and the hot-reloading matcher built from it.

Layout under `cache_dir` (written only by `sync`, read by every enforcement process):

    manifest.json               the last verified manifest, bytes as fetched
    meta.json                   {"lists": {name: meta}}: who blocks with each list, from that manifest
    root.json                   the newest verified root document, bytes as fetched
    keys.json                   the keys that verify the cached files: the trusted root's online
                                keys, and a retired one while files it signed are in force
    sync.lock                   flock held by the one `sync` that writes this cache
    lists/<name>/snapshot-N     a verified snapshot, bytes as fetched (signed)
    lists/<name>/delta-M-N      verified deltas applied on top of it, in order
    lists/<name>/compiled-N-C   the list at version N (C: its checksum's first 16 hex digits)
                                as blocklist.core.format.compiled lays it out, which every
                                enforcing process maps read-only: one copy per node
    lists/<name>/state.json     {"version", "checksum", "snapshot", "deltas", "compiled"}: what to load
    lists/<name>/previous.json  the same for the version before it, whose files are kept too: what
                                the circuit breaker falls back to (resolver_plugin.breaker)
    breaker/<name>.json         a trip of the circuit breaker; breaker/audit.jsonl its history. Written
                                by enforcement processes and `breaker reset`, not by sync
    generation                  rewritten after every change; readers stat it to reload
    status.json                 the node status (resolver_plugin.operations.node_status)
    selftest.json               the last `selftest` result (resolver_plugin.operations.selftest)
    metrics/<pid>.json          each enforcing process's counters (resolver_plugin.operations.metrics)

With several sources (plugin.yaml `sources:`), each source's files are kept apart, in a
folder of its own with the layout above, and the node-wide files stay at the top:

    sources/<source>/           manifest.json, meta.json, root.json, keys.json, lists/<name>/...,
                                status.json (that source's part of the node status)
    sync.lock, generation, metrics/

The one-source form keeps everything at the top, as before sources existed.
`Cache` is the one owner of these names: everything else asks it for a path, and
`Cache.source(name)` is the view of one source's files (the top itself for the unnamed source).

Writers put new artifact files first (the compiled file among them), then
previous.json (the state being replaced), with one fsync of the folder for them all,
and replace state.json last (each file atomically: temp file, fsync, rename; the
compiled file is not fsynced, since readers check it and sync writes it again at
start when it fails), then bump `generation` (a signal, not fsynced), then delete files
neither state.json nor previous.json names: a kill -9 anywhere leaves a state.json
and a previous.json that name complete files. A compiled file of an older version
is deleted while processes may still map it: they move on at their next reload,
and an unlinked mapped file stays readable to them.
`sync` verifies the signatures and the resulting checksum on every load. Enforcing
processes map the compiled file and check its header, bounds and SHA-256 against
state.json (blocklist.core.format.compiled), without parsing or copying; a cache
without one (written by a release before it) or with one that fails the check is
read from the signed files as sync reads it, so a damaged cache is refused and the
node never starts open. A list that fails both keeps its previous in-memory version.
An expired list is still loaded: a plugin never starts open when it has a cache.
"""

from __future__ import annotations

import base64
import fcntl
import json
import logging
import math
import mmap
import os
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from blocklist.core import atomic
from blocklist.core.canary import CanaryHostVerdict, CanaryVerdict, is_canary_host, is_canary_url
from blocklist.core.digests import Scope
from blocklist.core.errors import BlocklistError, ChecksumError, ConfigError, FormatError
from blocklist.core.format.artifacts import read_delta, read_snapshot
from blocklist.core.format.compiled import read_compiled, write_compiled
from blocklist.core.format.container import MAX_HEADER, PREFIX, signer_of
from blocklist.core.format.keys import Keyring, key_id
from blocklist.core.format.listmeta import ListMeta, meta_from_json
from blocklist.core.format.strictjson import check_list_name
from blocklist.core.matcher import (
    ALLOWED,
    HOST_PASS,
    FailClosedHostVerdict,
    FailClosedVerdict,
    HostAction,
    HostVerdict,
    ListFilter,
    Matcher,
    Verdict,
)
from blocklist.core.policy import Note, Policy
from blocklist.core.urls import canonicalize, web_form
from resolver_plugin import breaker
from resolver_plugin.config import PluginConfig

log = logging.getLogger("blocklist.plugin.cache")

# With fail_closed and no list loaded, every check gets these: blocked, and shown (Squid's
# message, the block page, the access log) and counted (/metrics) under FAIL_CLOSED_LABEL.
FAIL_CLOSED_LABEL = "(no list loaded: fail-closed)"
FAIL_CLOSED_VERDICT = FailClosedVerdict(True, FAIL_CLOSED_LABEL)
FAIL_CLOSED_HOST_VERDICT = FailClosedHostVerdict(HostAction.PROXY, FAIL_CLOSED_LABEL)
_NO_META = ListMeta()


@dataclass(frozen=True)
class ListState:
    version: int
    checksum: str
    snapshot: str           # file name inside lists/<name>/
    deltas: tuple[str, ...]  # file names, applied in order
    compiled: str | None = None  # the compiled list file of the result; None in caches written before it

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"version": self.version, "checksum": self.checksum, "snapshot": self.snapshot,
                               "deltas": list(self.deltas)}
        if self.compiled is not None:
            out["compiled"] = self.compiled
        return out


def _safe_name(name: Any) -> str:
    if not isinstance(name, str) or "/" in name or name.startswith(".") or not name:
        raise FormatError(f"cache: bad file name {name!r}")
    return name


_SIGNERS: dict[tuple[str, int, int, int], str] = {}  # (path, inode, size, mtime) -> key id; files are immutable


def _file_signer(path: Path) -> str:
    """The key id in the header of the signed file at `path` (not verified); a stat when seen before.

    Sync asks this of every cached file for every new version (which keys its cache still
    needs); remembering it turns a growing chain of opens and reads into stats.
    """
    st = os.stat(path)
    key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
    signer = _SIGNERS.get(key)
    if signer is None:
        with open(path, "rb") as f:
            signer = signer_of(f.read(PREFIX.size + MAX_HEADER))
        if len(_SIGNERS) >= 4096:
            _SIGNERS.clear()
        _SIGNERS[key] = signer
    return signer


class Cache:
    """The files under cache_dir, or (`source`) one source's part of them."""

    def __init__(self, root: Path, top: Path | None = None, source_name: str = "") -> None:
        self.root = root             # this source's files
        self.top = top or root       # cache_dir: the node-wide files (lock, generation, metrics, breaker)
        self.source_name = source_name  # "" for cache_dir itself (the one-source form)

    def source(self, name: str) -> Cache:
        """The view of source `name`'s files; the unnamed source (one-source form) is cache_dir itself."""
        if not name:
            return Cache(self.top)
        return Cache(self.top / "sources" / check_list_name(name), self.top, name)

    def label(self, name: str) -> str:
        """The node's name of this view's list `name` (SourceConfig.qualified): "police/terror"."""
        return f"{self.source_name}/{name}" if self.source_name else name

    def view_of(self, label: str) -> tuple[Cache, str]:
        """The source view that holds the list the node calls `label`, and its name there."""
        source, _, name = label.rpartition("/")
        return self.source(source), name

    def state_of(self, label: str) -> ListState | None:
        view, name = self.view_of(label)
        return view.state(name)

    def previous_of(self, label: str) -> ListState | None:
        view, name = self.view_of(label)
        return view.previous(name)

    def lock_writer(self) -> int:
        """Take the cache's writer lock (one sync per cache_dir); returns the fd to keep open."""
        self.top.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.top / "sync.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise ConfigError(f"{self.top}: another sync already writes this cache_dir") from None
        self.remove_stale_temp_files()
        return fd

    def remove_stale_temp_files(self) -> None:
        """Temp files a killed writer left behind (only the lock holder may call this)."""
        for pattern in (".*.tmp-*", "lists/*/.*.tmp-*", "sources/*/.*.tmp-*", "sources/*/lists/*/.*.tmp-*"):
            for path in self.top.glob(pattern):
                path.unlink(missing_ok=True)

    @property
    def status_file(self) -> Path:
        """The node status (this source's part) that `sync` writes (resolver_plugin.operations.node_status)."""
        return self.root / "status.json"

    @property
    def metrics_dir(self) -> Path:
        """One counter file per enforcing process (resolver_plugin.operations.metrics)."""
        return self.top / "metrics"

    @property
    def breaker_dir(self) -> Path:
        """The circuit breaker's records: one folder for the node, by the node's list names."""
        return self.top / "breaker"

    def state_file(self, name: str) -> Path:
        return self.list_dir(name) / "state.json"

    def write_selftest(self, doc: dict[str, Any]) -> None:
        """Keep the last `selftest` result (a JSON object) for `status` and the admin endpoint."""
        self.root.mkdir(parents=True, exist_ok=True)
        atomic.write_bytes(self.root / "selftest.json", json.dumps(doc, sort_keys=True).encode())

    def selftest(self) -> dict[str, Any] | None:
        """The last `selftest` result; None when there is none or it is unreadable (logged)."""
        try:
            doc = json.loads((self.root / "selftest.json").read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.error("cache: selftest.json unusable (%s)", exc, extra={"event": "selftest_unreadable"})
            return None
        return doc if isinstance(doc, dict) else None

    def list_dir(self, name: str) -> Path:
        return self.root / "lists" / check_list_name(name)

    # -- keys

    def trusted_keys(self, pinned: Keyring) -> dict[str, Ed25519PublicKey]:
        """The keys that verify the cached files: keys.json as sync saved it, else the pinned ones."""
        path = self.root / "keys.json"
        if not path.exists():
            return dict(pinned)
        try:
            raw = json.loads(path.read_text())
            keys = {}
            for encoded in raw["keys"]:
                key = Ed25519PublicKey.from_public_bytes(base64.b64decode(encoded, validate=True))
                keys[key_id(key)] = key
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("cache: keys.json unreadable (%s); using the pinned key", exc,
                      extra={"event": "cache_refused", "file": "keys.json", "kind": "cache", "reason": str(exc)})
            return dict(pinned)
        return keys or dict(pinned)

    def save_keys(self, keys: Keyring) -> None:
        raws = [base64.b64encode(k.public_bytes(serialization.Encoding.Raw,
                                                serialization.PublicFormat.Raw)).decode()
                for k in keys.values()]
        self.root.mkdir(parents=True, exist_ok=True)
        atomic.write_bytes(self.root / "keys.json", json.dumps({"keys": raws}).encode())

    def write_root(self, data: bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        atomic.write_bytes(self.root / "root.json", data)

    def root_bytes(self) -> bytes | None:
        try:
            return (self.root / "root.json").read_bytes()
        except FileNotFoundError:
            return None

    def list_signers(self, name: str) -> frozenset[str]:
        """The key ids that signed list `name`'s cached files (read from their headers, not verified)."""
        state = self.state(name)
        if state is None:
            return frozenset()
        signers = set()
        folder = self.list_dir(name)
        for file_name in (state.snapshot, *state.deltas):
            try:
                signers.add(_file_signer(folder / file_name))
            except OSError as exc:
                raise FormatError(f"cache: {name}: {exc.strerror}: {file_name}") from None
        return frozenset(signers)

    # -- state

    def state(self, name: str) -> ListState | None:
        return self._read_state(self.state_file(name))

    def previous(self, name: str) -> ListState | None:
        """The version enforced before state.json's, kept for the circuit breaker; raises if damaged."""
        previous = self._read_state(self.list_dir(name) / "previous.json")
        return previous if previous is not None and previous.version > 0 else None

    def _read_state(self, path: Path) -> ListState | None:
        if not path.exists():
            return None
        try:
            raw = json.loads(path.read_text())
            return ListState(version=int(raw["version"]), checksum=str(raw["checksum"]),
                             snapshot=_safe_name(raw["snapshot"]),
                             deltas=tuple(_safe_name(d) for d in raw["deltas"]),
                             compiled=_safe_name(raw["compiled"]) if raw.get("compiled") is not None else None)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise FormatError(f"cache: {path}: unreadable state ({exc})") from None

    def write_list(self, name: str, state: ListState, files: dict[str, bytes],
                   compiled: ListFilter | None = None) -> ListState:
        """Store verified `files` and make `state` current, crash-safely; returns the state written.

        With `compiled` (the filter `state` describes) its compiled list file is written
        too, under a new name, and state.json names it.
        """
        folder = self.list_dir(name)
        folder.mkdir(parents=True, exist_ok=True)
        files = {_safe_name(file_name): data for file_name, data in files.items()}
        if compiled is not None and compiled.entry_bloom is not None and compiled.host_bloom is not None:
            state = replace(state, compiled=f"compiled-{state.version}-{state.checksum[:16]}")
            signers = self._signers(name, state, files)
            files[state.compiled] = write_compiled(replace(compiled.compiled(), signers=signers))  # type: ignore[index]
        previous, changed = self._previous_of(name, state)
        if changed is not None:
            files["previous.json"] = json.dumps(changed.as_json()).encode()
        # one directory fsync for them all; the compiled file is not fsynced (readers check it,
        # and sync writes it again at start when a power cut left it short)
        atomic.write_many(folder, files, volatile=frozenset({state.compiled} if state.compiled else ()))
        atomic.write_bytes(self.state_file(name), json.dumps(state.as_json()).encode())
        self.bump_generation()
        keep = {state.snapshot, *state.deltas, state.compiled, "state.json"}
        if previous is not None:
            keep |= {previous.snapshot, *previous.deltas, previous.compiled, "previous.json"}
        for path in folder.iterdir():
            if path.name not in keep:
                path.unlink(missing_ok=True)
        breaker.clear_stale(self.breaker_dir, self.label(name), state.version)
        return state

    def _previous_of(self, name: str, state: ListState) -> tuple[ListState | None, ListState | None]:
        """The previous state to keep once `state` is current (the current state when older, else
        previous.json's when older than `state`), and the same again if previous.json must change."""
        try:
            current, previous = self.state(name), self.previous(name)
        except FormatError:
            return None, None  # damaged: nothing to fall back to but what is being written
        if current is not None and current.version < state.version:
            return current, (current if current != previous else None)
        return (previous if previous is not None and previous.version < state.version else None), None

    def _signers(self, name: str, state: ListState, files: dict[str, bytes]) -> tuple[str, ...]:
        """The key ids that signed `state`'s snapshot and deltas (being written, or on disk); () if unknown."""
        signers, folder = [], self.list_dir(name)
        for file_name in (state.snapshot, *state.deltas):
            try:
                data = files.get(file_name)
                signers.append(_file_signer(folder / file_name) if data is None
                               else signer_of(data[:PREFIX.size + MAX_HEADER]))
            except (OSError, FormatError):
                return ()  # readers then read the signed files
        return tuple(signers)

    def ensure_compiled(self, name: str, current: ListFilter, keys: Keyring) -> bool:
        """Write the compiled file of the cached list `current` (sync verified it) if it is
        missing or fails the readers' check; True if it was written."""
        state = self.state(name)
        if state is None or state.version != current.version or state.checksum != current.checksum:
            return False
        if state.compiled is not None:
            try:
                self._mapped(name, state, keys)
                return False
            except FormatError as exc:
                log.error("cache: list %s: compiled file refused, writing it again: %s", name, exc,
                          extra={"event": "compiled_refused", "list": name, "file": state.compiled,
                                 "reason": str(exc)})
        return self.write_list(name, state, {}, current).compiled is not None

    def write_manifest(self, data: bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        atomic.write_bytes(self.root / "manifest.json", data)

    def write_meta(self, metas: dict[str, ListMeta]) -> bool:
        """Keep the lists' metadata of the verified manifest; True if it changed (then written)."""
        data = json.dumps({"lists": {n: m.as_json() for n, m in sorted(metas.items()) if m}},
                          sort_keys=True).encode()
        path = self.root / "meta.json"
        try:
            if path.read_bytes() == data:
                return False
        except OSError:
            pass
        self.root.mkdir(parents=True, exist_ok=True)
        atomic.write_bytes(path, data)
        return True

    def list_meta(self) -> dict[str, ListMeta]:
        """The metadata `sync` kept, checked again; {} (and logged) when missing or unusable."""
        try:
            raw = json.loads((self.root / "meta.json").read_bytes())["lists"]
            return {check_list_name(n): meta_from_json(m, f"cache: meta.json: {n}") for n, m in raw.items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError, BlocklistError) as exc:
            log.error("cache: meta.json unusable (%s); block pages name lists only", exc)
            return {}

    def meta_generation(self) -> int:
        try:
            return (self.root / "meta.json").stat().st_mtime_ns
        except OSError:
            return 0

    def forget_manifest(self) -> None:
        """Drop the cached manifest: a retired online key signed it (fast-forward recovery)."""
        (self.root / "manifest.json").unlink(missing_ok=True)

    def manifest_bytes(self) -> bytes | None:
        try:
            return (self.root / "manifest.json").read_bytes()
        except FileNotFoundError:
            return None

    def bump_generation(self) -> None:
        """Tell every enforcing process to reload (one file for the node: any source's change)."""
        self.top.mkdir(parents=True, exist_ok=True)
        # not fsynced: a signal to running processes, which all load state.json after a reboot
        atomic.write_bytes(self.top / "generation", str(time.time_ns()).encode(), durable=False)

    def generation(self) -> int:
        try:
            return (self.top / "generation").stat().st_mtime_ns
        except OSError:
            return 0

    def load_list(self, name: str, keys: Keyring, max_bytes: int, state: ListState | None = None,
                  mapped: bool = False) -> ListFilter | None:
        """The verified ListFilter of a cached list (`state`, by default state.json's), None if not
        cached; raises if damaged.

        `mapped` (enforcing processes): the compiled file, mapped and checked (not its
        signatures: sync verified them before it wrote it), when the state names one and
        it passes; else, with a log line, the signed files, verified as sync loads them.
        """
        pinned = state is not None
        state = state or self.state(name)
        if state is None:
            return None
        for _ in range(3):
            if not mapped or state.compiled is None:
                break
            try:
                return self._mapped(name, state, keys)
            except FileNotFoundError as exc:
                fresh = None if pinned else self.state(name)
                if fresh is None or fresh == state:
                    self._refused(name, state, exc)
                    break
                state = fresh  # sync replaced state.json and deleted the file between our two reads
            except (FormatError, OSError) as exc:
                self._refused(name, state, exc)
                break
        return self._parsed(name, state, keys, max_bytes)

    def _refused(self, name: str, state: ListState, exc: Exception) -> None:
        reason = f"{exc.strerror}" if isinstance(exc, OSError) else str(exc)
        log.error("cache: list %s: compiled file %s refused (%s); reading the signed files instead",
                  name, state.compiled, reason,
                  extra={"event": "compiled_refused", "list": name, "file": state.compiled, "reason": reason})

    def _mapped(self, name: str, state: ListState, keys: Keyring) -> ListFilter:
        """The list from its compiled file, mapped read-only; raises FormatError (or OSError).

        The file must name signers, all among `keys` (this source's): a list of another
        source, or one its keys no longer vouch for, is read from the signed files instead.
        """
        path = self.list_dir(name) / _safe_name(state.compiled)
        with open(path, "rb") as f:
            try:
                mapping = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
                                    prot=mmap.PROT_READ)
            except ValueError:  # an empty file
                raise FormatError(f"cache: {name}: {state.compiled}: empty") from None
        what = f"cache: {name}: {state.compiled}"
        try:
            compiled = read_compiled(mapping, name, state.version, state.checksum, what)
            if not compiled.signers or not set(compiled.signers) <= set(keys):
                raise FormatError(f"{what}: signed by {','.join(compiled.signers) or 'no key'}, "
                                  "not by this source's keys")
        except FormatError:
            try:
                mapping.close()
            except BufferError:  # a view is still referenced (by the traceback): unmapped when it goes
                pass
            raise
        return ListFilter.from_compiled(compiled)

    def _parsed(self, name: str, state: ListState, keys: Keyring, max_bytes: int) -> ListFilter:
        folder = self.list_dir(name)
        try:
            snap = read_snapshot((folder / state.snapshot).read_bytes(), keys, max_bytes)
            current = ListFilter.from_snapshot(snap)
            for delta_name in state.deltas:
                current = current.apply(read_delta((folder / delta_name).read_bytes(), keys, max_bytes))
        except OSError as exc:
            raise FormatError(f"cache: {name}: {exc.strerror}: {exc.filename}") from None
        if current.name != name or current.version != state.version or current.checksum != state.checksum:
            raise ChecksumError(f"cache: {name}: loaded version {current.version} does not match state.json")
        return current

    def load_enforced(self, name: str, keys: Keyring, max_bytes: int, mapped: bool = False) -> ListFilter | None:
        """load_list, or the previous version while the circuit breaker holds the cached one;
        never nothing: a previous version that fails to load leaves the cached one in force."""
        state = self.state(name)
        trip = breaker.read_trip(self.breaker_dir, self.label(name)) if state is not None else None
        if state is not None and trip is not None and trip.holds(state.version):
            try:
                previous = self.previous(name)
                if previous is not None and previous.version == trip.fallback:
                    return self.load_list(name, keys, max_bytes, previous, mapped)
                raise FormatError(f"cache: {name}: previous.json does not name version {trip.fallback}")
            except BlocklistError as exc:
                log.error("breaker: list %s: cannot load v%d to fall back to (%s); v%d stays in force",
                          name, trip.fallback, exc, state.version,
                          extra={"event": "breaker_fallback_failed", "list": name, "version": trip.fallback,
                                 "kind": exc.kind, "reason": str(exc)})
        return self.load_list(name, keys, max_bytes, state, mapped)

    def load_matcher(self, config: PluginConfig, previous: Matcher | None = None) -> tuple[Matcher, list[str]]:
        """A Matcher of every cached list (in config order) and the names that failed or are missing.

        Each source's lists are verified with that source's keys only and named as the node
        names them (SourceConfig.qualified). A list that fails to load keeps its filter from
        `previous` when there is one.
        """
        old = {f.name: f for f in previous.filters} if previous else {}
        filters, missing = [], []
        for source in config.sources:
            view = self.source(source.name)
            keys = view.trusted_keys(source.public_keys)
            load = view.load_enforced if config.safety.enabled else view.load_list
            for name in source.lists:
                label = source.qualified(name)
                try:
                    loaded = load(name, keys, config.limits.max_snapshot_bytes, mapped=True)
                except BlocklistError as exc:
                    log.error("cache: list %s refused, keeping the last good version: %s", label, exc,
                              extra={"event": "cache_refused", "list": label, "source_name": source.name or None,
                                     "kind": exc.kind, "reason": str(exc)})
                    loaded = old.get(label)
                if loaded is None:
                    missing.append(label)
                else:
                    loaded.name = label  # the node's name of it: "police/terror" beside "hotline/terror"
                    filters.append(loaded)
        return Matcher(filters), missing

    def list_states(self, config: PluginConfig) -> dict[str, ListState | BlocklistError | None]:
        """Every configured list's cached state by its node name: None if not cached, the error if unreadable."""
        out: dict[str, ListState | BlocklistError | None] = {}
        for source in config.sources:
            view = self.source(source.name)
            for name in source.lists:
                try:
                    out[source.qualified(name)] = view.state(name)
                except BlocklistError as exc:
                    out[source.qualified(name)] = exc
        return out

    def all_meta(self, config: PluginConfig) -> dict[str, ListMeta]:
        """Every source's list metadata, by the node's names of its lists."""
        return {source.qualified(name): meta for source in config.sources
                for name, meta in self.source(source.name).list_meta().items()}

    def all_meta_generation(self, config: PluginConfig) -> int:
        return hash(tuple(self.source(source.name).meta_generation() for source in config.sources))


class LiveMatcher:
    """The matcher an enforcement process uses, reloaded from the cache when `sync` changes it.

    `current()` costs a dict lookup, plus one stat() at most every `check_interval`
    seconds. Long-running shells pass `check_interval=math.inf` (never on the
    request path) and call `maybe_reload()` from a reload loop or thread of their
    own, which they stop when they stop. A reload builds a complete new Matcher
    and swaps one reference, so a request is answered by the old version or the
    new one, never a mix.
    """

    def __init__(self, config: PluginConfig, check_interval: float = 1.0, component: str = "check") -> None:
        self.config = config
        self.component = component  # the stage, in the local policy's and monitored lists' counts and logs
        # (component, "allow"|"block") and (component, list): taken by operations.metrics
        self.local_counts: Counter[tuple[str, str]] = Counter()
        self.monitor_counts: Counter[tuple[str, str]] = Counter()
        self._policy: Policy | None = None  # None: no local policy and no monitored list
        self.cache = Cache(config.cache_dir)
        self.check_interval = check_interval
        self._lock = threading.Lock()
        self._generation = -1
        self._breaker_generation = -1
        self.watch: breaker.Watch | None = None  # set by reload when this stage judges new versions
        self._watching: breaker.Watch | None = None  # the same, while it has a version under judgment
        self._meta_generation = -1
        self.meta: dict[str, ListMeta] = {}  # who blocks with each list, from the verified manifest
        self._messages: dict[str, tuple[ListMeta, str]] = {}  # block_message's, by list
        self._next_check = 0.0
        self.matcher = Matcher()
        self.missing: list[str] = list(config.lists)
        self.loaded_at = 0.0
        self.reload_meta()
        self.reload()

    def reload(self) -> bool:
        """Load the cache now; returns True if the enforced versions changed."""
        matcher, missing, before = self._load(self.config)
        changed = matcher.versions() != before
        self._log_loaded(matcher, missing, changed)
        return changed

    def reconfigure(self, config: PluginConfig) -> None:
        """Enforce what `config` names (lists, keys, fail_closed) from the cache, now.

        A reload of plugin.yaml never lowers enforcement by accident: a list both
        configurations name that fails to load (e.g. a key the cache was not
        signed with) keeps the version this process enforces. Same cache_dir only.
        """
        matcher, missing, _ = self._load(config)
        self.reload_meta()  # another set of sources names its lists otherwise
        self._log_loaded(matcher, missing, True)

    def _load(self, config: PluginConfig) -> tuple[Matcher, list[str], dict[str, int]]:
        """Build the matcher `config` names from the cache and swap it in (one reference); the new
        matcher, the lists missing, and the versions enforced before."""
        with self._lock:
            before = self.matcher.versions()
            generation, breaker_generation = self.cache.generation(), breaker.generation(self.cache.breaker_dir)
            matcher, missing = self.cache.load_matcher(config, self.matcher)
            # the policy before the matcher: see clear_suffix
            self._policy = _policy(config, matcher)
            self.config, self.matcher, self.missing, self._generation = config, matcher, missing, generation
            self._breaker_generation = breaker_generation
            self.loaded_at = time.time()
            self._arm(matcher)
        return matcher, missing, before

    def _log_loaded(self, matcher: Matcher, missing: list[str], changed: bool) -> None:
        if changed:
            log.info("enforcing %s", ", ".join(f"{n} v{v}" for n, v in matcher.versions().items()) or "nothing",
                     extra={"event": "lists_enforced", "versions": matcher.versions()})
        if missing:
            log.warning("no cached version of %s yet%s", ", ".join(missing),
                        " (fail-closed: blocking everything)" if self.fail_closed_active else "",
                        extra={"event": "lists_missing", "missing": missing})

    def maybe_reload(self) -> bool:
        if self.cache.all_meta_generation(self.config) != self._meta_generation:
            self.reload_meta()
        if (self.cache.generation() != self._generation
                or breaker.generation(self.cache.breaker_dir) != self._breaker_generation):
            return self.reload()
        return False

    def _arm(self, matcher: Matcher) -> None:
        """Judge the versions of `matcher` that the circuit breaker should (resolver_plugin.breaker):
        enforced lists at the cached version, with an older one to fall back to and no record yet."""
        safety = self.config.safety
        if not safety.enabled or self.component not in breaker.COUNTED_COMPONENTS:
            self.watch = self._watching = None
            return
        if self.watch is None or self.watch.safety != safety:
            self.watch = breaker.Watch(safety, self.cache.breaker_dir, self.component, self.config.node_id)
        self.watch.arm_for({f.name: f.version for f in matcher.filters if f.name not in self.config.monitored},
                           self.cache.state_of, self.cache.previous_of)
        self._watching = self.watch if self.watch.armed else None

    def _observe(self, watch: breaker.Watch, blocked_by: str | None, version: int | None) -> None:
        """Count a request for the circuit breaker; after a trip, reload at the next check."""
        if watch.observe(blocked_by, version):
            if self.check_interval != math.inf:
                self._next_check = 0.0  # the Squid helper: its next request loads the previous version
        if not watch.armed:
            self._watching = None

    def reload_meta(self) -> None:
        """Load the lists' metadata now (its own file: a new title does not reload the lists)."""
        generation = self.cache.all_meta_generation(self.config)
        self.meta, self._meta_generation = self.cache.all_meta(self.config), generation

    def list_meta(self, name: str) -> ListMeta:
        return self.meta.get(name, _NO_META)

    def block_message(self, name: str) -> str:
        """What a Squid deny page shows (%o) for a block by list `name`: plain text, one line."""
        meta = self.meta.get(name, _NO_META)
        cached = self._messages.get(name)
        if cached is not None and cached[0] is meta:  # made from the metadata in force now
            return cached[1]
        text = f"blocked by list {name}" + "".join([
            f": {meta.title}" if meta.title else "",
            f"; legal basis: {meta.legal_basis}" if meta.legal_basis else "",
            f"; appeal: {meta.appeal_url}" if meta.appeal_url else ""])
        if len(self._messages) > 256:
            self._messages.clear()
        self._messages[name] = (meta, text)
        return text

    def current(self) -> Matcher:
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + self.check_interval
            try:
                self.maybe_reload()
            except Exception:  # noqa: BLE001 - never let a reload break a request
                log.exception("cache: reload failed; keeping the current lists",
                              extra={"event": "cache_reload_failed"})
        return self.matcher

    @property
    def fail_closed_active(self) -> bool:
        return self.config.fail_closed and not self.matcher

    @property
    def policy(self) -> Policy | None:
        return self._policy

    def remembered(self) -> Mapping[str, Verdict] | None:
        """The current matcher's remembered verdicts per plain authority (Matcher.remembered), for a
        caller that answers such a URL without check(); None when check() does more than the
        matcher's lookup: a local policy or monitored list, the circuit breaker watching a
        version, or no list loaded."""
        matcher = self.current()
        if self._policy is not None or self._watching is not None or not matcher:
            return None
        return matcher.remembered

    def check(self, url: str) -> Verdict:
        """Matcher.check, or a block when fail_closed and nothing is loaded; raises InvalidURL.

        With a local policy or a monitored list, blocklist.core.policy decides and its notes
        are counted and logged here, for every stage.
        """
        if time.monotonic() >= self._next_check:  # current(), without a call on the request path
            self.current()
        matcher = self.matcher
        if not matcher and self.config.fail_closed:
            return FAIL_CLOSED_VERDICT
        policy = self._policy
        if policy is None:
            verdict = matcher.check(url)
        else:
            notes: list[Note] = []
            verdict = policy.check(url, notes)
            if notes and not is_canary_url(url):  # the selftest's probe is no would-be block
                self._noted(notes, url)
        if verdict.blocked and is_canary_url(url):
            # the selftest's canary (blocklist.core.canary): counted apart from real blocks, and
            # never by the circuit breaker
            return CanaryVerdict(True, verdict.list, verdict.version, verdict.scope, verdict.reach)
        watch = self._watching
        if watch is not None:
            self._observe(watch, verdict.list if verdict.blocked else None, verdict.version)
        return verdict

    def check_any_scheme(self, url: str) -> Verdict:
        """check() for a URL of any scheme, read as blocklist.core.urls.web_form says: ws and wss
        as http and https, another scheme (ftp, ...) blocked only where its host is listed whole."""
        target, host_only = web_form(url)
        if not host_only:
            return self.check(target)
        verdict = self.check_host(canonicalize(target).host)
        if verdict.fail_closed:
            return FAIL_CLOSED_VERDICT
        if verdict.action is HostAction.BLOCK:
            return Verdict(True, verdict.list, verdict.version, Scope.DOMAIN)
        return ALLOWED

    def check_host(self, host: str) -> HostVerdict:
        matcher = self.current()
        if not matcher and self.config.fail_closed:
            return FAIL_CLOSED_HOST_VERDICT
        policy = self._policy
        if policy is None:
            verdict = matcher.check_host(host) if matcher else HOST_PASS
        else:
            notes: list[Note] = []
            verdict = policy.check_host(host, notes)
            if notes and not is_canary_host(host.lower().rstrip(".")):
                self._noted(notes, None)
        if verdict.list is not None and is_canary_host(host.lower().rstrip(".")):
            return CanaryHostVerdict(verdict.action, verdict.list, verdict.version)
        watch = self._watching
        if watch is not None:
            self._observe(watch, verdict.list if verdict.action is HostAction.BLOCK else None, verdict.version)
        return verdict

    def clear_suffix(self, matcher: Matcher, host: str) -> str | None:
        """`matcher.clear_suffix(host)`, narrowed by the local policy and the monitored lists.

        `matcher` is the `self.matcher` the caller read. A reload sets the policy before
        the matcher, so a policy that does not belong to it means "mid-swap": None.
        """
        policy = self._policy
        if policy is None:
            return matcher.clear_suffix(host)
        return policy.clear_suffix(host) if policy.owner is matcher else None

    def _noted(self, notes: list[Note], url: str | None) -> None:
        """Count and log what the policy noted; the URL only where the stage logs blocked URLs."""
        show = url is not None and (self.config.proxy.log_blocked_urls if self.component == "proxy"
                                    else self.config.squid.log_blocked_urls if self.component == "squid"
                                    else False)
        for note in notes:
            where = f" url={url}" if show else ""
            if note.kind == "monitor":
                self.monitor_counts[(self.component, note.list or "")] += 1
                would = "have blocked" if note.action is HostAction.BLOCK else "have sent to the proxy"
                log.info("monitor: list=%s would %s scope=%s stage=%s%s", note.list, would,
                         note.scope or "-", self.component, where)
            else:
                self.local_counts[(self.component, note.kind)] += 1
                log.info("local %s: scope=%s stage=%s%s", note.kind, note.scope or "-", self.component, where)


def _policy(config: PluginConfig, matcher: Matcher) -> Policy | None:
    """The policy over `matcher`'s lists, or None when the node has no local entry and no monitored list."""
    if not config.local and not config.monitored:
        return None
    enforced = Matcher([f for f in matcher.filters if f.name not in config.monitored])
    monitored = [f for f in matcher.filters if f.name in config.monitored]
    return Policy(enforced, monitored, config.local.allow, config.local.block, owner=matcher)
