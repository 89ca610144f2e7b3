"""The filtering proxy under load while new list versions land: no failed or wrong answer, flat memory.

200 concurrent keep-alive clients (raw asyncio sockets, HTTP/1.1) send GETs
through a real `python -m resolver_plugin proxy` to an origin in its own process,
for 15 s (60 s with --soak), while a publisher thread adds a URL, publishes and
installs the new version in the plugin cache every 2 s (the proxy reloads it
without a restart). Every answer is judged:

- failed: a connection error, a timeout, a status other than 200/451;
- wrong:  a URL listed from the start not blocked (or the origin's content
          served for it); an unlisted URL blocked, or any other body than the
          origin's page for it; a URL added during the run allowed although
          (a) an earlier request already saw it blocked (versions only move
          forward) or (b) it was requested more than STALE_S after its version
          was installed. Before that it may still be allowed: the transition.

Memory: the proxy's RSS (/proc/<pid>/statm) is sampled throughout; the last
quarter's peak must stay within 20 % + 10 MB of the first quarter's peak.
Figures (requests/s, latency, RSS, enforcement delay) are printed; run with -s.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from blocklist.core.digests import Scope, make_entry
from blocklist.home import Home
from blocklist.publish import publish
from blocklist.store import Store
from tests.conftest import Hotline, Plugin
from tests.support.net import free_port
from tests.support.processes import Program, connect_when_listening, launch, launch_proxy
from tests.support.proxy import LOOPBACK_DESTINATIONS

CLIENTS = 200
EVERY_S = 2.0          # a new version lands this often
STALE_S = 5.0          # the proxy reloads every second: a version older than this must be enforced
ORIGIN_MARK = b"origin content at "
ORIGIN = ("import sys\nfrom aiohttp import web\n"
          "async def page(r):\n    return web.Response(body=b'origin content at ' + r.path_qs.encode())\n"
          "app = web.Application()\napp.router.add_route('*', '/{tail:.*}', page)\n"
          "web.run_app(app, host='127.0.0.1', port=int(sys.argv[1]), access_log=None, print=None)\n")


@dataclass
class Tally:
    origin: str
    listed: list[str]
    installed: dict[int, float] = field(default_factory=dict)  # version -> monotonic time installed
    first_block: dict[int, float] = field(default_factory=dict)  # version -> first blocked answer's end
    answers: dict[str, int] = field(default_factory=lambda: {"listed": 0, "unlisted": 0, "new": 0})
    new_allowed: int = 0           # answers for added URLs still allowed in their transition
    failed: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)              # monotonic end of every answer

    def new_url(self, v: int) -> str:
        return f"http://{self.origin}/new/{v}.html"

    def judge(self, kind: str, url: str, v: int, started: float, ended: float, status: int,
              body: bytes) -> None:
        self.answers[kind] += 1
        self.latencies.append(ended - started)
        self.ends.append(ended)
        if status not in (200, 451):
            self.failed.append(f"{kind}: HTTP {status}")
            return
        blocked = status == 451
        if blocked and ORIGIN_MARK in body:
            self.wrong.append(f"{kind}: origin content in a block page")
        elif not blocked and body != ORIGIN_MARK + b"/" + url.split("/", 3)[3].encode():
            self.wrong.append(f"{kind}: 200 with a body that is not the origin's page for it")
        elif kind == "listed" and not blocked:
            self.wrong.append("a URL listed from the start was allowed")
        elif kind == "unlisted" and blocked:
            self.wrong.append("an unlisted URL was blocked")
        elif kind == "new" and blocked:
            self.first_block[v] = min(self.first_block.get(v, ended), ended)
        elif kind == "new":
            self.new_allowed += 1
            if started > self.first_block.get(v, float("inf")):
                self.wrong.append(f"version {v}: allowed after an earlier answer blocked it")
            elif started > self.installed[v] + STALE_S:
                self.wrong.append(f"version {v}: still allowed {started - self.installed[v]:.1f} s after install")


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """(status, body, connection closes) of one HTTP/1.1 response."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        await reader.readuntil(b"\r\n")
    else:
        return status, await reader.read(1 << 20), True
    return status, body, headers.get("connection", "").lower() == "close"


async def client(n: int, port: int, tally: Tally, deadline: float, unlisted: list[str]) -> None:
    rng = random.Random(n)
    reader = writer = None
    while time.monotonic() < deadline:
        roll = rng.random()
        versions = list(tally.installed)
        if roll < 0.2:
            kind, url, v = "listed", rng.choice(tally.listed), 0
        elif roll < 0.35 and versions:
            v = versions[-1] if rng.random() < 0.5 else rng.choice(versions)
            kind, url = "new", tally.new_url(v)
        else:
            kind, url, v = "unlisted", rng.choice(unlisted), 0
        request = f"GET {url} HTTP/1.1\r\nHost: {tally.origin}\r\n\r\n".encode()
        started = time.monotonic()
        try:
            async with asyncio.timeout(10):
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(request)
                status, body, closes = await read_response(reader)  # type: ignore[arg-type]
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            tally.failed.append(f"{kind}: {type(exc).__name__}")
            if writer is not None:
                writer.close()
            reader = writer = None
            continue
        tally.judge(kind, url, v, started, time.monotonic(), status, body)
        if closes:  # a block page ends its connection
            writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` (/proc/<pid>/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def publisher(hotline: Hotline, plugin: Plugin, tally: Tally, stop: threading.Event, errors: list[str]) -> None:
    """Every EVERY_S: add one URL, publish, install the version in the plugin cache (as sync would)."""
    home = Home(hotline.home)
    store = Store(home.store_path)
    try:
        version = 1
        while not stop.wait(EVERY_S):
            version += 1
            entry = make_entry(tally.new_url(version), Scope.PAGE)
            with store.transaction():
                store.add_entries(store.require_list("default"), [(entry, "", "")], "load")
            assert publish(home, store, "load").published == {"default": version}
            plugin.install_published()
            tally.installed[version] = time.monotonic()
    except Exception as exc:  # noqa: BLE001 - reported by the test
        errors.append(repr(exc))
    finally:
        store.close()


def test_proxy_under_load_while_versions_land(hotline: Hotline, plugin: Plugin, tmp_path: Path,
                                             soak: bool) -> None:
    duration = 60.0 if soak else 15.0
    origin_port, port = free_port(), free_port()
    origin = f"127.0.0.1:{origin_port}"
    tally = Tally(origin, [f"http://{origin}/listed/{i}.html" for i in range(50)])
    unlisted = [f"http://{origin}/free/{i}.html?q={i % 7}" for i in range(1000)]
    hotline.run("add", *tally.listed)
    hotline.run("publish")
    plugin.write_config(proxy={"listen": f"127.0.0.1:{port}", "allow_private_destinations": LOOPBACK_DESTINATIONS})
    plugin.install_published()
    stop = threading.Event()
    errors: list[str] = []
    rss: list[tuple[float, int]] = []
    cpu: list[tuple[float, float]] = []  # (seconds into the run, proxy CPU seconds so far)
    origin_proc: Program | None = None
    proxy: Program | None = None
    thread = threading.Thread(target=publisher, args=(hotline, plugin, tally, stop, errors), daemon=True)
    try:
        origin_proc = launch([sys.executable, "-c", ORIGIN, str(origin_port)], tmp_path / "origin.stderr")
        connect_when_listening(origin_port, origin_proc).close()
        proxy = launch_proxy(plugin, tmp_path)
        connect_when_listening(port, proxy).close()

        async def run() -> tuple[float, float]:
            begin = time.monotonic()
            deadline = begin + duration

            async def sample() -> None:
                while time.monotonic() < deadline:
                    rss.append((time.monotonic() - begin, rss_bytes(proxy.pid)))
                    cpu.append((time.monotonic() - begin, cpu_seconds(proxy.pid)))
                    await asyncio.sleep(0.2)

            thread.start()
            await asyncio.gather(sample(), *(client(n, port, tally, deadline, unlisted) for n in range(CLIENTS)))
            return time.monotonic() - begin, deadline

        elapsed, ended = asyncio.run(run())
        stop.set()
        thread.join(30)
        assert proxy.alive()
    finally:
        stop.set()
        for program in (proxy, origin_proc):
            if program is not None:
                program.stop()
    assert not errors, errors
    assert "Traceback" not in proxy.log()
    total = sum(tally.answers.values())
    lat = sorted(tally.latencies)
    quarter = duration / 4
    first = max(r for t, r in rss if t < quarter)
    last = max(r for t, r in rss if t >= 3 * quarter)
    delays = [tally.first_block[v] - tally.installed[v] for v in tally.first_block]
    begin = ended - duration
    counts = [sum(begin + q * quarter <= t < begin + (q + 1) * quarter for t in tally.ends) for q in range(4)]
    rates = [c / quarter for c in counts]

    def cpu_at(t: float) -> float:
        return next((c for s, c in cpu if s >= t), cpu[-1][1])

    # the proxy's own CPU per answer: a figure that does not depend on what else runs on the machine
    cpu_ms = [1000 * (cpu_at((q + 1) * quarter) - cpu_at(q * quarter)) / max(1, counts[q]) for q in range(4)]
    mb = 1 << 20
    print(f"\nload: {CLIENTS} clients, {elapsed:.1f} s, {total} answers ({total / elapsed:.0f} req/s: "
          f"{tally.answers}), {len(tally.failed)} failed, {len(tally.wrong)} wrong; "
          f"latency p50 {lat[len(lat) // 2] * 1000:.1f} ms p99 {lat[int(len(lat) * 0.99)] * 1000:.1f} ms; "
          f"per quarter {'/'.join(f'{r:.0f}' for r in rates)} req/s, proxy CPU "
          f"{'/'.join(f'{c:.2f}' for c in cpu_ms)} ms per answer; "
          f"{len(tally.installed)} versions landed, "
          f"blocked {min(delays, default=0):.2f}-{max(delays, default=0):.2f} s "
          f"after install ({tally.new_allowed} answers in transition); proxy RSS first quarter peak "
          f"{first / mb:.1f} MB, last quarter peak {last / mb:.1f} MB, overall {max(r for _, r in rss) / mb:.1f} MB")
    assert not tally.failed, f"{len(tally.failed)} failed: {tally.failed[:10]}"
    assert not tally.wrong, f"{len(tally.wrong)} wrong: {tally.wrong[:10]}"
    assert len(tally.installed) >= duration / EVERY_S - 2
    settled = [v for v, t in tally.installed.items() if t < ended - STALE_S]
    assert all(v in tally.first_block for v in settled), "a version that landed was never seen enforced"
    assert min(tally.answers.values()) > 0 and total > 20 * duration
    assert last <= first * 1.2 + 10 * mb, f"proxy RSS grew: {first / mb:.1f} MB -> {last / mb:.1f} MB"
