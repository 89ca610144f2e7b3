"""A fleet of thousands: N light nodes polling one `blocklist serve`, directly and through an nginx cache.

    python tools/bench_fleet.py                # 2,000 nodes, 5 publishes per run
    python tools/bench_fleet.py --quick        # 500 nodes, 3 publishes
    python tools/bench_fleet.py --json         # one JSON line (for tools/bench.py)
    python tools/bench_fleet.py --nodes 1000 --runs longpoll

A node is a light client (`--client`, in --procs worker processes of asyncio,
one keep-alive connection per node, a minimal HTTP/1.1 GET rather than aiohttp's
client, which cost as much CPU as serve and shares its cores) that polls and
reports as the plugin does:
GET manifest.json with X-Blocklist-Node, X-Blocklist-Have and an
X-Blocklist-Proof made with the node's token (blocklist.core.protocol; the
tokens are issued by `blocklist node add`, run in-process), If-None-Match, and
X-Blocklist-Wait once the source has shown it long-polls, and X-Blocklist-Bundle
(--no-bundle: as plugins before it); on a new manifest it takes the list's new
delta from the answer's bundle, else GETs it (or the snapshot when it has no
base), and checks its size and SHA-256 (not the signature: the plugin's cost is
not measured here).

The time of one node for one publish runs from the new manifest.json appearing
(publish's rename, watched every millisecond) to that node holding every byte of
the new version. `blocklist publish` returns 0.2 s or more after that (its audit,
its interpreter's exit) and nodes often hold the version by then: the p99 from
publish returning (0 for a node that held it before) is in the JSON too, and the
goal is judged on the stricter figure. The runs:

  longpoll   every node long-polls serve (long_poll 25): p50, p99 and max; serve's
             RSS (/proc VmRSS) at rest with every poll parked (its
             blocklist_serve_polls_waiting gauge) and at peak (VmHWM)
  tier       plain polling (long_poll 0, poll_interval --poll-interval) through nginx
             as a caching tier in front of serve (tools/nginx_mirror.start_nginx_cache,
             manifest cached --manifest-valid): the same figures, against poll_interval
  tier-reports  the tier with reports (start_nginx_cache(reports=True)): manifest polls
             that carry a proof bypass the cache to serve, which records and long-polls
             them through nginx; the list files come from the cache (full run only)
  direct     plain polling of serve itself, no tier (full run only): what the tier saves

For each run, serve's request rate (its blocklist_serve_requests_total) over the
publishes, its requests per node per publish and, in the runs where every poll
parks, its CPU seconds per whole cycle (publish to every poll parked again):
the two figures that do not depend on how busy the machine is. The bench raises
its RLIMIT_NOFILE soft limit to the hard limit (serve, nginx and the workers
inherit it): 2,000 nodes need over 4,000 descriptors.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from blocklist.core.protocol import BUNDLE, HAVE, NODE, PROOF, WAIT, make_proof, parse_bundle, report_key  # noqa: E402
from resolver_plugin.distribution.sync import BUNDLE_BYTES  # noqa: E402
from tools.bench_propagation import free_port, percentile, wait_port  # noqa: E402
from tools.nginx_mirror import start_nginx_cache, stop_nginx  # noqa: E402

GOAL_P99 = 1.0
GOAL_RSS_MB = 250
LIST = "bench"


# ----------------------------------------------------------------------------- the light node

class Node:
    """One simulated plugin: its id, report key, manifest ETag and the version it holds."""

    def __init__(self, node_id: str, token: str, bundle: bool = True) -> None:
        self.node_id = node_id
        self.bundle = bundle  # ask for X-Blocklist-Bundle, as the plugin does (False: as an older plugin)
        self.key = report_key(token)
        self.millis = 0
        self.etag: str | None = None
        self.version = 0
        self.long_poll_ok = False

    def headers(self, long_poll: float) -> dict[str, str]:
        have = f"{LIST}={self.version}" if self.version else ""
        self.millis = max(int(time.time() * 1000), self.millis + 1)
        headers = {"Accept-Encoding": "identity", NODE: self.node_id, HAVE: have,
                   PROOF: make_proof(self.key, self.node_id, have, self.millis).header()}
        if self.bundle:
            headers[BUNDLE] = str(BUNDLE_BYTES)
        if self.etag:
            headers["If-None-Match"] = self.etag
            if long_poll > 0 and self.long_poll_ok:
                headers[WAIT] = f"{long_poll:g}"
        return headers


class Connection:
    """One node's keep-alive HTTP/1.1 connection: GET with Content-Length answers, nothing more.

    A light client on purpose: aiohttp's client costs the nodes about as much
    CPU as serve spends answering them, and on one machine the two share the
    cores. Serve and nginx answer every GET with a Content-Length (or a 304).
    """

    def __init__(self, base: str) -> None:
        hostport = base.split("//", 1)[1].split("/", 1)[0]
        self.host, port = hostport.rsplit(":", 1)
        self.port = int(port)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str, headers: dict[str, str], timeout: float) -> tuple[int, dict[str, str], bytes]:
        for attempt in range(2):  # a keep-alive connection the server closed: once more on a new one
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            assert self.reader is not None
            lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            self.writer.write(f"GET /{path} HTTP/1.1\r\nHost: {self.host}\r\n{lines}\r\n".encode())
            try:
                async with asyncio.timeout(timeout):
                    head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                    status = int(head[0].split()[1])
                    fields = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:] if h)}
                    if "chunked" in fields.get("transfer-encoding", ""):
                        raise ValueError(f"{path}: a chunked answer")
                    length = 0 if status in (204, 304) else int(fields.get("content-length", "0"))
                    body = await self.reader.readexactly(length) if length else b""
            except (OSError, asyncio.IncompleteReadError) as exc:
                self.close()
                if attempt or isinstance(exc, TimeoutError):
                    raise
                continue
            except BaseException:
                self.close()
                raise
            if fields.get("connection", "").lower() == "close":
                self.close()
            return status, fields, body
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def _files_to_fetch(ref: dict[str, Any], have: int) -> list[dict[str, Any]]:
    """The delta chain from `have` to ref's version if the manifest keeps it, else the snapshot."""
    chain, at = [], have
    for delta in ref.get("deltas", []):
        if delta["from"] == at:
            chain.append(delta)
            at = delta["to"]
    return chain if have and at == ref["version"] else [ref["snapshot"]]


async def run_node(node: Node, base: str, long_poll: float, interval: float, stop: asyncio.Event,
                   out: list[str]) -> None:
    """Poll, fetch and report until `stop`; a failure waits a second and polls again, as a plugin would."""
    conn = Connection(base)
    if not long_poll:
        await asyncio.sleep(random.random() * interval)  # nodes start at random phases
    while not stop.is_set():
        started = time.monotonic()
        try:
            status, headers, body = await conn.get("manifest.json", node.headers(long_poll), long_poll + 30)
            node.long_poll_ok = WAIT.lower() in headers
            if status == 200:
                bundled: dict[str, bytes] = {}
                if BUNDLE.lower() in headers:  # as the plugin: the manifest, and files it may use
                    parts = parse_bundle(headers[BUNDLE.lower()], body)
                    body, bundled = parts[0][1], dict(parts[1:])
                ref = json.loads(body)["signed"]["lists"][LIST]
                if ref["version"] != node.version:
                    for f in _files_to_fetch(ref, node.version):
                        fstatus, data = 200, bundled.get(f["path"], b"")
                        if len(data) != f["size"]:
                            fstatus, _, data = await conn.get(f["path"], {"Accept-Encoding": "identity"}, 30)
                        if fstatus != 200 or len(data) != f["size"] or \
                                hashlib.sha256(data).hexdigest() != f["sha256"]:
                            raise ValueError(f"{f['path']}: HTTP {fstatus}, {len(data)} bytes, not as named")
                    node.version = ref["version"]
                    out.append(f"F {node.version} {time.time():.6f}")
                node.etag = headers.get("etag")
            elif status != 304:
                raise ValueError(f"manifest: HTTP {status}")
        except (OSError, asyncio.IncompleteReadError, ValueError, KeyError) as exc:
            out.append(f"E {type(exc).__name__}: {str(exc)[:120]}".replace("\n", " "))
            conn.close()
            await asyncio.sleep(1)
            continue
        delay = 0.1 - (time.monotonic() - started) if long_poll and node.long_poll_ok else interval
        if delay > 0:
            await asyncio.sleep(delay)
    conn.close()


async def client_main(args: argparse.Namespace) -> None:
    tokens = json.loads(Path(args.tokens).read_text())
    ids = sorted(tokens)[args.first:args.first + args.count]
    nodes = [Node(i, tokens[i], not args.no_bundle) for i in ids]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    out: list[str] = []
    tasks = [asyncio.create_task(run_node(n, args.url, args.long_poll, args.poll_interval, stop, out))
             for n in nodes]
    while not stop.is_set():  # one write per 10 ms: lines of many nodes together
        await asyncio.sleep(0.01)
        if out:
            lines, out[:] = "\n".join(out) + "\n", []
            sys.stdout.write(lines)
            sys.stdout.flush()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# ----------------------------------------------------------------------------- the bench

def raise_nofile(needed: int) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (children inherit it); the (soft, hard) set."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < needed:
        raise SystemExit(f"bench_fleet: RLIMIT_NOFILE hard limit {hard} is below the {needed} descriptors needed")
    return want, hard


def cpu_s(pids: list[int]) -> float:
    """User and system CPU seconds of these processes so far (/proc/<pid>/stat)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


class Metrics:
    """serve's /metrics, read from loopback."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"

    def read(self) -> str:
        with urllib.request.urlopen(self.url, timeout=10) as resp:
            return resp.read().decode()

    def value(self, text: str, name: str) -> float:
        return sum(float(m) for m in re.findall(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.M))

    def requests(self) -> float:
        return self.value(self.read(), "blocklist_serve_requests_total")

    def waiting(self) -> float:
        return self.value(self.read(), "blocklist_serve_polls_waiting")


class Fleet:
    """The hotline home, its registered nodes, serve, and the node workers of one run."""

    def __init__(self, tmp: Path, nodes: int, entries: int) -> None:
        self.tmp = tmp
        self.home = tmp / "hotline"
        self.env = dict(os.environ, PYTHONPATH=str(ROOT), BLOCKLIST_ACTOR="bench")
        self.hotline("init", "--list", LIST)
        rows = tmp / "rows.txt"
        rows.write_text("".join(f"http://h{i % 997}.bench.test/p/{i}.html\n" for i in range(entries)))
        self.hotline("import", str(rows), "--list", LIST)
        self.hotline("publish")
        self.tokens = tmp / "tokens.json"
        self.tokens.write_text(json.dumps(register_nodes(self.home, nodes)))
        self.nodes = nodes
        self.counter = 0
        self.workers: list[subprocess.Popen] = []
        self.fetched: dict[int, list[float]] = defaultdict(list)
        self.errors = 0
        self.error_kinds: Counter[str] = Counter()
        self.lock = threading.Lock()

    def hotline(self, *args: str) -> str:
        return subprocess.run([sys.executable, "-m", "blocklist", "--home", str(self.home), *args],
                              check=True, capture_output=True, text=True, env=self.env).stdout

    def start_serve(self, port: int, profile: Path | None = None) -> subprocess.Popen:
        prefix = ["-m", "cProfile", "-o", str(profile)] if profile else []
        proc = subprocess.Popen([sys.executable, *prefix, "-m", "blocklist", "--home", str(self.home), "serve",
                                 "--port", str(port)], stdout=subprocess.DEVNULL,
                                stderr=open(self.tmp / f"serve-{port}.log", "w"), env=self.env)
        wait_port(port)
        return proc

    def start_workers(self, url: str, procs: int, long_poll: float, interval: float, bundle: bool = True) -> None:
        self.fetched.clear()
        self.errors = 0
        self.error_kinds.clear()
        share = -(-self.nodes // procs)
        for first in range(0, self.nodes, share):
            proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--client", "--url", url,
                                     "--tokens", str(self.tokens), "--first", str(first), "--count", str(share),
                                     "--long-poll", str(long_poll), "--poll-interval", str(interval),
                                     *([] if bundle else ["--no-bundle"])],
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=self.env)
            threading.Thread(target=self._read, args=(proc,), daemon=True).start()
            self.workers.append(proc)

    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            kind, *rest = line.split()
            with self.lock:
                if kind == "F":
                    self.fetched[int(rest[0])].append(float(rest[1]))
                else:
                    self.errors += 1
                    self.error_kinds[line.strip()[2:]] += 1

    def stop_workers(self) -> None:
        for p in self.workers:
            p.send_signal(signal.SIGTERM)
        for p in self.workers:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.workers = []

    def count(self, version: int) -> int:
        with self.lock:
            return len(self.fetched[version])

    def wait_all(self, version: int, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while self.count(version) < self.nodes:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.count(version)} of {self.nodes} nodes reached version {version} "
                                   f"in {seconds:.0f} s ({self.errors} errors)")
            time.sleep(0.02)

    def publish(self) -> tuple[int, float, float]:
        """Add an entry and publish: the new version, when the new manifest.json appeared, when publish returned.

        publish writes the manifest to a temporary file, syncs it and renames it
        into place (so its mtime is earlier than the moment nodes can see it),
        then returns some 0.2 s later or more (the audit, the interpreter's exit):
        nodes may hold the version by then. The bench watches the manifest's inode
        every millisecond while publish runs.
        """
        self.counter += 1
        self.hotline("add", f"http://new{self.counter}.bench.test/x.html", "--list", LIST)
        path = self.home / "publish" / "manifest.json"
        before = path.stat().st_ino
        appeared = None
        proc = subprocess.Popen([sys.executable, "-m", "blocklist", "--home", str(self.home), "publish"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=self.env)
        while proc.poll() is None:
            if appeared is None and _inode(path) not in (before, None):
                appeared = time.time()
            time.sleep(0.001)
        returned = time.time()
        if proc.returncode != 0:
            raise RuntimeError(f"publish exited {proc.returncode}: "
                               f"{proc.stderr.read().decode(errors='replace') if proc.stderr else ''}")
        return list_version(self.home), appeared or returned, returned


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except OSError:
        return None


def list_version(home: Path) -> int:
    manifest = json.loads((home / "publish" / "manifest.json").read_bytes())
    return int(manifest["signed"]["lists"][LIST]["version"])


def register_nodes(home: Path, n: int) -> dict[str, str]:
    """Tokens for nodes fleet-00000...: the first through `blocklist node add`, the rest in one transaction.

    The rest run FleetStore.add_node, what `node add` runs, without its audit
    line: `node add` run n times takes 80 ms each (two commits), minutes for 2,000.
    """
    from blocklist.home import Home
    from blocklist.nodes import FleetStore
    ids = [f"fleet-{i:05d}" for i in range(n)]
    out = subprocess.run([sys.executable, "-m", "blocklist", "--home", str(home), "--actor", "bench", "node", "add",
                          ids[0]], check=True, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT))).stdout
    tokens = {ids[0]: out.strip()}
    store = FleetStore(Home(home).fleet_path)
    try:
        store.db.execute("BEGIN IMMEDIATE")
        tokens.update({node_id: store.add_node(node_id) for node_id in ids[1:]})
        store.db.execute("COMMIT")
    finally:
        store.close()
    return tokens


def measure(fleet: Fleet, publishes: int, metrics: Metrics, serve: subprocess.Popen,
            parked: bool) -> dict[str, Any]:
    """Publish `publishes` times once every node holds the current version; the figures of the run."""
    version = list_version(fleet.home)
    fleet.wait_all(version, 300)
    times: list[float] = []
    after_return: list[float] = []
    rest: list[float] = []
    requests_before, started = metrics.requests(), time.monotonic()
    workers = [p.pid for p in fleet.workers]
    serve_cpu = workers_cpu = 0.0
    cycle_start = idle = 0.0
    for i in range(publishes):
        if parked:  # every node's poll parked in serve: its memory at rest
            deadline = time.monotonic() + 60
            while metrics.waiting() < fleet.nodes and time.monotonic() < deadline:
                time.sleep(0.05)
            rest.append(rss_mb(serve.pid))
            if i == 0:  # serve's floor with every poll parked and nothing asked (the watcher's ticks)
                idle = cpu_s([serve.pid])
                time.sleep(1.0)
                cycle_start = cpu_s([serve.pid])
                idle = cycle_start - idle
        else:
            time.sleep(1.5)
        cpu = cpu_s([serve.pid]), cpu_s(workers)
        version, appeared, returned = fleet.publish()
        fleet.wait_all(version, 60)
        serve_cpu += cpu_s([serve.pid]) - cpu[0]
        workers_cpu += cpu_s(workers) - cpu[1]
        with fleet.lock:
            times += [t - appeared for t in fleet.fetched[version]]
            after_return += [max(0.0, t - returned) for t in fleet.fetched[version]]  # 0: held before
    elapsed = time.monotonic() - started
    served = metrics.requests() - requests_before
    cycle_cpu = None
    if parked:  # the whole cycle: until every node has polled again (its report verified and written) and parked
        deadline = time.monotonic() + 60
        while metrics.waiting() < fleet.nodes and time.monotonic() < deadline:
            time.sleep(0.05)
        cycle_cpu = cpu_s([serve.pid]) - cycle_start
    row = {"nodes": fleet.nodes, "publishes": publishes, "samples": len(times),
           "p50_s": round(percentile(times, 50), 3), "p99_s": round(percentile(times, 99), 3),
           "max_s": round(max(times), 3), "errors": fleet.errors,
           "error_kinds": dict(fleet.error_kinds.most_common(5)),
           "p99_after_publish_returned_s": round(percentile(after_return, 99), 3),
           "serve_requests": int(served), "serve_requests_per_s": round(served / elapsed, 1),
           "serve_requests_per_publish": round(served / publishes, 1),
           "serve_requests_per_node_per_publish": round(served / publishes / fleet.nodes, 3),
           "serve_bundles": int(metrics.value(metrics.read(), "blocklist_serve_bundles_total")),
           "serve_rss_peak_mb": rss_mb(serve.pid, "VmHWM"),
           # CPU seconds from each publish to the last node holding it: what bounds the figure when a core is busy
           "serve_cpu_s_per_publish": round(serve_cpu / publishes, 3),
           "nodes_cpu_s_per_publish": round(workers_cpu / publishes, 3)}
    if rest:
        row["serve_rss_rest_mb"] = max(rest)
    if cycle_cpu is not None:
        # publish to every poll parked again, the first publish to the last (it includes the bench's
        # reads of /metrics while it waits, and serve's idle watcher): the load-independent cost
        row["serve_cpu_s_per_publish_cycle"] = round(cycle_cpu / publishes, 3)
        row["serve_cpu_s_idle_per_s"] = round(idle, 3)
    return row


def run(args: argparse.Namespace) -> dict[str, Any]:
    soft, hard = raise_nofile(2 * args.nodes + 256)
    result: dict[str, Any] = {"nodes": args.nodes, "entries": args.entries, "publishes": args.publishes,
                              "procs": args.procs, "poll_interval_s": args.poll_interval,
                              "manifest_valid": args.manifest_valid, "rlimit_nofile": soft, "runs": {},
                              "summary": {}}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        t0 = time.monotonic()
        fleet = Fleet(tmp, args.nodes, args.entries)
        result["setup_s"] = round(time.monotonic() - t0, 1)
        for mode in args.runs:
            port = free_port()
            profile = Path(args.profile).with_suffix(f".{mode}.prof") if args.profile else None
            serve = fleet.start_serve(port, profile)  # a fresh serve per run: its own peak RSS
            metrics = Metrics(port)
            nginx = None
            try:
                if mode == "longpoll":
                    fleet.start_workers(f"http://127.0.0.1:{port}/", args.procs, 25, args.poll_interval,
                                        not args.no_bundle)
                    result["runs"][mode] = measure(fleet, args.publishes, metrics, serve, parked=True)
                elif mode in ("tier", "tier-reports"):
                    program = shutil.which("nginx") or "/usr/sbin/nginx"
                    if not os.path.exists(program):
                        result["runs"][mode] = {"skipped": "nginx not installed"}
                        continue
                    edge = free_port()
                    reports = mode == "tier-reports"
                    nginx = start_nginx_cache(program, tmp / f"nginx-{edge}", edge, port, args.manifest_valid,
                                              connections=3 * args.nodes + 256, reports=reports)
                    wait_port(edge)
                    fleet.start_workers(f"http://127.0.0.1:{edge}/", args.procs, 25 if reports else 0,
                                        args.poll_interval, not args.no_bundle)
                    result["runs"][mode] = measure(fleet, args.publishes, metrics, serve, parked=reports)
                    log = (tmp / f"nginx-{edge}" / "error.log").read_text(errors="replace").splitlines()
                    result["runs"][mode]["nginx_error_log"] = log[-5:]
                elif mode == "direct":
                    fleet.start_workers(f"http://127.0.0.1:{port}/", args.procs, 0, args.poll_interval,
                                        not args.no_bundle)
                    result["runs"][mode] = measure(fleet, args.publishes, metrics, serve, parked=False)
            finally:
                fleet.stop_workers()
                if nginx is not None:
                    stop_nginx(nginx)
                serve.send_signal(signal.SIGTERM)
                serve.wait(15)
    summarize(result)
    return result


def summarize(result: dict[str, Any]) -> None:
    n = result["nodes"]
    lp = result["runs"].get("longpoll")
    if lp:
        result["summary"][f"fleet p99, {n} nodes long-polling serve"] = {
            "figure": f"{lp['p99_s']:.3f} s (p50 {lp['p50_s']:.3f}, max {lp['max_s']:.3f})",
            "goal": f"< {GOAL_P99} s", "met": lp["p99_s"] < GOAL_P99}
        peak = max(lp["serve_rss_peak_mb"], lp.get("serve_rss_rest_mb", 0))
        result["summary"][f"serve RSS, {n} nodes parked / peak"] = {
            "figure": f"{lp.get('serve_rss_rest_mb')} / {lp['serve_rss_peak_mb']} MB",
            "goal": f"< {GOAL_RSS_MB} MB", "met": peak < GOAL_RSS_MB}
    for mode, label in (("tier", "polling an nginx cache"), ("direct", "polling serve directly"),
                        ("tier-reports", "long-polling serve through an nginx cache")):
        row = result["runs"].get(mode)
        if row and "p99_s" in row:
            interval = "" if mode == "tier-reports" else f", poll_interval {result['poll_interval_s']:g} s"
            result["summary"][f"fleet p99, {n} nodes {label}{interval}"] = {
                "figure": f"{row['p99_s']:.3f} s (p50 {row['p50_s']:.3f}); serve "
                          f"{row['serve_requests_per_s']:g} req/s", "goal": "", "met": None}
    if lp:
        result["summary"][f"serve requests/s, {n} nodes long-polling"] = {
            "figure": f"{lp['serve_requests_per_s']:g} ({lp['serve_requests_per_publish']:g} per publish)",
            "goal": "", "met": None}
        result["summary"][f"serve per publish, {n} nodes long-polling"] = {
            "figure": f"{lp['serve_requests_per_node_per_publish']:g} requests a node, "
                      f"{lp.get('serve_cpu_s_per_publish_cycle', 0):g} CPU-s a cycle "
                      f"({lp['serve_bundles']} bundles in all)", "goal": "", "met": None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="500 nodes, 3 publishes, runs longpoll and tier")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--nodes", type=int, default=None)
    parser.add_argument("--publishes", type=int, default=None)
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--procs", type=int, default=2, help="node worker processes")
    parser.add_argument("--poll-interval", type=float, default=1.0, help="plain polling's interval (s)")
    parser.add_argument("--manifest-valid", default="1s", help="how long the tier caches manifest.json")
    parser.add_argument("--runs", default=None, help="comma-separated: longpoll,tier,tier-reports,direct")
    parser.add_argument("--profile", default=None, metavar="FILE",
                        help="run serve under cProfile, writing FILE.<run>.prof (python -m pstats FILE...)")
    parser.add_argument("--no-bundle", action="store_true",
                        help="nodes do not ask for X-Blocklist-Bundle (as plugins before it): the comparison")
    # the worker side (run by the bench itself)
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--tokens", help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--long-poll", type=float, default=25, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        asyncio.run(client_main(args))
        return
    args.nodes = args.nodes or (500 if args.quick else 2000)
    args.publishes = args.publishes or (3 if args.quick else 5)
    args.runs = (args.runs or ("longpoll,tier" if args.quick else "longpoll,tier,tier-reports,direct")).split(",")
    result = run(args)
    print(json.dumps(result) if args.json else json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
