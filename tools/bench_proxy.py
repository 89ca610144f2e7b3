"""Benchmark of the filtering proxy: added latency and requests/s against going direct to the origin.

    python tools/bench_proxy.py                    # 10k-entry list, 3,000 sequential requests, 8 s at 100 connections
    python tools/bench_proxy.py --quick --json     # smaller, JSON for tools/bench.py

Three processes on 127.0.0.1: a local origin (aiohttp, a 1 KiB object with
Content-Length), `blocklist-plugin proxy` with a published list in its cache
(access log off), and this load generator (raw asyncio HTTP/1.1 keep-alive
clients, so the generator costs little next to what it measures).

- latency: one keep-alive connection, requests one after another; p50/p99
  direct and through the proxy, and the difference (what the proxy adds);
- throughput: 100 keep-alive connections for `--seconds`, requests/s direct
  and through the proxy; also blocked requests/s (a block closes the
  connection, so each one opens a new connection).
All three processes share the machine's cores: on a small machine the
figures are a lower bound of what the proxy does on its own cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_origin(port: int) -> None:
    """The origin process: every GET gets BODY with a Content-Length."""
    from aiohttp import web

    async def obj(request: web.Request) -> web.Response:
        return web.Response(body=BODY, content_type="application/octet-stream")

    app = web.Application()
    app.router.add_get("/{tail:.*}", obj)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def wait_listening(port: int, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen within 30 s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)


class Client:
    """One keep-alive HTTP/1.1 connection that sends a fixed request and reads Content-Length bodies."""

    def __init__(self, port: int, request: bytes) -> None:
        self.port, self.request = port, request
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def fetch(self) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        self.writer.write(self.request)
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


async def latencies(port: int, request: bytes, count: int, warmup: int) -> list[float]:
    client = Client(port, request)
    for _ in range(warmup):
        await client.fetch()
    out = []
    for _ in range(count):
        t0 = time.perf_counter()
        status = await client.fetch()
        out.append(time.perf_counter() - t0)
        if status != 200:
            raise RuntimeError(f"status {status}")
    client.close()
    return out


async def throughput(port: int, request: bytes, connections: int, seconds: float, expect: int) -> float:
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        client = Client(port, request)
        while time.perf_counter() < deadline:
            status = await client.fetch()
            if status != expect:
                raise RuntimeError(f"status {status}, expected {expect}")
            done += 1
        client.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    return done / (time.perf_counter() - t0)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(origin: int, proxy: int, args: argparse.Namespace) -> dict[str, Any]:
    direct_req = f"GET /obj HTTP/1.1\r\nHost: 127.0.0.1:{origin}\r\n\r\n".encode()
    proxy_req = f"GET http://127.0.0.1:{origin}/obj HTTP/1.1\r\nHost: 127.0.0.1:{origin}\r\n\r\n".encode()
    blocked_req = b"GET http://blocked.bench.test/page HTTP/1.1\r\nHost: blocked.bench.test\r\n\r\n"
    out: dict[str, Any] = {}
    direct = await latencies(origin, direct_req, args.requests, 200)
    via = await latencies(proxy, proxy_req, args.requests, 200)
    for name, values in (("direct", direct), ("proxy", via)):
        out[f"{name}_latency_p50_ms"] = round(pct(values, 0.50) * 1000, 3)
        out[f"{name}_latency_p99_ms"] = round(pct(values, 0.99) * 1000, 3)
        out[f"{name}_latency_mean_ms"] = round(statistics.fmean(values) * 1000, 3)
    out["added_latency_p50_ms"] = round(out["proxy_latency_p50_ms"] - out["direct_latency_p50_ms"], 3)
    out["added_latency_p99_ms"] = round(out["proxy_latency_p99_ms"] - out["direct_latency_p99_ms"], 3)
    out["direct_rps_100"] = round(await throughput(origin, direct_req, args.connections, args.seconds, 200))
    out["proxy_rps_100"] = round(await throughput(proxy, proxy_req, args.connections, args.seconds, 200))
    out["proxy_blocked_rps_100"] = round(await throughput(proxy, blocked_req, args.connections, args.seconds / 2,
                                                          451))
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        dict.fromkeys([str(ROOT), sysconfig.get_paths()["purelib"], os.environ.get("PYTHONPATH", "")]))}
    result: dict[str, Any] = {"entries": args.entries, "connections": args.connections, "cpu": _cpu_model(),
                              "cores": os.cpu_count(), "python": sys.version.split()[0]}
    with tempfile.TemporaryDirectory(prefix="bench-proxy-") as tmp:
        folder = Path(tmp)
        config, _ = build_plugin(folder, args.entries)
        # One more list entry the blocked measurement asks for (domain scope: no DNS needed).
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
            store.add_entries(info, [(make_entry("http://blocked.bench.test/", Scope.DOMAIN), "", "")], "bench")
        publish(home, store, "bench")
        store.close()
        key = home.signing_key().public_key()
        data = (home.publish_dir / "manifest.json").read_bytes()
        ref = read_manifest(data, {key_id(key): key}).lists["bench"]
        name = ref.snapshot.path.rsplit("/", 1)[1]
        Cache(config.parent / "cache").write_list("bench", ListState(ref.version, ref.checksum, name, ()),
                                                  {name: (home.publish_dir / ref.snapshot.path).read_bytes()})
        origin_port, proxy_port = free_port(), free_port()
        with config.open("a") as f:
            # the origin is on loopback, which the proxy refuses as a destination unless told
            f.write(f"proxy: {{listen: '127.0.0.1:{proxy_port}', max_connections: 4096, "
                    "allow_private_destinations: ['127.0.0.0/8']}\n")
        origin = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve-origin", str(origin_port)],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        proxy = subprocess.Popen([sys.executable, "-c", PLUGIN_MAIN, "-c", str(config), "proxy"], env=env,
                                 stdout=subprocess.DEVNULL, stderr=(folder / "proxy.log").open("wb"))
        try:
            wait_listening(origin_port, origin, "origin")
            wait_listening(proxy_port, proxy, "proxy")
            result.update(asyncio.run(measure(origin_port, proxy_port, args)))
        finally:
            stop(proxy)
            stop(origin)
        errors = [line for line in (folder / "proxy.log").read_text().splitlines() if "ERROR" in line]
        result["proxy_error_lines"] = len(errors)
    result["summary"] = {
        "proxy added latency p50 (allowed, keep-alive)": {"figure": f"{result['added_latency_p50_ms']} ms"},
        "proxy added latency p99 (allowed, keep-alive)": {"figure": f"{result['added_latency_p99_ms']} ms"},
        f"proxy requests/s at {args.connections} connections": {
            "figure": f"{result['proxy_rps_100']:,} (direct {result['direct_rps_100']:,})"},
        f"proxy blocked requests/s at {args.connections} connections": {
            "figure": f"{result['proxy_blocked_rps_100']:,}"},
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=3_000, help="sequential requests for the latency figures")
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=8.0, help="duration of each throughput run")
    parser.add_argument("--quick", action="store_true", help="1k entries, 1,000 requests, 3 s runs")
    parser.add_argument("--json", action="store_true", help="print one JSON document (for tools/bench.py)")
    parser.add_argument("--serve-origin", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_origin:
        serve_origin(args.serve_origin)
        return
    if args.quick:
        args.entries, args.requests, args.seconds = 1_000, 1_000, 3.0
    result = run(args)
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        if key != "summary":
            print(f"{key:30} {value}")


if __name__ == "__main__":
    main()
