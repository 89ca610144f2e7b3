"""Faults on the plugin side: kill -9 of the enforcers and of `sync`, a long source outage, a full disk.

Every test runs the real programs as an operator would (`python -m resolver_plugin
-c plugin.yaml proxy | squid-helper | sync`, `blocklist serve`) against 127.0.0.1
and asserts on what a client, Squid or Nagios sees:

- the proxy and the Squid helper, killed with SIGKILL while requests are in
  flight and started again, answer their very first request for a listed URL
  with a block, never with the origin's content (10 runs, 30 with --soak); so
  does a freshly started one whose source is a closed port;
- `sync` killed with SIGKILL while the proxy enforces: no answer of the proxy
  ever fits a half-applied version, and after `sync` restarts a new publish is
  enforced without restarting the proxy;
- the source down for a long time (thresholds of seconds): the list stays
  enforced, `blocklist-plugin status` goes OK -> WARNING -> CRITICAL exactly at
  the configured silence, and everything recovers by itself when it returns;
- the plugin cache on a full tmpfs (root only): a "kind=disk" log line and
  status error, the last good version kept and enforced, recovery once space
  returns; and a daemon whose k-th cache write fails (ENOSPC, transient
  ENOSPC, EIO after the rename), for every k: a freshly started enforcer always
  loads a complete version and the daemon recovers by itself.

Figures (runs, kills, timings) are printed; run with -s to see them.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import random
import select
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from blocklist.home import Home
from blocklist.serve import make_app
from resolver_plugin.cache import Cache, LiveMatcher
from tests.conftest import Hotline, Plugin, mounted_tmpfs, resize_tmpfs
from tests.support.net import ServerThread, free_port
from tests.support.plugin import plugin_cli, state_version
from tests.support.processes import PLUGIN, Program, connect_when_listening, launch, launch_proxy
from tests.support.proxy import LOOPBACK_DESTINATIONS

# The sync daemon's back-off in the tests that restart a source: 0.1 s .. 0.5 s (production: 1 s .. 300 s).
FAST_RETRY = {"retry_first": 0.1, "retry_max": 0.5}
ORIGIN_MARK = b"origin content at "


# ----------------------------------------------------------------------------- processes

def start_helper(plugin: Plugin, tmp_path: Path) -> Program:
    return launch([*PLUGIN, "-c", str(plugin.config_path), "squid-helper"], tmp_path / "helper.stderr",
                  pipes=True)


def start_sync(plugin: Plugin, tmp_path: Path) -> Program:
    return launch([*PLUGIN, "-c", str(plugin.config_path), "sync"], tmp_path / "sync.stderr")


def start_serve(hotline: Hotline, port: int, tmp_path: Path) -> Program:
    program = launch([sys.executable, "-m", "blocklist", "--home", str(hotline.home), "serve",
                      "--port", str(port)], tmp_path / "serve.stderr")
    connect_when_listening(port, program).close()
    return program


def stop_all(*programs: Program | None) -> None:
    for program in programs:
        if program is not None:
            program.stop()


# ----------------------------------------------------------------------------- HTTP through the proxy

def origin_app() -> web.Application:
    async def page(request: web.Request) -> web.Response:
        return web.Response(body=ORIGIN_MARK + request.path_qs.encode())

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", page)
    return app


def exchange(sock: socket.socket, url: str, timeout: float = 10) -> tuple[int, bytes]:
    """One GET of `url` through the proxy on `sock` (Connection: close); (status, body)."""
    host = url.split("/")[2]
    sock.settimeout(timeout)
    try:
        sock.sendall(f"GET {url} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while len(data) < 1 << 20:
            piece = sock.recv(65536)
            if not piece:
                break
            data += piece
    finally:
        sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 "):
        raise ConnectionError(f"no HTTP answer ({len(data)} bytes)")
    return int(head[9:12]), body


def proxy_get(port: int, url: str, timeout: float = 10) -> tuple[int, bytes]:
    return exchange(socket.create_connection(("127.0.0.1", port), timeout=timeout), url, timeout)


def assert_blocked(answer: tuple[int, bytes], what: str) -> None:
    status, body = answer
    assert status == 451 and ORIGIN_MARK not in body, f"{what}: {status} {body[:80]!r}"


def assert_origin(answer: tuple[int, bytes], url: str) -> None:
    status, body = answer
    path = "/" + url.split("/", 3)[3]
    assert (status, body) == (200, ORIGIN_MARK + path.encode()), f"{url}: {status} {body[:80]!r}"


class Traffic:
    """Client threads sending GETs through the proxy; they judge every complete answer.

    Connection errors are expected only around a kill (counted as cut); a
    complete answer must be right: listed -> 451, unlisted -> the origin's page.
    """

    def __init__(self, port: int, listed: list[str], unlisted: list[str], threads: int = 4) -> None:
        self.port, self.listed, self.unlisted = port, listed, unlisted
        self.stop_event = threading.Event()
        self.answers = 0
        self.cut = 0
        self.wrong: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]
        for t in self.threads:
            t.start()

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        deadline = time.monotonic() + 120
        while not self.stop_event.is_set() and time.monotonic() < deadline:
            is_listed = rng.random() < 0.5
            url = rng.choice(self.listed if is_listed else self.unlisted)
            try:
                status, body = proxy_get(self.port, url, timeout=5)
            except OSError:
                self.cut += 1
                time.sleep(0.005)
                continue
            self.answers += 1
            if is_listed and (status != 451 or ORIGIN_MARK in body):
                self.wrong.append(f"listed URL answered {status}")
            elif not is_listed and status != 200:
                self.wrong.append(f"unlisted URL answered {status}")

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(15)


# ----------------------------------------------------------------------------- the Squid helper's pipes

class Lines:
    """Line I/O with a Squid helper process, with a timeout on every read."""

    def __init__(self, program: Program) -> None:
        self.program = program
        self.buffer = b""

    def send(self, line: str) -> None:
        assert self.program.proc.stdin is not None
        self.program.proc.stdin.write(line.encode() + b"\n")

    def read(self, timeout: float = 20) -> bytes:
        stdout = self.program.proc.stdout
        assert stdout is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"no answer from the helper in {timeout} s: {self.program.log()[-2000:]}")
            ready, _, _ = select.select([stdout], [], [], left)
            if ready:
                piece = os.read(stdout.fileno(), 65536)
                if not piece:
                    raise EOFError("the helper closed its stdout")
                self.buffer += piece
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line


# ----------------------------------------------------------------------------- 1. kill -9 of the enforcers

@pytest.fixture
def origin():
    with ServerThread(origin_app()) as server:
        yield f"127.0.0.1:{server.port}"


def test_proxy_killed_mid_traffic_blocks_from_its_first_answer(hotline: Hotline, plugin: Plugin,
                                                               origin: str, tmp_path: Path,
                                                               soak: bool) -> None:
    runs = 30 if soak else 10
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    listed = [f"http://{origin}/listed/{i}.html" for i in range(5)]
    unlisted = [f"http://{origin}/free/{i}.html" for i in range(5)]
    hotline.run("add", *listed)
    hotline.run("publish")
    port = free_port()
    plugin.write_config(proxy={"listen": f"127.0.0.1:{port}", "connect_timeout": 2, "upstream_timeout": 5,
                                      "allow_private_destinations": LOOPBACK_DESTINATIONS})
    plugin.install_published()
    proxy: Program | None = None
    answers = cut = 0
    startup: list[float] = []
    try:
        proxy = launch_proxy(plugin, tmp_path)
        for run in range(runs):
            connect_when_listening(port, proxy).close()
            traffic = Traffic(port, listed, unlisted)
            time.sleep(rng.uniform(0.05, 0.5))
            proxy.kill9()
            traffic.stop()
            assert not traffic.wrong, f"seed {seed} run {run}: {traffic.wrong[:5]}"
            assert traffic.answers > 0, f"seed {seed} run {run}: no traffic before the kill"
            answers, cut = answers + traffic.answers, cut + traffic.cut
            first = listed[0]
            if run % 2:  # a new version landed while the proxy was down: enforced at once too
                first = f"http://{origin}/new/{run}.html"
                hotline.run("add", first)
                hotline.run("publish")
                plugin.install_published()
            t0 = time.monotonic()
            proxy = launch_proxy(plugin, tmp_path)
            sock = connect_when_listening(port, proxy)
            startup.append(time.monotonic() - t0)
            assert_blocked(exchange(sock, first), f"seed {seed} run {run}: first answer after restart")
            assert_blocked(proxy_get(port, listed[-1]), f"seed {seed} run {run}")
            assert_origin(proxy_get(port, unlisted[0]), unlisted[0])
    finally:
        stop_all(proxy)
    assert "Traceback" not in proxy.log()
    print(f"\nproxy kill -9: seed {seed}, {runs} kills mid-traffic, {answers} answers all right, "
          f"{cut} requests cut by the kills; restart to first answer {min(startup):.2f}-{max(startup):.2f} s")


def test_squid_helper_killed_mid_stream_answers_ok_first(hotline: Hotline, plugin: Plugin, tmp_path: Path,
                                                         soak: bool) -> None:
    runs = 30 if soak else 10
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    listed = [f"http://bad.example/listed/{i}.html" for i in range(5)]
    unlisted = [f"http://good.example/{i}.html" for i in range(5)]
    hotline.run("add", *listed)
    hotline.run("publish")
    plugin.write_config()
    plugin.install_published()
    helper: Program | None = None
    answered = 0
    try:
        for run in range(runs):
            helper = start_helper(plugin, tmp_path)
            lines = Lines(helper)
            expected: list[bytes] = []
            stop = threading.Event()
            sent = 0
            feed_rng = random.Random(rng.random())

            def feed(stop: threading.Event = stop, feed_rng: random.Random = feed_rng,
                     expected: list[bytes] = expected, lines: Lines = lines) -> None:
                """Squid's side: a stream of lookups with channel IDs (this run's, bound now)."""
                nonlocal sent
                try:
                    while not stop.is_set() and sent < 200_000:
                        url = feed_rng.choice(listed + unlisted)
                        expected.append(b"OK" if url in listed else b"ERR")
                        lines.send(f"{sent % 100} {url}")
                        sent += 1
                        if sent % 20 == 0:
                            time.sleep(0.001)
                except (BrokenPipeError, OSError):
                    pass

            writer = threading.Thread(target=feed, daemon=True)
            writer.start()
            got, deadline = 0, 0.0
            try:
                while not got or time.monotonic() < deadline:
                    answer = lines.read()
                    channel, _, verdict = answer.partition(b" ")
                    assert int(channel) == got % 100, answer
                    assert verdict.split(b" ", 1)[0] == expected[got], f"seed {seed} run {run}: {answer!r}"
                    got += 1
                    if got == 1:  # the helper is up: kill it at a random moment from now
                        deadline = time.monotonic() + rng.uniform(0.05, 0.5)
            finally:
                helper.kill9()
                stop.set()
                writer.join(10)
                helper.stop()
            assert got > 0
            answered += got
            first = listed[0]
            if run % 2:
                first = f"http://bad.example/new/{run}.html"
                hotline.run("add", first)
                hotline.run("publish")
                plugin.install_published()
            helper = start_helper(plugin, tmp_path)
            lines = Lines(helper)
            lines.send(f"7 {first}")
            lines.send(f"8 {unlisted[0]}")
            assert lines.read().startswith(b"7 OK "), f"seed {seed} run {run}"
            assert lines.read() == b"8 ERR"
            assert helper.end_of_input() == 0
    finally:
        stop_all(helper)
    assert "Traceback" not in (tmp_path / "helper.stderr").read_text()
    print(f"\nsquid-helper kill -9: seed {seed}, {runs} kills mid-stream after {answered} right answers; "
          "every restarted helper answered OK first")


def test_cache_and_an_unreachable_source_start_closed(hotline: Hotline, plugin: Plugin, origin: str,
                                                      tmp_path: Path) -> None:
    """A node that boots while the hotline is unreachable enforces its cache from the first request."""
    listed = f"http://{origin}/listed.html"
    hotline.run("add", listed)
    hotline.run("publish")
    port = free_port()
    plugin.write_config(source=f"http://127.0.0.1:{free_port()}/", long_poll=0, timeouts=FAST_RETRY,
                        proxy={"listen": f"127.0.0.1:{port}",
                               "allow_private_destinations": LOOPBACK_DESTINATIONS})
    plugin.install_published()
    sync = proxy = helper = None
    try:
        sync = start_sync(plugin, tmp_path)
        proxy = launch_proxy(plugin, tmp_path)
        helper = start_helper(plugin, tmp_path)
        lines = Lines(helper)
        lines.send(f"0 {listed}")
        assert lines.read().startswith(b"0 OK ")
        assert_blocked(exchange(connect_when_listening(port, proxy), listed), "first proxy answer")
        deadline = time.monotonic() + 10
        while "kind=network" not in sync.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "kind=network" in sync.log()
        time.sleep(1.0)  # several failed syncs later
        assert_blocked(proxy_get(port, listed), "after failed syncs")
        assert_origin(proxy_get(port, f"http://{origin}/free.html"), f"http://{origin}/free.html")
        lines.send(f"1 {listed}")
        assert lines.read().startswith(b"1 OK ")
        assert plugin_cli(plugin, "check", listed).exit_code == 0
        assert state_version(plugin) == 1
        assert sync.alive() and proxy.alive()
    finally:
        stop_all(helper, proxy, sync)


def test_fail_closed_without_a_cache_blocks_everything(hotline: Hotline, plugin: Plugin, origin: str,
                                                       tmp_path: Path) -> None:
    """fail_closed: true and nothing cached yet (first install, hotline down): nothing gets through."""
    port = free_port()
    plugin.write_config(source=f"http://127.0.0.1:{free_port()}/", fail_closed=True,
                        proxy={"listen": f"127.0.0.1:{port}",
                               "allow_private_destinations": LOOPBACK_DESTINATIONS})
    proxy = helper = None
    try:
        proxy = launch_proxy(plugin, tmp_path)
        helper = start_helper(plugin, tmp_path)
        lines = Lines(helper)
        lines.send(f"0 http://{origin}/anything.html")
        assert lines.read().startswith(b"0 OK ")
        assert_blocked(exchange(connect_when_listening(port, proxy), f"http://{origin}/anything.html"),
                       "fail-closed proxy")
    finally:
        stop_all(helper, proxy)


# ----------------------------------------------------------------------------- 2. kill -9 of sync

@dataclass
class VersionProbe:
    """Judges the proxy's answers against the published history (one sequential client).

    Version v >= 2 adds new-v and removes gone-v, so each answer bounds the
    enforced version: new-v blocked => >= v, allowed => < v; gone-v the other
    way round. Versions only move forward, so an answer whose upper bound lies
    below an earlier answer's lower bound is a version going back or a mix of
    two versions: a half-written list. `base` URLs are listed in every
    version, `free` ones in none.
    """

    port: int
    origin: str
    base: list[str]
    free: list[str]
    published: int = 1
    low: int = 1
    rounds: int = 0
    answers: int = 0
    errors: list[str] = field(default_factory=list)
    stop_event: threading.Event = field(default_factory=threading.Event)

    def new(self, v: int) -> str:
        return f"http://{self.origin}/new/{v}.html"

    def gone(self, v: int) -> str:
        return f"http://{self.origin}/gone/{v}.html"

    def run(self) -> None:
        rng = random.Random(1)
        deadline = time.monotonic() + 600
        while not self.stop_event.is_set() and time.monotonic() < deadline and len(self.errors) < 20:
            probes: list[tuple[str, int, bool]] = []  # url, version, listed when enforced >= version
            for v in range(2, self.published + 1):
                pair = [(self.new(v), v, True), (self.gone(v), v, False)]
                probes += pair if rng.random() < 0.5 else pair[::-1]
            probes += [(u, 0, True) for u in rng.sample(self.base, 2)]
            probes += [(u, 0, False) for u in rng.sample(self.free, 2)]
            for url, v, listed_from in probes:
                try:
                    status, body = proxy_get(self.port, url)
                except OSError as exc:
                    self.errors.append(f"{url}: {type(exc).__name__}")
                    continue
                self.answers += 1
                if status not in (200, 451) or (status == 451) == (ORIGIN_MARK in body):
                    self.errors.append(f"{url}: {status}")
                    continue
                blocked = status == 451
                if v == 0:
                    if blocked != listed_from:
                        self.errors.append(f"{url}: {'blocked' if blocked else 'allowed'}")
                    continue
                # the enforced version lies in [lo, hi]
                lo, hi = (v, 10**9) if blocked == listed_from else (1, v - 1)
                if hi < self.low:
                    self.errors.append(f"{url}: answer fits versions <= {hi}, but {self.low} was seen")
                self.low = max(self.low, lo)
            self.rounds += 1


def test_sync_killed_while_the_proxy_enforces(hotline: Hotline, plugin: Plugin, origin: str,
                                              tmp_path: Path, soak: bool) -> None:
    runs = 30 if soak else 10
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    base = [f"http://{origin}/base/{i}.html" for i in range(8000)]
    gone = [f"http://{origin}/gone/{v}.html" for v in range(2, runs + 4)]
    (tmp_path / "base.txt").write_text("\n".join(base + gone) + "\n")
    hotline.run("import", str(tmp_path / "base.txt"))
    hotline.run("publish")
    serve_port, port = free_port(), free_port()
    plugin.write_config(source=f"http://127.0.0.1:{serve_port}/", long_poll=5,
                        proxy={"listen": f"127.0.0.1:{port}",
                               "allow_private_destinations": LOOPBACK_DESTINATIONS})
    probe = VersionProbe(port, origin, base, [f"http://{origin}/free/{i}.html" for i in range(20)])
    serve = sync = proxy = None
    checker = threading.Thread(target=probe.run, daemon=True)
    version, behind = 1, 0

    def publish_next(batch: int) -> int:
        v = version + 1
        hotline.run("add", probe.new(v), *[f"http://{origin}/batch/{v}/{i}.html" for i in range(batch)])
        hotline.run("remove", probe.gone(v))
        hotline.run("publish")
        return v

    def wait_state(v: int, timeout: float = 20) -> float:
        t0 = time.monotonic()
        while state_version(plugin) != v and time.monotonic() - t0 < timeout:
            time.sleep(0.005)
        assert state_version(plugin) == v, f"seed {seed}: the cache did not reach version {v}"
        return time.monotonic() - t0

    try:
        serve = start_serve(hotline, serve_port, tmp_path)
        assert plugin_cli(plugin, "sync", "--once").exit_code == 0
        proxy = launch_proxy(plugin, tmp_path)
        connect_when_listening(port, proxy).close()
        checker.start()
        sync = start_sync(plugin, tmp_path)
        time.sleep(0.5)  # parked in a long-poll
        # Calibrate: how long after a publish the daemon works on it.
        version = publish_next(2000)
        probe.published = version
        window = wait_state(version) + 0.05
        for run in range(runs):
            version = publish_next(rng.choice((50, 2000)))
            probe.published = version
            time.sleep(rng.uniform(0, window))
            assert sync.alive(), sync.log()[-2000:]
            sync.kill9()
            behind += state_version(plugin) != version
            sync = start_sync(plugin, tmp_path)
            if run % 3 == 2:  # sometimes let the restarted sync catch up before the next kill
                wait_state(version)
        # The last restarted sync catches up, and a new publish lands while the proxy runs on.
        wait_state(version)
        version = publish_next(10)
        probe.published = version
        took = wait_state(version)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 10 and proxy_get(port, probe.new(version))[0] != 451:
            time.sleep(0.05)
        assert_blocked(proxy_get(port, probe.new(version)), "the version published after the kills")
        assert_origin(proxy_get(port, probe.gone(version)), probe.gone(version))
        enforced_after = took + time.monotonic() - t0
        t0 = time.monotonic()
        while probe.low != version and time.monotonic() - t0 < 10:
            time.sleep(0.05)
        probe.stop_event.set()
        checker.join(30)
        assert proxy.alive(), "the proxy was restarted or died"
    finally:
        probe.stop_event.set()
        stop_all(sync, proxy, serve)
    assert not probe.errors, f"seed {seed}: {probe.errors[:10]}"
    assert probe.rounds >= 5 and probe.low == version
    assert "Traceback" not in proxy.log() + sync.log()
    print(f"\nsync kill -9: seed {seed}, {runs} kills (window {window * 1000:.0f} ms; "
          f"{behind} left the cache behind the newest publish), "
          f"{probe.answers} proxy answers in {probe.rounds} probe rounds all fit one forward-moving version; "
          f"after restart a publish was enforced by the same proxy in {enforced_after:.2f} s")


# ----------------------------------------------------------------------------- 3. the source down

WARN_S, CRIT_S = 3, 6


def status_json(plugin: Plugin) -> tuple[int, dict]:
    result = plugin_cli(plugin, "status", "--json")
    return result.exit_code, json.loads(result.output)


def expected_code(silence: float | None) -> int:
    """status.py: no successful sync for warn_lag_seconds -> WARNING, for crit_lag_seconds -> CRITICAL."""
    if silence is None:
        return 1
    return 2 if silence >= CRIT_S else 1 if silence >= WARN_S else 0


def test_source_down_warns_then_goes_critical_and_recovers_by_itself(hotline: Hotline, plugin: Plugin,
                                                                     tmp_path: Path) -> None:
    url_a, url_b = "http://bad.example/a.html", "http://bad.example/b.html"
    hotline.run("add", url_a)
    hotline.run("publish")
    port = free_port()
    # last_success is written when a long-poll returns: long_poll must stay well under warn_lag_seconds.
    plugin.write_config(source=f"http://127.0.0.1:{port}/", long_poll=1, poll_interval=1,
                        timeouts={"connect": 1, "read": 2, **FAST_RETRY},
                        status={"warn_lag_seconds": WARN_S, "crit_lag_seconds": CRIT_S})
    serve = sync = None
    seen: list[tuple[float, int, float]] = []  # (seconds since serve stopped, exit code, silence)
    try:
        serve = start_serve(hotline, port, tmp_path)
        sync = start_sync(plugin, tmp_path)
        deadline = time.monotonic() + 15
        while status_json(plugin)[0] != 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert status_json(plugin)[0] == 0
        time.sleep(1.5)
        serve.stop()
        down = time.monotonic()
        deadline = down + CRIT_S + 10
        while time.monotonic() < deadline:
            code, doc = status_json(plugin)
            silence = doc["lists"][0]["last_success_age"]
            seen.append((time.monotonic() - down, code, silence))
            assert code == expected_code(silence), (code, doc["summary"], silence)
            assert plugin_cli(plugin, "check", url_a).exit_code == 0  # still enforced
            if code == 2 and seen[-1][0] > CRIT_S + 1:
                break
            time.sleep(0.2)
        codes = [c for _, c, _ in seen]
        assert sorted(codes) == codes and set(codes) == {0, 1, 2}, codes  # OK -> WARNING -> CRITICAL
        warn_at = next(t for t, c, _ in seen if c == 1)
        crit_at = next(t for t, c, _ in seen if c == 2)
        # the last success came at most one long-poll (1 s) before the outage
        # (the exact thresholds are checked at every poll above; these bound the polling)
        assert WARN_S - 1.5 <= warn_at <= WARN_S + 1.5 and CRIT_S - 1.5 <= crit_at <= CRIT_S + 1.5, \
            (warn_at, crit_at)
        _, doc = status_json(plugin)
        assert doc["lists"][0]["last_error"].split(":")[0] in ("network", "timeout"), doc
        assert "no successful sync" in doc["summary"]
        assert sync.alive()

        hotline.run("add", url_b)
        hotline.run("publish")
        serve = start_serve(hotline, port, tmp_path)  # back on the same port
        back = time.monotonic()
        while time.monotonic() - back < 15 and not (status_json(plugin)[0] == 0
                                                     and plugin_cli(plugin, "check", url_b).exit_code == 0):
            time.sleep(0.05)
        recovered = time.monotonic() - back
        assert plugin_cli(plugin, "check", url_b).exit_code == 0
        code, doc = status_json(plugin)
        assert code == 0 and doc["lists"][0]["enforced"] == 2, doc
        assert sync.alive(), "sync must recover without a restart"
    finally:
        stop_all(sync, serve)
    assert "Traceback" not in sync.log()
    print(f"\nsource down: warn={WARN_S}s crit={CRIT_S}s; WARNING after {warn_at:.1f} s, CRITICAL after "
          f"{crit_at:.1f} s of outage ({len(seen)} status checks, all matching the thresholds); "
          f"recovered to OK with the new version {recovered:.2f} s after serve returned")


# ----------------------------------------------------------------------------- 4. disk full

@pytest.fixture
def cache_disk(tmp_path: Path):
    """A 16 MiB tmpfs for the plugin cache."""
    with mounted_tmpfs(tmp_path / "cache-disk", "16m") as mnt:
        yield mnt


def used_kib(mnt: Path) -> int:
    st = os.statvfs(mnt)
    return (st.f_blocks - st.f_bfree) * st.f_frsize // 1024


def cached_version(plugin: Plugin) -> int | None:
    try:
        return json.loads((plugin.config().cache_dir / "lists" / "default" / "state.json").read_text())["version"]
    except (OSError, ValueError):
        return None


def cache_consistent(plugin: Plugin) -> int:
    """The version the cache holds; fails if it cannot be loaded or a temp file was left behind."""
    config = plugin.config()
    cache = Cache(config.cache_dir)
    loaded = cache.load_list("default", cache.trusted_keys(config.public_keys), config.limits.max_snapshot_bytes)
    assert loaded is not None, "the last good version vanished"
    leftovers = [p.name for p in config.cache_dir.rglob(".*.tmp-*")]
    assert not leftovers, leftovers
    return loaded.version


def test_full_cache_disk_keeps_the_last_good_version_and_recovers(hotline: Hotline, plugin: Plugin,
                                                                  cache_disk: Path, tmp_path: Path) -> None:
    url_a = "http://bad.example/a.html"
    hotline.run("add", url_a)
    hotline.run("publish")
    with ServerThread(make_app(Home(hotline.home))) as server:
        # plain polling: a failed write is retried after the back-off (a long-poll would wait first)
        plugin.write_config(source=server.url, long_poll=0, timeouts=FAST_RETRY, cache_dir=str(cache_disk / "cache"))
        sync = None
        try:
            sync = start_sync(plugin, tmp_path)
            deadline = time.monotonic() + 15
            while cached_version(plugin) != 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            live = LiveMatcher(plugin.config(), check_interval=0)
            assert live.check(url_a).blocked
            resize_tmpfs(cache_disk, f"{used_kib(cache_disk) + 64}k")  # room for the status, not for v2
            big = tmp_path / "big.txt"
            big.write_text("".join(f"http://h{i % 300}.example/p/{i}.html\n" for i in range(20000)))
            hotline.run("import", str(big))
            hotline.run("publish")
            deadline = time.monotonic() + 15
            while "kind=disk" not in sync.log() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(1.0)  # a few retries on the full disk
            # (a failed delta chain falls back to the snapshot first, which does not fit either)
            line = next(text for text in sync.log().splitlines()
                        if "kind=disk" in text and "keeping the last good" in text)
            assert "No space left on device" in line and "Traceback" not in sync.log(), line
            _, doc = status_json(plugin)
            assert doc["lists"][0]["last_error"].startswith("disk: No space left on device"), doc
            assert doc["errors_total"]["disk"] >= 1
            assert cache_consistent(plugin) == 1
            assert live.check(url_a).blocked and live.matcher.versions() == {"default": 1}
            assert not live.check("http://h1.example/p/1.html").blocked
            assert plugin_cli(plugin, "check", url_a).exit_code == 0  # a fresh process loads v1 too

            resize_tmpfs(cache_disk, "64m")
            t0 = time.monotonic()
            while cached_version(plugin) != 2 and time.monotonic() - t0 < 15:
                time.sleep(0.02)
            recovered = time.monotonic() - t0
            assert cache_consistent(plugin) == 2
            assert live.check("http://h1.example/p/1.html").blocked and live.check(url_a).blocked
            assert status_json(plugin)[0] == 0
            assert sync.alive()
        finally:
            stop_all(sync)
    retries = sync.log().count("kind=disk")
    assert "Traceback" not in sync.log()
    print(f"\ndisk full: {retries} sync attempts refused with kind=disk, v1 enforced throughout; "
          f"v2 in the cache {recovered:.2f} s after the remount")


class FailingWrites:
    """blocklist.core.atomic's file replacement (`_replace`, under write_bytes and write_many alike)
    failing at its `at`-th call of an attempt, in one of three ways.

    full:      that write and every later one raise ENOSPC and write nothing (the disk fills up);
    once:      only that write raises ENOSPC (a transient shortage: the next writes fit);
    after:     that write lands, then raises EIO (the rename done, the directory fsync failed).
    """

    def __init__(self, real, mode: str, at: int) -> None:
        self.real, self.mode, self.at, self.calls, self.failed = real, mode, at, 0, []

    def __call__(self, path: Path, data: bytes, mode: int, durable: bool) -> None:
        self.calls += 1
        if self.calls < self.at or (self.calls > self.at and self.mode != "full"):
            return self.real(path, data, mode, durable)
        self.failed.append(path.name)
        if self.mode == "after":
            self.real(path, data, mode, durable)
            raise OSError(errno.EIO, "Input/output error", str(path))
        raise OSError(errno.ENOSPC, "No space left on device", str(path))


def test_write_failure_at_every_write_of_a_daemon_sync(hotline: Hotline, plugin: Plugin, monkeypatch,
                                                       caplog) -> None:
    """One long-lived Syncer (the daemon) whose k-th cache write fails, for every k and three ways of
    failing: afterwards a freshly started enforcer loads a complete published version (never
    nothing), a running one keeps enforcing, and the same Syncer's next attempt completes."""
    from blocklist.core import atomic
    from resolver_plugin.distribution.fetch import HttpFetcher, http_session
    from resolver_plugin.distribution.sync import Syncer

    url_a = "http://bad.example/a.html"
    hotline.run("add", url_a)
    hotline.run("publish")
    real = atomic._replace
    outcomes: list[str] = []
    with ServerThread(make_app(Home(hotline.home))) as server:
        plugin.write_config(source=server.url, long_poll=0)
        config = plugin.config()
        running = LiveMatcher(config, check_interval=0)

        async def attempts() -> None:
            async with http_session() as session:
                syncer = Syncer(config, HttpFetcher(session, config))
                assert await syncer.sync_once()
                version = 1
                for mode in ("full", "once", "after"):
                    for at in range(1, 20):
                        version += 1
                        hotline.run("add", *[f"http://v{version}.example/{i}" for i in range(1 + 40 * (at % 3))])
                        hotline.run("publish")
                        failing = FailingWrites(real, mode, at)
                        monkeypatch.setattr(atomic, "_replace", failing)
                        ok = await syncer.sync_once()
                        monkeypatch.setattr(atomic, "_replace", real)
                        fresh = LiveMatcher(config)
                        have = fresh.matcher.versions().get("default")
                        where = f"{mode} at write {at} ({', '.join(failing.failed) or 'none'})"
                        assert not fresh.missing and have in (version - 1, version), where
                        assert fresh.check(url_a).blocked and running.check(url_a).blocked, where
                        assert running.matcher.versions()["default"] >= version - 1, where
                        assert cache_consistent(plugin) == have, where
                        assert await syncer.sync_once(), f"no recovery after {where}"
                        assert LiveMatcher(config).matcher.versions() == {"default": version}, where
                        assert running.check(f"http://v{version}.example/0").blocked, where
                        outcomes.append(f"{mode}@{at}:{'ok' if ok else 'failed'}:{have}")
                        if not failing.failed:
                            break  # this attempt made fewer than `at` writes: all covered

        asyncio.run(attempts())
    assert "Traceback" not in caplog.text
    failed = sum(":failed:" in o for o in outcomes)
    print(f"\nwrite failures: {len(outcomes)} daemon syncs with a failing k-th write, {failed} failed cleanly, "
          "all left a loadable cache and recovered: " + " ".join(outcomes))
