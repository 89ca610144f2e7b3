"""`blocklist-plugin sync`: fetch what the trusted state needs, cache what it accepts, report how it went.

A shell around resolver_plugin.distribution.trust.TrustedState, which judges every byte.
One sync (`Syncer.sync_once`):
  1. GET <source>/manifest.json naming this node (X-Blocklist-Node), the versions
     it enforces (X-Blocklist-Have; the previous one of a list whose circuit breaker is
     open, resolver_plugin.breaker), with node_token_file a proof of the node's
     token for this poll (X-Blocklist-Proof), If-None-Match and, once the source
     has shown it long-polls (its answers carry X-Blocklist-Wait), X-Blocklist-Wait: long_poll,
     and X-Blocklist-Bundle: BUNDLE_BYTES. `blocklist serve` may then answer a new manifest
     with the delta files the node needs next in the same body (blocklist.core.protocol);
     those bytes stand in for the GETs of step 3, checked as if fetched. Any other source
     answers the manifest alone.
  2. A new manifest names its root version: the roots up to it are fetched
     (root/<N>.json), judged (update_root) and cached one by one, with
     keys.json; then the manifest is judged (update_manifest) and cached
     (manifest.json: the rollback floor on restart).
  3. Each configured list behind the trusted manifest: the delta chain when it
     is listed and smaller than a snapshot, each delta verified and applied;
     on any failure of the chain, the snapshot. A list whose cached files a
     retired online key signed takes the snapshot. The result is judged
     (check_list), written with Cache.write_list with its compiled file (the
     layout enforcing processes map), which bumps `generation` so
     enforcement processes (LiveMatcher) reload, and only then trusted as the
     enforced version (accept_list): a failed write is retried next time. At
     start, a cached list without a compiled file (a cache of an earlier release)
     or with a damaged one gets it written (Cache.ensure_compiled).
  4. status.json (resolver_plugin.operations.node_status) records versions, lag and errors.

Several sources (plugin.yaml `sources:`): one Syncer per source, each with its own
TrustedState (its own pinned root: no other source's key verifies anything of it),
its own cache folder (Cache.source), status file, HTTP session (its tls_ca_file),
fleet reporter (its node_token_file: each source's serve hears only of its own
lists, by the names it publishes them under) and its own loop in the daemon: its
own back-off, long-poll and freshness, so a source that is down, tampered with,
stale or signed by the wrong key never holds up the others. Logs name a list as
the node does ("police/terror") and carry the source.

Every GET goes through a `Fetcher` with a cap (the size the manifest
announces, or limits.max_manifest_bytes). Over HTTP, HttpFetcher
(resolver_plugin.distribution.fetch) streams each body, aborts it past the
cap and bounds each request with connect and read timeouts; tests drive the
same Syncer through an in-memory source. Any failure keeps the last good
state, logs one line naming list, version, file, kind and reason (never an
entry: artifacts hold none), and the daemon retries with capped exponential
back-off and jitter. On SIGHUP the daemon re-reads plugin.yaml
(resolver_plugin.operations.reload) and goes on with a new Syncer over the same cache.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

from blocklist.core.errors import BlocklistError, ErrorKind, SizeError
from blocklist.core.format.keys import Keyring
from blocklist.core.format.manifest import DeltaRef, FileRef, root_version_hint
from blocklist.core.format.root import MAX_ROOT
from blocklist.core.matcher import ListFilter
from blocklist.core.protocol import BUNDLE, HAVE, REPORT, clean_node_id, format_have, parse_bundle
from resolver_plugin import breaker
from resolver_plugin.cache import Cache, ListState
from resolver_plugin.config import PluginConfig, SourceConfig
from resolver_plugin.distribution.credentials import Reporter
from resolver_plugin.distribution.fetch import Backoff, Fetcher, HttpFetcher, SyncError, http_session
from resolver_plugin.distribution.trust import TrustedState, UpdatePlan, error_kind
from resolver_plugin.operations.admin import start_admin
from resolver_plugin.operations.node_status import ListStatus, NodeStatus, read_status, write_status
from resolver_plugin.operations.reload import reread, sighup_event

log = logging.getLogger("blocklist.plugin.sync")

MANIFEST = "manifest.json"
MIN_CYCLE = 0.1  # seconds between long-poll cycles, so a misbehaving source cannot spin us
BUNDLE_BYTES = 1 << 20  # the files a manifest answer may carry with it (X-Blocklist-Bundle), in all
# What a reload cannot change: this process holds the cache directory's writer lock, and every
# enforcement process of the node reads that directory.
RESTART_ONLY = ("cache_dir",)  # each source's HTTP session (its tls_ca_file) is made again on a reload


def failure_kind(exc: BaseException) -> ErrorKind:
    """The kind of any failure of a sync: its own, DISK for an OSError."""
    return ErrorKind.DISK if isinstance(exc, OSError) else error_kind(exc)


class Syncer:
    """One source's sync on this node: the trusted state, the filters it enforces, its cache and status.

    `source` is one of config.sources (default: the first, the one-source form's only one).
    """

    def __init__(self, config: PluginConfig, fetcher: Fetcher, source: SourceConfig | None = None) -> None:
        self.config = config
        self.source = source or config.sources[0]
        self.lists = self.source.lists  # as this source publishes them
        self.fetcher = fetcher
        self.cache = Cache(config.cache_dir).source(self.source.name)
        self.trust = TrustedState(self.source.anchor, config.limits, config.clock_skew)
        self.filters: dict[str, ListFilter] = {}
        self.etag: str | None = None
        self.long_poll_ok = False  # the source sends X-Blocklist-Wait: it long-polls
        self._file = ""  # the file being fetched, for log lines
        self._bundled: dict[str, bytes] = {}  # path -> bytes the last manifest answer carried, unchecked
        self.ask_bundle = True  # until the source sends a bundle that does not parse
        self._manifest_saved = True  # the trusted manifest is in the cache
        self._saved_keys = set(self.cache.trusted_keys(self.source.public_keys))
        self.node_id = clean_node_id(config.node_id)  # a header value: printable, bounded
        if self.node_id is None:
            log.warning("node_id %r is not a printable name of at most 128 characters; polls stay "
                        "anonymous", config.node_id[:40], extra={"event": "node_id_unusable"})
        self.reporter = Reporter(config, self.node_id, self.source)
        self.status = self._load_status()
        self._load_cache()

    # -- start-up: what the cache already holds

    def _load_status(self) -> NodeStatus:
        try:
            status = read_status(self.cache.status_file) or NodeStatus()
        except (OSError, ValueError, TypeError, KeyError):
            status = NodeStatus()
        status.node_id, status.source = self.config.node_id, self.source.url
        status.lists = {name: status.lists.get(name, ListStatus()) for name in self.lists}
        return status

    def _load_cache(self) -> None:
        for file, read, load in (("root.json", self.cache.root_bytes, self.trust.load_trusted_root),
                                 (MANIFEST, self.cache.manifest_bytes, self.trust.load_trusted_manifest)):
            try:
                data = read()
                if data is not None:
                    load(data)
            except (BlocklistError, OSError) as exc:
                log.error("cache refused%s file=%s kind=%s reason=%r", self.log_tag(), file, failure_kind(exc),
                          str(exc), extra={"event": "cache_refused", "file": file, "kind": failure_kind(exc),
                                           "reason": str(exc), "source_name": self.source.name or None})
        keys = {**self.cache.trusted_keys(self.source.public_keys), **self.trust.seen_keys}
        self.trust.seen_keys.update(keys)
        for name in self.lists:
            try:
                loaded = self.cache.load_list(name, keys, self.config.limits.max_snapshot_bytes)
                vouched = self.cache.list_signers(name) <= set(self.trust.online_keys)
            except BlocklistError as exc:
                label = self.source.qualified(name)
                log.error("cache refused list=%s kind=%s reason=%r; fetching it again",
                          label, error_kind(exc), str(exc),
                          extra={"event": "cache_refused", "list": label, "source_name": self.source.name or None,
                                 "kind": error_kind(exc), "reason": str(exc)})
                continue
            if loaded is not None:
                self._compile(name, loaded, keys)
                self.filters[name] = loaded
                self.trust.set_enforced(name, loaded.version, loaded.checksum, vouched=vouched)
                st = self.status.lists[name]
                st.version, st.checksum = loaded.version, loaded.checksum
        if self.trust.manifest is not None:
            self._record_manifest(self.status.manifest.fetched_at)
            self._save_meta()

    def _compile(self, name: str, loaded: ListFilter, keys: Keyring) -> None:
        """The compiled file enforcing processes map, for a cache written before it or damaged since."""
        try:
            if self.cache.ensure_compiled(name, loaded, keys):
                log.info("compiled list=%s version=%d", name, loaded.version,
                         extra={"event": "list_compiled", "list": name, "version": loaded.version})
        except (BlocklistError, OSError) as exc:
            # Readers go on reading the signed files; the next update writes it again.
            log.error("cache: list %s: compiled file not written: %s", name, exc,
                      extra={"event": "compile_failed", "list": name, "kind": failure_kind(exc), "reason": str(exc)})

    def _save_meta(self) -> None:
        """The configured lists' metadata of the trusted manifest into the cache (block pages read it)."""
        manifest = self.trust.manifest
        try:
            if manifest is not None and self.cache.write_meta(
                    {n: manifest.lists[n].meta for n in self.lists if n in manifest.lists}):
                log.info("list metadata updated%s manifest=%d", self.log_tag(), manifest.version)
        except OSError as exc:
            log.error("cache: cannot write meta.json: %s", exc.strerror)

    # -- one sync

    async def sync_once(self, wait: float = 0.0) -> bool:
        """Bring every list to the newest version; True if all are there."""
        now = time.time()
        polled = await self._poll(wait, now)
        if polled and self.trust.manifest is not None:
            for name in self.lists:
                self.status.lists[name].last_attempt = now
                self._file = ""
                try:
                    await self._sync_list(name)
                except (BlocklistError, OSError) as exc:
                    self._record_error(name, exc)
        self._bundled = {}  # what this sync did not use
        in_sync = polled and all(self.trust.in_sync(n) for n in self.lists)
        for name in self.lists:
            if self.trust.in_sync(name) and polled:
                self.status.lists[name].record_success(time.time())
        self.write_status()
        return in_sync

    async def _poll(self, wait: float, now: float) -> bool:
        """Fetch and judge the manifest; False (and the error recorded) if it failed."""
        versions = dict.fromkeys(self.source.lists, 0)  # 0: configured, no version yet (the fleet shows it behind)
        versions.update({n: self._enforced_version(n, f.version) for n, f in self.filters.items()})
        have = format_have(versions)
        headers = {"Accept-Encoding": "identity", HAVE: have, **self.reporter.headers(have)}
        if self.ask_bundle:
            headers[BUNDLE] = str(BUNDLE_BYTES)
        wait = wait if (self.etag and self.long_poll_ok) else 0.0
        if self.etag:
            headers["If-None-Match"] = self.etag
        if wait > 0:
            headers["X-Blocklist-Wait"] = f"{wait:g}"
        self._bundled = {}
        try:
            limit = self.config.limits.max_manifest_bytes
            resp = await self.fetcher.get(MANIFEST, limit + BUNDLE_BYTES, headers, wait)
            self.long_poll_ok = "X-Blocklist-Wait" in resp.headers
            self.reporter.note(resp.headers.get(REPORT))
            if resp.status == 304:
                self.trust.check_fresh(time.time())
                return True
            body = self._unbundle(resp.headers.get(BUNDLE), resp.body, limit)
            await self._walk_roots(root_version_hint(body, limit))
            before = self.trust.manifest
            manifest = self.trust.update_manifest(body, time.time())
            if manifest is not before:
                self._manifest_saved = False
                self._record_manifest(now)
            if not self._manifest_saved:
                self.cache.write_manifest(self.trust.manifest_bytes or body)
                self._save_meta()
                self._manifest_saved = True
            self.etag = resp.etag
            return True
        except (BlocklistError, OSError) as exc:
            self._record_error(None, exc, MANIFEST)
            return False

    def _unbundle(self, header: str | None, body: bytes, limit: int) -> bytes:
        """The manifest of a manifest answer; the files a bundle carried with it go to `_bundled`.

        Without X-Blocklist-Bundle (any mirror, an older serve) the body is the manifest.
        A bundled file is used only where this node would fetch that very path, and is
        checked as a fetched one is (size, SHA-256, signature): a bundle saves requests,
        it vouches for nothing.
        """
        if header is None:
            if len(body) > limit:
                raise SizeError(f"{MANIFEST}: {len(body)} bytes, more than the {limit} expected")
            return body
        try:
            parts = parse_bundle(header, body)
        except ValueError as exc:
            self.ask_bundle = False  # a broken source: fetch the files one by one from now on
            raise SyncError(ErrorKind.HTTP, f"{MANIFEST}: a bundle answer that does not parse: {exc}; "
                                            "no more bundles asked of this source") from None
        manifest = parts[0][1]
        if len(manifest) > limit:
            raise SizeError(f"{MANIFEST}: {len(manifest)} bytes, more than the {limit} expected")
        self._bundled = dict(parts[1:])
        return manifest

    def _enforced_version(self, name: str, version: int) -> int:
        """What the node's enforcement processes enforce of cached `version`: the previous one while
        the circuit breaker holds it (the fleet view then shows the node behind)."""
        if self.config.safety.enabled:
            trip = breaker.read_trip(self.cache.breaker_dir, self.cache.label(name))
            if trip is not None and trip.holds(version):
                return trip.fallback
        return version

    async def _walk_roots(self, hint: int) -> None:
        """Fetch, judge and cache each root version up to `hint`; keys.json before any file they verify."""
        for version in self.trust.root_steps(hint):
            self._file = f"root/{version}.json"
            resp = await self.fetcher.get(self._file, MAX_ROOT, {"Accept-Encoding": "identity"})
            rotated = self.trust.update_root(resp.body)
            self.cache.write_root(resp.body)
            if rotated:
                self.cache.forget_manifest()
                log.info("online key rotated%s root=%d online=%s: versions the retired key vouched for "
                         "are forgotten", self.log_tag(), version, ",".join(self.trust.online_keys),
                         extra={"event": "key_rotation_followed", "version": version,
                                "signed_by": ",".join(self.trust.online_keys), "source_name": self.source.name or None})
            self._save_keys()
        self._file = ""

    def _save_keys(self) -> None:
        """keys.json: the online keys, and a retired key while a cached list still holds its files."""
        wanted = set(self.trust.online_keys)
        for name in self.lists:
            try:
                wanted |= self.cache.list_signers(name)
            except BlocklistError:
                continue
        keys = {kid: key for kid, key in self.trust.seen_keys.items() if kid in wanted}
        if set(keys) != self._saved_keys:
            self.cache.save_keys(keys)
            self._saved_keys = set(keys)

    async def _sync_list(self, name: str) -> None:
        current = self.filters.get(name)
        cached_deltas = self._cached_delta_bytes(name) if current is not None else None
        plan = self.trust.plan(name, cached_deltas or 0)
        if plan is None:
            return
        if cached_deltas is not None and not self.cache.list_signers(name) <= set(self.trust.online_keys):
            cached_deltas = None  # a retired key signed the cached files: the new key's snapshot replaces them
        if cached_deltas is None:  # no usable cached state: deltas need a base
            plan = UpdatePlan(plan.list, plan.version, (), plan.snapshot)
        if plan.deltas and current is not None:
            try:
                await self._apply_deltas(name, current, plan.deltas)
                return
            except (BlocklistError, OSError) as exc:
                self._record_error(name, exc, fallback=True)
        await self._fetch_snapshot(name, plan.snapshot)

    async def _apply_deltas(self, name: str, current: ListFilter, chain: tuple[DeltaRef, ...]) -> None:
        started, files, result = time.monotonic(), {}, current
        for ref in chain:
            data = await self._fetch_file(ref)
            result = result.apply(self.trust.verify_delta(name, data, ref))
            files[f"delta-{ref.from_version}-{ref.to_version}"] = data
        self.trust.check_list(name, result)
        state = self.cache.state(name)
        if state is None or state.version != current.version:
            # e.g. a write that failed after replacing state.json (ENOSPC at the generation
            # bump): appending to that chain would name a delta twice. The snapshot repairs it.
            raise SyncError(ErrorKind.CACHE, f"list {name}: state.json does not end at version "
                                             f"{current.version}, the base of the delta chain")
        self.cache.write_list(name, ListState(result.version, result.checksum, state.snapshot,
                                              state.deltas + tuple(files)), files, compiled=result)
        self.trust.accept_list(name, result)  # only once the cache holds it
        self._save_keys()
        self._enforce(name, result, "delta", sum(len(d) for d in files.values()), started)

    async def _fetch_snapshot(self, name: str, ref: FileRef) -> None:
        started = time.monotonic()
        data = await self._fetch_file(ref)
        snap = self.trust.verify_snapshot(name, data)
        result = ListFilter.from_snapshot(snap)
        self.trust.check_list(name, result)
        file_name = f"snapshot-{snap.version}"
        self.cache.write_list(name, ListState(snap.version, snap.checksum, file_name, ()), {file_name: data},
                              compiled=result)
        self.trust.accept_list(name, result)
        self._save_keys()
        self._enforce(name, result, "snapshot", len(data), started)

    async def _fetch_file(self, ref: FileRef) -> bytes:
        self._file = ref.path
        bundled = self._bundled.pop(ref.path, None)
        if bundled is not None and len(bundled) == ref.size:
            return bundled  # checked by the caller like any fetched file
        resp = await self.fetcher.get(ref.path, ref.size, {"Accept-Encoding": "identity"})
        return resp.body

    def _cached_delta_bytes(self, name: str) -> int | None:
        """Bytes of the deltas cached on top of the snapshot; None if the state is unreadable."""
        try:
            state = self.cache.state(name)
            if state is None:
                return None
            folder = self.cache.list_dir(name)
            return sum((folder / d).stat().st_size for d in state.deltas)
        except (BlocklistError, OSError):
            return None

    # -- status and logs

    def _enforce(self, name: str, result: ListFilter, via: str, size: int, started: float) -> None:
        previous = self.filters.get(name)
        self.filters[name] = result
        manifest = self.trust.manifest
        ref = manifest.lists[name]  # type: ignore[union-attr]
        st = self.status.lists[name]
        st.version, st.checksum, st.entries = result.version, result.checksum, ref.entries
        st.expires = self.trust.deadline(manifest)  # type: ignore[arg-type]
        took_ms = (time.monotonic() - started) * 1000
        label = self.source.qualified(name)
        log.info("updated list=%s version=%d from=%s via=%s bytes=%d took_ms=%d", label, result.version,
                 previous.version if previous else 0, via, size, took_ms,
                 extra={"event": "sync_updated", "list": label, "version": result.version, "via": via, "bytes": size,
                        "have": previous.version if previous else 0, "duration_ms": round(took_ms, 3),
                        "source_name": self.source.name or None})

    def _record_manifest(self, now: float) -> None:
        manifest = self.trust.manifest
        assert manifest is not None
        ms = self.status.manifest
        ms.version, ms.expires, ms.signed_by, ms.fetched_at = (manifest.version, self.trust.deadline(manifest),
                                                               manifest.signed_by, now)
        for name in self.lists:
            ref = manifest.lists.get(name)
            st = self.status.lists[name]
            if ref is not None and ref.version != st.newest_seen:
                st.newest_seen, st.newest_seen_at = ref.version, now
            if ref is not None and self.trust.in_sync(name):
                st.expires = self.trust.deadline(manifest)

    def _record_error(self, name: str | None, exc: BaseException, file: str = "",
                      fallback: bool = False) -> None:
        kind = failure_kind(exc)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        now = time.time()
        self.status.count_error(kind)
        names = [name] if name else list(self.lists)
        for n in names:
            self.status.lists[n].record_error(kind, reason, now)
        manifest = self.trust.manifest
        target = manifest.lists[name].version if name and manifest and name in manifest.lists else "-"
        have = self.trust.enforced_version(name) if name else "-"
        action = "falling back to the snapshot" if fallback else "keeping the last good version"
        label = self.source.qualified(name) if name else self.source.qualified("*")
        log.warning("sync failed list=%s version=%s have=%s file=%s kind=%s reason=%r; %s",
                    label, target, have, file or self._file or "-", kind, reason, action,
                    extra={"event": "sync_failed", "list": self.source.qualified(name) if name else None,
                           "source_name": self.source.name or None, "version": target if target != "-" else None,
                           "have": have if have != "-" else None, "file": file or self._file or None,
                           "kind": kind, "reason": reason, "outcome": "fallback" if fallback else "kept"})

    def log_tag(self) -> str:
        """" source=police" in a log line of a named source, "" in the one-source form."""
        return f" source={self.source.name}" if self.source.name else ""

    def write_status(self) -> None:
        try:
            write_status(self.cache.status_file, self.status)
        except OSError as exc:
            log.error("status not written file=%s kind=%s reason=%r", self.cache.status_file, ErrorKind.DISK,
                      exc.strerror, extra={"event": "status_write_failed", "file": str(self.cache.status_file),
                                           "kind": ErrorKind.DISK, "reason": exc.strerror})


async def sync_once(config: PluginConfig) -> bool:
    """One sync from scratch (what `sync --once` does), every source at once: True if every list
    of every source is at the newest version."""
    async def one(source: SourceConfig) -> bool:
        async with http_session(config, source) as session:
            return await Syncer(config, HttpFetcher(session, config, source), source).sync_once()
    results = await asyncio.gather(*(one(source) for source in config.sources), return_exceptions=True)
    return all(_outcome(result) for result in results)


async def sync_loop(config: PluginConfig, stop: asyncio.Event, *, reload: asyncio.Event | None = None,
                    on_reload: Callable[[PluginConfig], Awaitable[None]] | None = None,
                    backoff_base: float | None = None, backoff_cap: float | None = None) -> None:
    """The daemon: each source in its own loop (`source_loop`), until `stop` is set.

    When `reload` is set (SIGHUP) it re-reads plugin.yaml; with a new configuration it
    stops every source's loop (an interrupted sync writes its status first), starts new
    ones over the same cache (what enforcement loads is never touched) and calls
    `on_reload`. A refused reload leaves the loops running.
    """
    while not stop.is_set():
        tasks = [asyncio.ensure_future(source_loop(config, source, stop, backoff_base, backoff_cap))
                 for source in config.sources]
        try:
            new = None
            while new is None and not stop.is_set():
                await _until(stop, reload, asyncio.gather(*tasks, return_exceptions=True))
                if reload is None or not reload.is_set():
                    break
                reload.clear()
                new = reread(config, RESTART_ONLY)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if new is None:
            break
        config = new
        if on_reload is not None:
            await on_reload(config)


async def source_loop(config: PluginConfig, source: SourceConfig, stop: asyncio.Event,
                      backoff_base: float | None = None, backoff_cap: float | None = None) -> None:
    """One source's sync, then long-poll (or sleep poll_interval), until `stop` is set or cancelled.

    After a failed sync it retries with back-off from timeouts.retry_first up to
    timeouts.retry_max seconds (`backoff_base`/`backoff_cap` override them). Other
    sources' loops go on whatever this one meets.
    """
    async with http_session(config, source) as session:
        backoff = _backoff(config, backoff_base, backoff_cap)
        syncer = await _start_syncer(config, source, HttpFetcher(session, config, source), stop, backoff)
        while syncer is not None and not stop.is_set():
            started = time.monotonic()
            task = asyncio.ensure_future(syncer.sync_once(config.long_poll))
            try:
                await _until(stop, None, task)
            finally:
                if not task.done():  # stopping or reloading: cancel at an await (cache writes have none)
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                    syncer.write_status()  # the errors this cycle counted, before another Syncer reads them
            if stop.is_set():
                break
            if _result(task):
                backoff.reset()
                long_poll = config.long_poll > 0 and syncer.long_poll_ok
                delay = (max(0.0, MIN_CYCLE - (time.monotonic() - started)) if long_poll
                         else config.poll_interval)
            else:
                delay = backoff.next_delay()
                log.info("sync retry%s in=%.2fs attempt=%d", syncer.log_tag(), delay, backoff.failures,
                         extra={"event": "sync_retry", "delay_ms": round(delay * 1000), "attempt": backoff.failures,
                                "source_name": source.name or None})
            if delay > 0:
                await _sleep(stop, delay)


async def _start_syncer(config: PluginConfig, source: SourceConfig, fetcher: Fetcher, stop: asyncio.Event,
                        backoff: Backoff) -> Syncer | None:
    """A Syncer of `source`, retried with back-off while it cannot start (e.g. a node_token_file
    a reload named is unreadable): one source's trouble never ends the daemon or the other
    sources' loops. None when stopped first."""
    while not stop.is_set():
        try:
            return Syncer(config, fetcher, source)
        except BlocklistError as exc:
            delay = backoff.next_delay()
            log.error("sync cannot start%s: %s; retrying in %.2fs", f" source={source.name}" if source.name else "",
                      exc, delay, extra={"event": "sync_crashed", "kind": "internal", "reason": str(exc),
                                         "source_name": source.name or None})
            await _sleep(stop, delay)
    return None


def _backoff(config: PluginConfig, base: float | None, cap: float | None) -> Backoff:
    return Backoff(base or config.timeouts.retry_first, cap or config.timeouts.retry_max)


async def _until(stop: asyncio.Event, reload: asyncio.Event | None, task: asyncio.Future[Any]) -> None:
    """Wait for `task`, `stop` or `reload`, whichever comes first; `task` is left as it is."""
    waiters = [asyncio.ensure_future(stop.wait())]
    if reload is not None:
        waiters.append(asyncio.ensure_future(reload.wait()))
    await asyncio.wait({task, *waiters}, return_when=asyncio.FIRST_COMPLETED)
    for waiter in waiters:
        waiter.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)


async def _sleep(stop: asyncio.Event, delay: float) -> None:
    """Sleep `delay` seconds, or less if `stop` is set first."""
    sleeper = asyncio.ensure_future(asyncio.sleep(delay))
    try:
        await _until(stop, None, sleeper)
    finally:
        sleeper.cancel()
        await asyncio.gather(sleeper, return_exceptions=True)


def _result(task: asyncio.Future[bool]) -> bool:
    try:
        return task.result()
    except Exception as exc:  # noqa: BLE001 - a bug must not end the daemon; retry later
        return _outcome(exc)


def _outcome(result: bool | BaseException) -> bool:
    """A sync's result, or False for the exception it ended with (logged: a bug never ends the daemon)."""
    if isinstance(result, BaseException):
        exc = result
        log.error("sync crashed kind=internal reason=%r; retrying", exc,
                  extra={"event": "sync_crashed", "kind": "internal", "reason": repr(exc)})
        log.debug("sync crash", exc_info=exc)
        return False
    return result


async def _main(config: PluginConfig, once: bool) -> int:
    lock = Cache(config.cache_dir).lock_writer()
    try:
        if once:
            return 0 if await sync_once(config) else 1
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        reload = sighup_event()
        log.info("sync started node=%s lists=%s long_poll=%g poll_interval=%g", config.node_id,
                 ",".join(config.lists), config.long_poll, config.poll_interval,
                 extra={"event": "sync_started", "node": config.node_id, "lists": config.lists,
                        "source": None if config.several_sources else config.source})
        admin = await start_admin(config)

        async def restart_admin(new: PluginConfig) -> None:
            # The admin pages judge by the configuration (lists, thresholds, node_id): serve the new one.
            nonlocal admin
            if admin is not None:
                await admin.cleanup()
            admin = await start_admin(new)

        try:
            await sync_loop(config, stop, reload=reload, on_reload=restart_admin)
        finally:
            if admin is not None:
                await admin.cleanup()
        log.info("sync stopped node=%s", config.node_id, extra={"event": "sync_stopped", "node": config.node_id})
        return 0
    finally:
        os.close(lock)


def run_sync(config: PluginConfig, once: bool) -> int:
    """`blocklist-plugin sync [--once]`: exit 0 when every list is at the newest version (or on
    SIGTERM/SIGINT for the daemon), 1 otherwise."""
    try:
        return asyncio.run(_main(config, once))
    except KeyboardInterrupt:
        return 0
