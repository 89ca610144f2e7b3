"""Benchmark of the filtering proxy against Squid, the forward proxy ISPs run, on the same load.

    python tools/bench_proxy.py                    # 10k-entry list, 3 rounds of 6 s per run
    python tools/bench_proxy.py --quick --json     # smaller, JSON for tools/bench.py

Processes on 127.0.0.1: a local origin (a raw asyncio server answering every GET with a
1 KiB object and its Content-Length), the proxies under test one after another, and this
load generator (raw asyncio HTTP/1.1 keep-alive clients). The proxies:

- `ours-wN`: `blocklist-plugin proxy` with `proxy.workers: N`, a published list in its
  cache, access log off;
- `squid-wN`: Debian's `squid` (started here with a temp config: plain forward proxy, no
  cache, no access log, `workers N`), blocking the bench's listed host with a `dstdomain`
  ACL, which is what Squid alone does for a block (no list lookup at all).
N is 1 and `--workers` (default: the machine's cores).

For each proxy and each mix (`allowed`: every request forwarded; `blocked`: every request
answered with the block page, 451 for ours and 403 for Squid), `--connections` keep-alive
clients send requests for `--seconds` (distinct URLs, so nothing is served from a cache);
measured: requests/s, the CPU-seconds of the proxy's whole process tree (utime + stime of
the process and every descendant, from /proc/PID/stat, sampled before and after the run),
requests per CPU-second, and the latency p50/p99 of those requests. Runs are interleaved
(round after round, every proxy in each) and the best round is kept, so that a machine
busy with other work bends both sides alike.

What bounds what: requests/s is bounded by the cores the proxy, the origin and the
generator share (all on this machine); requests per CPU-second of the proxy is not (only
the proxy's own CPU time counts), so it is the figure to compare on a small machine. The
generator's own CPU share is reported: near 1.0 (one core busy) it may be the bottleneck
of requests/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pwd
import resource
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tools.bench_squid import _cpu_model, build_plugin  # noqa: E402

PLUGIN_MAIN = "from resolver_plugin.cli import main; main()"
BODY = b"x" * 1024
BLOCKED_HOST = "blocked.bench.test"
URL_VARIANTS = 1000
KEEP = "Proxy-Connection: keep-alive\r\n"  # what browsers send a proxy (both proxies get the same bytes)
CLK_TCK = os.sysconf("SC_CLK_TCK")
SQUID_USER = "proxy"

SQUID_CONF = """\
http_port 127.0.0.1:{port}
workers {workers}
pid_filename {dir}/squid.pid
cache_log {dir}/cache.log
access_log none
cache_store_log none
coredump_dir {dir}
cache deny all
cache_mem 0 MB
visible_hostname bench
shutdown_lifetime 0 seconds
max_filedescriptors 16384
acl listed dstdomain {blocked}
acl bench_clients src 127.0.0.1/32
http_access deny listed
http_access allow bench_clients
http_access deny all
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fast_loop() -> None:
    """uvloop for the origin and the generator when installed (both sides get the same)."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


class _Origin(asyncio.Protocol):
    """Answers every request head with RESPONSE (GETs without bodies: the bench sends nothing else)."""

    RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n"
                % len(BODY)) + BODY

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        count = self.buffer.count(b"\r\n\r\n")
        if count:
            self.buffer = self.buffer[self.buffer.rindex(b"\r\n\r\n") + 4:]
            self.transport.write(self.RESPONSE * count)  # type: ignore[attr-defined]


def serve_origin(port: int) -> None:
    """The origin process: every GET gets BODY with a Content-Length, keep-alive."""
    _fast_loop()

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(_Origin, "127.0.0.1", port, backlog=1024)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def wait_listening(port: int, proc: subprocess.Popen, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            detail = log.read_text(errors="replace")[-2000:] if log is not None and log.exists() else ""
            raise RuntimeError(f"{what} exited with {proc.returncode}\n{detail}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen within 60 s")


def stop(proc: subprocess.Popen, grace: float = 15) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)


# -- CPU time of a process tree, from /proc

def _stat(pid: int) -> tuple[int, tuple[float, float]] | None:
    """(parent pid, (utime, stime) in seconds) of `pid`; None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()  # after "pid (comm) ": state is fields[0]
    return int(fields[1]), (int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK)


def tree_cpu(root: int) -> dict[int, tuple[float, float]]:
    """(user, system) CPU seconds so far of `root` and every descendant, by pid."""
    parents: dict[int, int] = {}
    cpu: dict[int, tuple[float, float]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            got = _stat(int(entry))
            if got is not None:
                parents[int(entry)], cpu[int(entry)] = got
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in tree:
                tree.add(child)
                frontier.append(child)
    return {pid: cpu[pid] for pid in tree if pid in cpu}


def cpu_between(before: dict[int, tuple[float, float]], after: dict[int, tuple[float, float]]
                ) -> tuple[float, float]:
    """(user, system) CPU seconds the tree spent between two samples (a process born in between
    counts whole)."""
    user = sum(u - before.get(pid, (0.0, 0.0))[0] for pid, (u, _) in after.items())
    system = sum(s - before.get(pid, (0.0, 0.0))[1] for pid, (_, s) in after.items())
    return user, system


# -- the load generator

class Client:
    """One keep-alive HTTP/1.1 connection that sends requests and reads Content-Length answers."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def fetch(self, request: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length, close = 0, False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and b"close" in value.lower():
                close = True
        await self.reader.readexactly(length)
        if close:
            self.close()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def requests_for(origin: int, mix: str) -> list[bytes]:
    if mix == "blocked":
        return [f"GET http://{BLOCKED_HOST}/page/{i} HTTP/1.1\r\nHost: {BLOCKED_HOST}\r\n{KEEP}\r\n".encode()
                for i in range(URL_VARIANTS)]
    return [f"GET http://127.0.0.1:{origin}/obj/{i} HTTP/1.1\r\nHost: 127.0.0.1:{origin}\r\n{KEEP}\r\n".encode()
            for i in range(URL_VARIANTS)]


async def load(port: int, requests: list[bytes], connections: int, seconds: float, expect: int
               ) -> tuple[int, float, list[float]]:
    """`connections` clients for `seconds`; (requests answered, wall seconds, latencies)."""
    done = 0
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    clock = time.perf_counter

    async def worker(offset: int) -> None:
        nonlocal done
        client = Client(port)
        i = offset
        while clock() < deadline:
            t0 = clock()
            status = await client.fetch(requests[i % URL_VARIANTS])
            latencies.append(clock() - t0)
            if status != expect:
                raise RuntimeError(f"status {status}, expected {expect}")
            done += 1
            i += 1
        client.close()

    t0 = clock()
    await asyncio.gather(*(worker(n * 7) for n in range(connections)))
    return done, clock() - t0, latencies


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def measure_run(pid: int, port: int, requests: list[bytes], expect: int, args: argparse.Namespace) -> dict[str, Any]:
    """One timed run against the proxy whose process tree starts at `pid`."""
    # warm-up: connections made, code paths hot
    asyncio.run(load(port, requests, args.connections, 0.5, expect))
    gen0 = resource.getrusage(resource.RUSAGE_SELF)
    before = tree_cpu(pid)
    done, wall, latencies = asyncio.run(load(port, requests, args.connections, args.seconds, expect))
    after = tree_cpu(pid)
    gen1 = resource.getrusage(resource.RUSAGE_SELF)
    user, system = cpu_between(before, after)
    cpu = user + system
    generator_cpu = (gen1.ru_utime - gen0.ru_utime) + (gen1.ru_stime - gen0.ru_stime)
    return {"requests": done, "rps": round(done / wall), "cpu_s": round(cpu, 3), "cpu_user_s": round(user, 3),
            "cpu_system_s": round(system, 3),
            "requests_per_cpu_s": round(done / cpu) if cpu > 0 else None,
            "latency_p50_ms": round(pct(latencies, 0.50) * 1000, 3),
            "latency_p99_ms": round(pct(latencies, 0.99) * 1000, 3),
            "proxy_cores_busy": round(cpu / wall, 2), "generator_cores_busy": round(generator_cpu / wall, 2)}


# -- the proxies

class Target:
    """One proxy under test: how to start it, the status its block answers with, its process."""

    def __init__(self, name: str, block_status: int) -> None:
        self.name, self.block_status = name, block_status
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None


class Ours(Target):
    def __init__(self, workers: int, config: Path, env: dict[str, str], folder: Path) -> None:
        super().__init__(f"ours-w{workers}", 451)
        self.workers, self.config, self.env, self.folder = workers, config, env, folder

    def start(self) -> None:
        self.port = free_port()
        config = self.config.parent / f"plugin-w{self.workers}.yaml"
        config.write_text(self.config.read_text() + (
            f"proxy: {{listen: '127.0.0.1:{self.port}', max_connections: 4096, workers: {self.workers}, "
            # the origin is on loopback, which the proxy refuses as a destination unless told
            "allow_private_destinations: ['127.0.0.0/8']}\n"))
        log = self.folder / f"{self.name}.log"
        self.proc = subprocess.Popen([sys.executable, "-c", PLUGIN_MAIN, "-c", str(config), "proxy"],
                                     env=self.env, stdout=subprocess.DEVNULL, stderr=log.open("ab"))
        wait_listening(self.port, self.proc, self.name, log)
        if self.workers > 1:  # every worker listening, not just the first
            deadline = time.monotonic() + 60
            while len(tree_cpu(self.proc.pid)) < self.workers + 1 and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(1.0)

    def errors(self) -> int:
        log = self.folder / f"{self.name}.log"
        return sum("ERROR" in line for line in log.read_text(errors="replace").splitlines()) if log.exists() else 0


class Squid(Target):
    def __init__(self, workers: int, exe: str, folder: Path) -> None:
        super().__init__(f"squid-w{workers}", 403)
        self.workers, self.exe = workers, exe
        self.dir = folder / f"squid-w{workers}"

    def start(self) -> None:
        self.port = free_port()
        self.dir.mkdir(exist_ok=True)
        self.dir.chmod(0o755)
        if os.geteuid() == 0:  # Squid drops to its cache_effective_user, which must write its log here
            user = pwd.getpwnam(SQUID_USER)
            os.chown(self.dir, user.pw_uid, user.pw_gid)
        conf = self.dir / "squid.conf"
        conf.write_text(SQUID_CONF.format(port=self.port, workers=self.workers, dir=self.dir, blocked=BLOCKED_HOST))
        # --foreground: the master process stays our child (and forks its kids: SMP with workers > 1);
        # -n: our own service name, so shared-memory segments never collide with another Squid.
        self.proc = subprocess.Popen([self.exe, "--foreground", "-n", f"blbench{self.port}", "-f", str(conf)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=(self.dir / "squid.out").open("wb"))
        wait_listening(self.port, self.proc, self.name, self.dir / "cache.log")
        time.sleep(1.0)  # SMP: every kid listening

    def version(self) -> str:
        out = subprocess.run([self.exe, "-v"], capture_output=True, text=True, timeout=10).stdout
        return out.splitlines()[0] if out else "?"


def prepare_list(folder: Path, entries: int) -> Path:
    """A published `entries`-row list plus BLOCKED_HOST (domain scope) in a plugin cache; its plugin.yaml."""
    config, _ = build_plugin(folder, entries)
    from blocklist.core.digests import Scope, make_entry
    from blocklist.core.format.keys import key_id
    from blocklist.core.format.manifest import read_manifest
    from blocklist.home import Home
    from blocklist.publish import publish
    from blocklist.store import Store
    from resolver_plugin.cache import Cache, ListState
    home = Home(folder / "home")
    store = Store(home.store_path)
    with store.transaction():
        info = store.get_list("bench")
        store.add_entries(info, [(make_entry(f"http://{BLOCKED_HOST}/", Scope.DOMAIN), "", "")], "bench")
    publish(home, store, "bench")
    store.close()
    key = home.signing_key().public_key()
    data = (home.publish_dir / "manifest.json").read_bytes()
    ref = read_manifest(data, {key_id(key): key}).lists["bench"]
    name = ref.snapshot.path.rsplit("/", 1)[1]
    snap = (home.publish_dir / ref.snapshot.path).read_bytes()
    # with its compiled list file, as sync writes it: the proxy's workers map that one copy
    from blocklist.core.format.artifacts import read_snapshot
    from blocklist.core.matcher import ListFilter
    built = ListFilter.from_snapshot(read_snapshot(snap, {key_id(key): key}))
    Cache(config.parent / "cache").write_list("bench", ListState(ref.version, ref.checksum, name, ()),
                                              {name: snap}, built)
    return config


def run(args: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        dict.fromkeys([str(ROOT), sysconfig.get_paths()["purelib"], os.environ.get("PYTHONPATH", "")]))}
    cores = os.cpu_count() or 1
    workers = sorted({1, args.workers or cores})
    result: dict[str, Any] = {"entries": args.entries, "connections": args.connections, "seconds": args.seconds,
                              "rounds": args.rounds, "object_bytes": len(BODY), "cpu": _cpu_model(),
                              "cores": cores, "python": sys.version.split()[0], "workers": workers}
    squid_exe = shutil.which("squid") or ("/usr/sbin/squid" if Path("/usr/sbin/squid").exists() else None)
    # Squid's user must reach its directory: not pytest's or a 0700 temp base.
    with tempfile.TemporaryDirectory(prefix="bench-proxy-") as tmp:
        folder = Path(tmp)
        folder.chmod(0o755)
        config = prepare_list(folder, args.entries)
        targets: list[Target] = [Ours(n, config, env, folder) for n in workers]
        if squid_exe is None:
            result["squid_skipped"] = "squid is not installed (apt-get install squid)"
        else:
            squids = [Squid(n, squid_exe, folder) for n in workers]
            result["squid_version"] = squids[0].version()
            targets += squids
        origin_port = free_port()
        origin = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve-origin", str(origin_port)],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {t.name: {"allowed": [], "blocked": []} for t in targets}
        try:
            wait_listening(origin_port, origin, "origin")
            mixes = {"allowed": requests_for(origin_port, "allowed"), "blocked": requests_for(origin_port, "blocked")}
            for round_ in range(args.rounds):
                for target in targets:
                    print(f"bench_proxy: round {round_ + 1}/{args.rounds}: {target.name}", file=sys.stderr)
                    target.start()
                    try:
                        assert target.proc is not None
                        for mix, requests in mixes.items():
                            expect = 200 if mix == "allowed" else target.block_status
                            runs[target.name][mix].append(
                                measure_run(target.proc.pid, target.port, requests, expect, args))
                    finally:
                        target.stop()
        finally:
            for target in targets:
                target.stop()
            stop(origin)
        result["proxy_error_lines"] = sum(t.errors() for t in targets if isinstance(t, Ours))
    result["results"] = {name: {mix: best(rounds) for mix, rounds in mixes_.items()} for name, mixes_ in runs.items()}
    result["summary"] = summary(result, workers)
    return result


def best(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the most requests per CPU-second, and the best requests/s of all rounds."""
    top = max(rounds, key=lambda r: r["requests_per_cpu_s"] or 0)
    return {**top, "rps": max(r["rps"] for r in rounds), "rounds_rps": [r["rps"] for r in rounds],
            "rounds_requests_per_cpu_s": [r["requests_per_cpu_s"] for r in rounds]}


def _rate(figures: dict[str, Any]) -> str:
    return (f"{figures['rps']:,} /s, {figures['requests_per_cpu_s']:,} per CPU-s, "
            f"{figures['latency_p50_ms']}/{figures['latency_p99_ms']} ms")


def summary(result: dict[str, Any], workers: list[int]) -> dict[str, Any]:
    res = result["results"]
    out: dict[str, Any] = {}
    for n in workers:
        ours, squid = res.get(f"ours-w{n}"), res.get(f"squid-w{n}")
        for mix in ("allowed", "blocked"):
            if ours is None:
                continue
            o = ours[mix]
            out[f"proxy {mix}, {n} worker(s): requests/s, per CPU-s, p50/p99"] = {"figure": _rate(o)}
            if squid is None:
                continue
            s = squid[mix]
            out[f"Squid {mix}, {n} worker(s): requests/s, per CPU-s, p50/p99"] = {"figure": _rate(s)}
            per_cpu = round(o["requests_per_cpu_s"] / s["requests_per_cpu_s"], 2)
            rps = round(o["rps"] / s["rps"], 2)
            result.setdefault("ratios", {})[f"{mix}_w{n}"] = {"per_cpu_s": per_cpu, "rps": rps}
            if n == 1:
                out[f"proxy / Squid requests per CPU-s, {mix}"] = {"figure": f"{per_cpu}x", "goal": ">= 1x",
                                                                   "met": per_cpu >= 1.0}
            if n == max(workers):
                out[f"proxy / Squid requests/s, {mix}, {n} worker(s) each"] = {
                    "figure": f"{rps}x", "goal": ">= 1x", "met": rps >= 1.0}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=6.0, help="duration of each run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best is kept")
    parser.add_argument("--workers", type=int, default=0,
                        help="the second worker count for both proxies besides 1 (default: the cores)")
    parser.add_argument("--quick", action="store_true", help="1k entries, 2 rounds of 2 s runs")
    parser.add_argument("--json", action="store_true", help="print one JSON document (for tools/bench.py)")
    parser.add_argument("--serve-origin", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_origin:
        serve_origin(args.serve_origin)
        return
    if args.quick:
        args.entries, args.seconds, args.rounds = 1_000, 2.0, 2
    _fast_loop()
    result = run(args)
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        if key not in ("summary", "results"):
            print(f"{key:24} {value}")
    for name, mixes in result["results"].items():
        for mix, r in mixes.items():
            print(f"{name:10} {mix:8} {r['rps']:>7,} req/s  {r['requests_per_cpu_s'] or 0:>7,} per CPU-s  "
                  f"p50 {r['latency_p50_ms']:.3f} ms  p99 {r['latency_p99_ms']:.3f} ms  "
                  f"user/sys {r['cpu_user_s']}/{r['cpu_system_s']} s  "
                  f"proxy cores {r['proxy_cores_busy']}  generator cores {r['generator_cores_busy']}")


if __name__ == "__main__":
    main()
