"""`blocklist serve`: the publish directory over HTTP, with a manifest long-poll and fleet records.

What the application `make_app` builds answers:

    GET|HEAD /manifest.json   from memory, strong ETag (SHA-256 of the bytes),
                              If-None-Match -> 304. With X-Blocklist-Wait: N
                              (capped at MAX_WAIT) and If-None-Match equal to
                              the current ETag, the answer waits up to N s for
                              a new manifest: 200 with it, else 304. Every
                              answer carries X-Blocklist-Wait (the wait applied,
                              0 if none): it tells a plugin that this source
                              long-polls (nginx never sends it).
                              A poll whose X-Blocklist-Proof verifies for a
                              registered node is recorded in <home>/fleet.sqlite
                              for `blocklist fleet` (blocklist.nodes); any other
                              is served alike and never recorded. Every answer
                              says which in X-Blocklist-Report.
                              A GET with X-Blocklist-Bundle: <bytes> whose
                              answer brings a new manifest gets, in the same
                              body, the delta chains from the versions in its
                              X-Blocklist-Have (files in memory, <bytes> in
                              all at most): Bundles. The node then needs no
                              other request for the publish.
    /fleet, /fleet.json, /metrics   blocklist.fleet_web (loopback clients only)
    GET|HEAD /<path>          any other path: a regular file below publish/,
                              strong ETag, If-None-Match -> 304, Content-Length,
                              Cache-Control max-age=300 (an edge may keep the
                              versioned files far longer), no Range, no directory listing, no dot files
                              (publish's temp files), nothing outside publish/
                              (.., symlinks). Below /lists/ and /root/ (the
                              versioned files) a route serves them; elsewhere a
                              middleware, only when no route matched, so routes
                              added to the app after make_app still win.

With --tls-cert and --tls-key (`run_serve(..., tls=make_tls_context(...))`)
it serves HTTPS only, so node ids and reported versions never cross the
network in the clear (a proof is good for one poll, but who polls is private).

The semantics are those of a plain static server, so the same directory copied
to nginx, an object store or a CDN works unchanged (plugins then poll).
One shared task stats manifest.json every WATCH_INTERVAL seconds and wakes the
waiting long-polls when it changes, all at once, and ends those whose wait is
over (no timer per poll); publish replaces it atomically. Built for fleets of
thousands: the reports of polls that arrive together are written in one
transaction (FleetRecorder), files up to 1 MiB are answered from memory
(SmallFiles), a herd of requests shares one stat of the manifest and one read
of a new file, and a woken poll that asks gets its delta with the manifest
(Bundles): one request per node per publish. Another
(blocklist.refresh.run_refresher) re-signs it before it expires: serve runs in
the hotline home, which holds the online key.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import itertools
import json
import logging
import os
import sqlite3
import ssl
import stat
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from aiohttp import web
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from blocklist.core.errors import ConfigError, StoreError
from blocklist.core.protocol import (
    BUNDLE,
    BUNDLE_TYPE,
    HAVE,
    MAX_BUNDLE_PARTS,
    NODE,
    PROOF,
    REPORT,
    ReportOutcome,
    format_bundle,
    parse_have,
)
from blocklist.fleet_web import METRICS_REGISTRY, add_fleet_routes
from blocklist.home import Home
from blocklist.nodes import FleetStore, precheck
from blocklist.refresh import REFRESH_CHECK, run_refresher

log = logging.getLogger("blocklist.serve")

MANIFEST = "manifest.json"
MAX_WAIT = 60.0
WATCH_INTERVAL = 0.05
FRESH = 0.005  # a poll sees a manifest checked at most this long ago (the watcher checks every WATCH_INTERVAL)
CHUNK = 256 * 1024
BACKLOG = 4096  # a fleet reconnects at once after a restart (the kernel caps it at net.core.somaxconn)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]



class ManifestWatcher(Collector):
    """The current manifest bytes and ETag, and the long-polls parked until they change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: bytes | None = None
        self.etag: str | None = None
        # Parked polls: (deadline on the loop's clock, order, future), a heap. Set True when the
        # manifest changes (all at once), False at the deadline (by `run`'s tick).
        self._parked: list[tuple[float, int, asyncio.Future[bool]]] = []
        self._order = itertools.count()
        self._key: tuple[int, int, int] | None = None
        self.closing = False
        self.waiting = 0  # long-polls parked now
        self._checked = -1.0  # time.monotonic() of the last stat
        self.answered: Counter[tuple[str, int]] = Counter()  # (manifest|file, status) -> requests
        self.bundled = 0  # manifest answers that carried files (X-Blocklist-Bundle)

    def refresh(self, max_age: float = 0.0) -> None:
        """Read the manifest again if it changed; not if it was checked less than `max_age` s ago."""
        now = time.monotonic()
        if now - self._checked < max_age:
            return
        self._checked = now
        try:
            st = os.stat(self.path)
            key = (st.st_ino, st.st_mtime_ns, st.st_size)
            if key == self._key:
                return
            data = self.path.read_bytes()
        except FileNotFoundError:
            key, data = None, None
        except OSError as exc:
            log.error("manifest unreadable file=%s reason=%r", self.path, exc.strerror,
                      extra={"event": "manifest_unreadable", "file": str(self.path), "reason": exc.strerror})
            return
        self._key, self.data = key, data
        self.etag = f'"{hashlib.sha256(data).hexdigest()[:32]}"' if data is not None else None
        self._wake_all()

    def _wake_all(self) -> None:
        parked, self._parked = self._parked, []
        for _, _, future in parked:
            if not future.done():  # a poll whose client went away is cancelled
                future.set_result(True)

    def _expire(self, now: float) -> None:
        parked = self._parked
        while parked and parked[0][0] <= now:
            future = heapq.heappop(parked)[2]
            if not future.done():
                future.set_result(False)

    async def wait(self, seconds: float) -> None:
        """Park a long-poll until the manifest changes or about `seconds` pass.

        One change wakes every parked poll in one pass of the event loop, with no
        task, thread or timer per poll: a poll is a future in a heap of deadlines,
        which `run` expires on its tick (so a wait may last one WATCH_INTERVAL
        longer). A timer each cost more than the rest of a poll: the loop keeps
        them in a heap ordered by a comparison in Python, thousands deep.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        heapq.heappush(self._parked, (loop.time() + seconds, next(self._order), future))
        self.waiting += 1
        try:
            changed = await future
        finally:
            self.waiting -= 1
        if not changed:
            self.refresh()  # the deadline: one last look

    async def run(self, interval: float) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            self.refresh()
            self._expire(loop.time())

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("blocklist_serve_polls_waiting", "Manifest long-polls parked until a change",
                                value=self.waiting)
        answers = CounterMetricFamily("blocklist_serve_requests", "Requests answered, by what was asked "
                                      "(manifest or file) and the status", labels=["path", "status"])
        for (path, status), count in sorted(self.answered.items()):
            answers.add_metric([path, str(status)], count)
        yield answers
        yield CounterMetricFamily("blocklist_serve_bundles", "Manifest answers that also carried the files "
                                  "the node needs next (X-Blocklist-Bundle)", value=self.bundled)

    def close(self) -> None:
        """Wake every waiting long-poll (they answer 304) so the server can stop at once."""
        self.closing = True
        self._wake_all()


class FleetRecorder(Collector):
    """Judges each poll's proof and records the verified ones off the event loop, in batches.

    A poll whose proof is malformed or out of the clock window is judged on the
    event loop (no database access). The others wait for the next batch: while
    one batch is written (one SQLite transaction, one disk sync, in a thread),
    the polls that arrive gather into the next, so a thousand nodes polling at
    once cost a few transactions rather than a thousand. A poll is answered once
    its batch is committed: X-Blocklist-Report "recorded" means `blocklist fleet`
    already shows it. A failure is logged, never fails the poll. What was done
    with each poll is counted (blocklist_fleet_polls_total{outcome}) and summed
    up in one log line per LOG_EVERY seconds at most: a flood of forged polls
    must not flood the log either, and no log line repeats a header a stranger sent.
    """

    LOG_EVERY = 60.0

    def __init__(self, path: Path) -> None:
        self.store = FleetStore(path)
        self.lock = threading.Lock()
        self.outcomes: Counter[ReportOutcome] = Counter()
        self.batches = 0
        self._unlogged: Counter[ReportOutcome] = Counter()
        self._logged_at = 0.0
        self._pending: list[tuple[tuple[str, str, str, str], asyncio.Future[ReportOutcome]]] = []
        self._writer: asyncio.Task[None] | None = None

    def _accept(self, polls: list[tuple[str, str, str, str]]) -> list[ReportOutcome]:
        with self.lock:
            return self.store.accept_many(polls)

    async def record(self, request: web.Request) -> ReportOutcome:
        headers = request.headers
        if NODE not in headers or PROOF not in headers:
            outcome = ReportOutcome.ANONYMOUS
        else:
            checked = precheck(headers[NODE], headers[PROOF], time.time())
            if isinstance(checked, ReportOutcome):
                outcome = checked
            else:
                future = asyncio.get_running_loop().create_future()
                self._pending.append(((headers[NODE], headers.get(HAVE, ""), headers[PROOF],
                                       request.remote or ""), future))
                if self._writer is None or self._writer.done():
                    self._writer = asyncio.create_task(self._write())
                outcome = await future  # cancelled with the request: `_write` skips it
        self._count(outcome)
        return outcome

    async def _write(self) -> None:
        """Write the pending polls, a batch at a time, until none is left."""
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                outcomes = await asyncio.to_thread(self._accept, [poll for poll, _ in batch])
            except (sqlite3.Error, StoreError) as exc:
                log.warning("fleet record failed reason=%r", str(exc),
                            extra={"event": "fleet_record_failed", "reason": str(exc)})
                outcomes = [ReportOutcome.REFUSED] * len(batch)
            except BaseException:  # never leave a poll waiting for a batch that will not come
                for _, future in batch:
                    future.cancel()
                raise
            self.batches += 1
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if not future.done():
                    future.set_result(outcome)

    def _count(self, outcome: ReportOutcome) -> None:
        self.outcomes[outcome] += 1
        if outcome in (ReportOutcome.RECORDED, ReportOutcome.ANONYMOUS):
            return
        self._unlogged[outcome] += 1
        now = time.monotonic()
        if now - self._logged_at >= self.LOG_EVERY:
            log.warning("fleet polls not recorded: %s (unregistered node, bad or replayed proof, or a clock "
                        "more than 5 min off)", " ".join(f"{k}={v}" for k, v in sorted(self._unlogged.items())),
                        extra={"event": "fleet_poll_refused", "counts": {str(k): v for k, v in self._unlogged.items()}})
            self._unlogged.clear()
            self._logged_at = now

    def collect(self) -> Iterator[Metric]:
        polls = CounterMetricFamily("blocklist_fleet_polls", "Manifest polls by what serve did with their report",
                                    labels=["outcome"])
        for outcome in ReportOutcome:
            polls.add_metric([outcome.value], self.outcomes[outcome])
        yield polls
        yield CounterMetricFamily("blocklist_fleet_report_batches", "Transactions that wrote the verified polls",
                                  value=self.batches)

    async def close(self) -> None:
        """Write what is pending, then close the store."""
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)
        with self.lock:
            self.store.close()


HOME = web.AppKey("home", Home)
WATCHER = web.AppKey("manifest_watcher", ManifestWatcher)
FLEET = web.AppKey("fleet", FleetRecorder)
WATCH_EVERY = web.AppKey("watch_interval", float)
REFRESH_EVERY = web.AppKey("refresh_interval", float)


def _matches(if_none_match: str | None, etag: str | None) -> bool:
    """RFC 9110 If-None-Match (weak comparison)."""
    if not if_none_match or etag is None:
        return False
    tags = [t.strip() for t in if_none_match.split(",")]
    return "*" in tags or etag in (t[2:] if t.startswith("W/") else t for t in tags)


def _wait_seconds(request: web.Request) -> float:
    try:
        wait = float(request.headers.get("X-Blocklist-Wait", "0"))
    except ValueError:
        return 0.0
    return min(max(wait, 0.0), MAX_WAIT) if wait == wait else 0.0  # NaN -> 0


async def manifest(request: web.Request) -> web.StreamResponse:
    watcher = request.app[WATCHER]
    watcher.refresh(FRESH)  # a herd of polls shares one stat
    outcome = await request.app[FLEET].record(request)
    wait = _wait_seconds(request)
    inm = request.headers.get("If-None-Match")
    if wait > 0 and _matches(inm, watcher.etag) and not watcher.closing:
        await watcher.wait(wait)
    # Always present (the wait applied, 0 if none asked): tells a plugin this source long-polls.
    headers = {"Cache-Control": "no-cache", "Accept-Ranges": "none", "X-Blocklist-Wait": f"{wait:g}",
               REPORT: outcome.value}
    if watcher.data is None:
        watcher.answered["manifest", 404] += 1
        raise web.HTTPNotFound(text="nothing published yet\n", headers=headers)
    headers["ETag"] = watcher.etag  # type: ignore[assignment]
    if _matches(inm, watcher.etag):
        watcher.answered["manifest", 304] += 1
        return web.Response(status=304, headers=headers)
    watcher.answered["manifest", 200] += 1
    bundle = _bundle(request, watcher)
    if bundle is not None:
        headers[BUNDLE], body = bundle
        # Per node: no cache may keep it, and none may answer another request with it.
        headers["Cache-Control"], headers["Vary"] = "no-store", f"{BUNDLE}, {HAVE}"
        watcher.bundled += 1
        return web.Response(body=body, content_type=BUNDLE_TYPE, headers=headers)
    return web.Response(body=watcher.data, content_type="application/json", headers=headers)


def _bundle(request: web.Request, watcher: ManifestWatcher) -> tuple[str, bytes] | None:
    """The bundle this manifest answer may carry: asked for, with a budget, a GET."""
    asked = request.headers.get(BUNDLE)
    if asked is None or request.method != "GET" or not asked.isdigit() or len(asked) > 12:
        return None
    return request.app[BUNDLES].answer(watcher, request.headers.get(HAVE, ""), int(asked))


@web.middleware
async def publish_tree(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Paths no route claims are files of the publish tree."""
    if not isinstance(request.match_info.http_exception, web.HTTPNotFound):
        return await handler(request)
    if request.method not in ("GET", "HEAD"):
        raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD"])
    return await publish_file(request)


async def publish_file(request: web.Request) -> web.StreamResponse:
    """A file of the publish tree (`static_file`), counted in blocklist_serve_requests_total."""
    answered = request.app[WATCHER].answered
    try:
        resp = await static_file(request)
    except web.HTTPException as exc:
        answered["file", exc.status] += 1
        raise
    answered["file", resp.status] += 1
    return resp


class SmallFiles:
    """Whole small files of the publish tree in memory, with their ETags, checked by a stat on every use.

    Thousands of nodes fetch the same new delta within a second of a publish:
    each request then costs one stat, not an open, a path resolution and a
    read in a thread. Files above MAX_FILE (big snapshots) are streamed from
    disk as before; the total is capped at MAX_TOTAL, the oldest entry going
    first. While one request reads a file, the others asking for it wait for
    that read rather than each reading it (the herd after a publish). An entry
    is used only while the path still names the same file
    (inode, mtime, size): a file replaced or removed is never served stale,
    and a path only gets an entry after the full checks of `static_file`.
    """

    MAX_FILE = 1 << 20
    MAX_TOTAL = 32 << 20

    def __init__(self) -> None:
        self._files: dict[str, tuple[tuple[int, int, int], str, bytes]] = {}
        self.loading: dict[str, asyncio.Future[None]] = {}  # set when the file is kept (or not)
        self.size = 0
        self.hits = 0

    @staticmethod
    def key(st: os.stat_result) -> tuple[int, int, int]:
        return st.st_ino, st.st_mtime_ns, st.st_size

    def get(self, path: str) -> tuple[str, bytes] | None:
        entry = self._files.get(path)
        if entry is None:
            return None
        try:
            st = os.stat(path)
        except OSError:
            st = None
        if st is None or not stat.S_ISREG(st.st_mode) or self.key(st) != entry[0]:
            self._drop(path)
            return None
        self.hits += 1
        return entry[1], entry[2]

    async def lookup(self, path: str) -> tuple[str, bytes] | None:
        """`get`, after the read of `path` another request is making, if any."""
        loading = self.loading.get(path)
        if loading is not None and path not in self._files:
            await asyncio.shield(loading)
        return self.get(path)

    async def read(self, path: str, f: BinaryIO, st: os.stat_result, etag: str) -> bytes:
        """Read the open file `f` at `path` in a thread and keep it; a longer read means it grew."""
        done = self.loading.setdefault(path, asyncio.get_running_loop().create_future())
        try:
            data = await asyncio.to_thread(f.read, st.st_size + 1)
            self.keep(path, st, etag, data)
        finally:
            if self.loading.get(path) is done:
                del self.loading[path]
            if not done.done():
                done.set_result(None)
        return data

    def keep(self, path: str, st: os.stat_result, etag: str, data: bytes) -> None:
        if len(data) > self.MAX_FILE or len(data) != st.st_size:
            return
        self._drop(path)
        while self._files and self.size + len(data) > self.MAX_TOTAL:
            self._drop(next(iter(self._files)))
        self._files[path] = (self.key(st), etag, data)
        self.size += len(data)

    def _drop(self, path: str) -> None:
        entry = self._files.pop(path, None)
        if entry is not None:
            self.size -= len(entry[2])


FILES = web.AppKey("small_files", SmallFiles)


def _tree_name(root: Path, rel: str) -> str | None:
    """The file name of `rel` below `root`, or None if `rel` may not name a published file."""
    parts = rel.split("/")
    if any(p in ("", ".", "..") or p.startswith(".") or "\\" in p or "\0" in p for p in parts):
        return None
    return os.path.join(root, *parts)  # a str: pathlib costs more than the rest of a cached answer


class Bundles:
    """The manifest answers that also carry the files a node needs next (X-Blocklist-Bundle).

    After a publish every long-polling node wakes with the new manifest and
    then asks for its list's new delta: a second request each, the same file
    for the whole herd. A node that asks for a bundle gets, in the same body,
    the delta chain from each version of its X-Blocklist-Have to the
    manifest's, so one request per node carries the publish. Each answer is
    built once per manifest and distinct X-Blocklist-Have value (a herd holds
    the same versions) and kept until the manifest changes, MAX_TOTAL bytes at
    most. A list without a chain from the node's version (or with a file over
    SmallFiles.MAX_FILE, missing, or not the size the manifest names) is left
    out, and so is a chain that would take the answer past MAX_BUNDLE_PARTS or
    MAX_HEADER; with no file left, or over the node's budget, the answer is the
    plain manifest. The node checks every part exactly as if it had fetched it.
    """

    MAX_TOTAL = 32 << 20
    MAX_HEADER = 2048  # characters of X-Blocklist-Bundle (nginx's default proxy buffer is 4 KiB)

    def __init__(self, root: Path, files: SmallFiles) -> None:
        self.root = root
        self.files = files
        self._etag: str | None = None
        self._chains: dict[str, tuple[int, dict[int, tuple[int, str, int]]]] = {}  # list -> (version, from -> delta)
        self._answers: dict[str, tuple[int, str, bytes] | None] = {}  # have -> (files' bytes, header, body)
        self._size = 0

    def answer(self, watcher: ManifestWatcher, have: str, budget: int) -> tuple[str, bytes] | None:
        """The (X-Blocklist-Bundle header, body) for a node reporting `have`, or None: the plain manifest."""
        if watcher.etag != self._etag:
            self._reset(watcher)
        if have not in self._answers:
            built = self._build(watcher.data or b"", have)
            if self._size + len(built[2] if built else b"") > self.MAX_TOTAL:
                self._answers.clear()
                self._size = 0
            self._answers[have] = built
            self._size += len(have) + (len(built[2]) if built else 0)
        found = self._answers[have]
        if found is None or found[0] > budget:
            return None
        return found[1], found[2]

    def _reset(self, watcher: ManifestWatcher) -> None:
        self._etag, self._answers, self._size, self._chains = watcher.etag, {}, 0, {}
        try:
            lists = json.loads(watcher.data or b"null")["signed"]["lists"]
            for name, ref in lists.items():
                self._chains[name] = (int(ref["version"]), {int(d["from"]): (int(d["to"]), str(d["path"]),
                                                                             int(d["size"])) for d in ref["deltas"]})
        except (ValueError, TypeError, KeyError, AttributeError):
            self._chains = {}  # not a manifest this serve can read: plain answers

    def _build(self, manifest: bytes, have: str) -> tuple[int, str, bytes] | None:
        parts: list[tuple[str, bytes]] = [("manifest.json", manifest)]
        for name, version in sorted(parse_have(have).items()):
            chain = self._chain(name, version) if name in self._chains else []
            # Within what every reader takes: MAX_BUNDLE_PARTS, and a header that fits any proxy's buffer.
            header = ", ".join(f"{path}={len(data)}" for path, data in parts + chain)
            if len(parts) + len(chain) <= MAX_BUNDLE_PARTS and len(header) <= self.MAX_HEADER:
                parts += chain
        if len(parts) == 1:
            return None
        header, body = format_bundle(parts)
        return len(body) - len(manifest), header, body

    def _chain(self, name: str, have: int) -> list[tuple[str, bytes]]:
        """The delta files from `have` to the list's version, or none if any is missing."""
        version, deltas = self._chains[name]
        chain: list[tuple[str, bytes]] = []
        at = have
        while have and at != version and at in deltas and len(chain) < len(deltas):
            to, path, size = deltas[at]
            data = self._read(path)
            if data is None or len(data) != size:
                return []
            chain.append((path, data))
            at = to
        return chain if at == version else []

    def _read(self, rel: str) -> bytes | None:
        """A file of the publish tree through SmallFiles, with the checks of `static_file`."""
        name = _tree_name(self.root, rel)
        if name is None:
            return None
        cached = self.files.get(name)
        if cached is not None:
            return cached[1]
        try:
            if not Path(name).resolve().is_relative_to(self.root.resolve()):
                return None
            with open(name, "rb") as f:
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode) or st.st_size > self.files.MAX_FILE:
                    return None
                data = f.read(st.st_size + 1)  # small, once per file and manifest: on the loop
        except OSError:
            return None
        self.files.keep(name, st, f'"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"', data)
        return data if len(data) == st.st_size else None


BUNDLES = web.AppKey("bundles", Bundles)


def _file_headers(etag: str) -> dict[str, str]:
    return {"ETag": etag, "Accept-Ranges": "none", "Cache-Control": "public, max-age=300"}


def _from_memory(request: web.Request, etag: str, data: bytes) -> web.Response:
    if _matches(request.headers.get("If-None-Match"), etag):
        return web.Response(status=304, headers=_file_headers(etag))
    return web.Response(body=data, content_type="application/octet-stream", headers=_file_headers(etag))


async def static_file(request: web.Request) -> web.StreamResponse:
    root: Path = request.app[HOME].publish_dir
    name = _tree_name(root, request.path.lstrip("/"))
    if name is None:
        raise web.HTTPNotFound()
    cache = request.app[FILES]
    cached = await cache.lookup(name)
    if cached is not None:
        return _from_memory(request, *cached)
    path = Path(name)
    try:
        if not path.resolve().is_relative_to(root.resolve()):
            raise web.HTTPNotFound()
        f = open(path, "rb")  # noqa: SIM115 - closed below, after streaming
    except OSError:
        raise web.HTTPNotFound() from None
    with f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise web.HTTPNotFound()
        etag = f'"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"'
        headers = _file_headers(etag)
        if _matches(request.headers.get("If-None-Match"), etag):
            return web.Response(status=304, headers=headers)
        if st.st_size <= cache.MAX_FILE and request.method != "HEAD":
            data = await cache.read(name, f, st, etag)
            if len(data) == st.st_size:
                return _from_memory(request, etag, data)
            f.seek(0)  # it changed while read: stream it as before
        resp = web.StreamResponse(headers=headers)
        resp.content_type = "application/octet-stream"
        resp.content_length = st.st_size
        await resp.prepare(request)
        if request.method != "HEAD":
            remaining = st.st_size
            while remaining > 0:
                chunk = await asyncio.to_thread(f.read, min(CHUNK, remaining))
                if not chunk:
                    break  # the file shrank: the client sees a short body and retries
                await resp.write(chunk)
                remaining -= len(chunk)
        await resp.write_eof()
        return resp


async def _watch(app: web.Application) -> AsyncIterator[None]:
    home = app[HOME]
    watcher = ManifestWatcher(home.publish_dir / MANIFEST)
    watcher.refresh()
    app[WATCHER] = watcher
    app[FLEET] = FleetRecorder(home.fleet_path)
    app[METRICS_REGISTRY].register(app[FLEET])
    app[METRICS_REGISTRY].register(watcher)
    task = asyncio.create_task(watcher.run(app[WATCH_EVERY]))
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    app[METRICS_REGISTRY].unregister(app[FLEET])
    app[METRICS_REGISTRY].unregister(watcher)
    await app[FLEET].close()


async def _refresh(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(run_refresher(app[HOME], app[REFRESH_EVERY]))
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _wake_waiters(app: web.Application) -> None:
    app[WATCHER].close()


def make_app(home: Home, *, watch_interval: float = WATCH_INTERVAL,
             fleet_allowed: Sequence[str] = ("127.0.0.0/8", "::1/128"),
             refresh_interval: float | None = REFRESH_CHECK) -> web.Application:
    """The distribution server of `home`; more routes may be added before it starts.

    `refresh_interval` None: no refresher (the manifest is re-signed elsewhere).
    """
    app = web.Application(middlewares=[publish_tree])
    app[HOME] = home
    app[WATCH_EVERY] = watch_interval
    app[FILES] = SmallFiles()
    app[BUNDLES] = Bundles(home.publish_dir, app[FILES])
    app.cleanup_ctx.append(_watch)
    if refresh_interval is not None:
        app[REFRESH_EVERY] = refresh_interval
        app.cleanup_ctx.append(_refresh)
    app.on_shutdown.append(_wake_waiters)
    app.router.add_get("/" + MANIFEST, manifest)
    for folder in ("lists", "root"):  # the versioned files, fetched by every node after a publish: routed
        app.router.add_get(f"/{folder}/{{tail:.+}}", publish_file)
    add_fleet_routes(app, home, fleet_allowed)
    return app


def make_tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context for `cert` (PEM, chain included) and its `key`; ConfigError naming them if unusable."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:  # before OSError, its base class
        raise ConfigError(f"--tls-cert {cert} / --tls-key {key}: not a certificate and its key: "
                          f"{exc.reason or exc}") from None
    except OSError as exc:
        raise ConfigError(f"--tls-cert {cert} / --tls-key {key}: {exc.strerror or exc}") from None
    return context


def run_serve(home_path: Path, bind: str, port: int, tls: ssl.SSLContext | None = None) -> int:
    """`blocklist serve`: serve until SIGTERM/SIGINT; 0 on a clean stop, 1 if it cannot listen."""
    home = Home(home_path).require()
    home.publish_dir.mkdir(exist_ok=True)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.info("serving dir=%s on=%s://%s:%d/", home.publish_dir, "https" if tls else "http", bind, port,
             extra={"event": "serve_started", "file": str(home.publish_dir), "listen": f"{bind}:{port}",
                    "source": f"{'https' if tls else 'http'}://{bind}:{port}/"})
    try:
        web.run_app(make_app(home), host=bind, port=port, print=None, shutdown_timeout=2.0,
                    access_log=None, ssl_context=tls, backlog=BACKLOG)
    except OSError as exc:
        log.error("cannot listen on=%s:%d reason=%r", bind, port, exc.strerror or str(exc),
                  extra={"event": "serve_listen_failed", "listen": f"{bind}:{port}",
                         "reason": exc.strerror or str(exc)})
        return 1
    return 0
