"""`proxy.workers: N`: N proxy processes on one port under a supervising parent (behaviour, not speed).

Each test starts `blocklist-plugin proxy` with 2 workers in front of a local origin. Which
worker holds a connection is read from /proc (the proxy-side socket of the client's
connection, found in /proc/net/tcp, is one of that worker's descriptors), so "every worker"
is checked by name, not by luck: a keep-alive connection stays with its worker.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from resolver_plugin.config import MAX_PROXY_WORKERS, proxy_workers
from tests.conftest import Plugin
from tests.support.net import ServerThread
from tests.support.plugin import env, plugin_argv
from tests.support.procfs import alive, children, socket_inodes
from tests.support.proxy import LOOPBACK_DESTINATIONS, RunningProxy, make_origin, start_proxy
from tests.support.status import publish

WORKERS = 2
CONNECTIONS = 16  # spread over 2 workers by the kernel: all on one has odds of 2 in 65,536


def wait_for(what: str, condition: Callable[[], object], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what}")
        time.sleep(0.05)


def owner(proxy_port: int, client_port: int, workers: set[int]) -> int | None:
    """The worker whose socket is the proxy's end of the connection from `client_port`."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        if int(local.split(":")[1], 16) == proxy_port and int(remote.split(":")[1], 16) == client_port:
            return next((pid for pid in workers if inode in socket_inodes(pid)), None)
    return None


class Connection:
    """A keep-alive client connection to the proxy: one GET at a time, the status of each."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.open = True

    def get(self, url: str) -> int:
        host = url.split("/")[2]
        self.sock.sendall(f"GET {url} HTTP/1.1\r\nHost: {host}\r\nProxy-Connection: keep-alive\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            piece = self.sock.recv(65536)
            assert piece, "the proxy closed the connection without an answer"
            data += piece
        head, _, body = data.partition(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while len(body) < length:
            piece = self.sock.recv(65536)
            assert piece
            body += piece
        if b"connection: close" in head.lower():
            self.close()
        return int(head[9:12])

    def close(self) -> None:
        self.sock.close()
        self.open = False


def spread(proxy: RunningProxy, url: str) -> tuple[list[Connection], dict[int, int]]:
    """CONNECTIONS connections each answered once (200), and how many each worker holds."""
    workers = children(proxy.proc.pid)
    conns = [Connection(proxy.port) for _ in range(CONNECTIONS)]
    assert [c.get(url) for c in conns] == [200] * CONNECTIONS
    held: dict[int, int] = dict.fromkeys(workers, 0)
    for conn in conns:
        pid = owner(proxy.port, conn.sock.getsockname()[1], workers)
        assert pid is not None, "a connection held by no worker"
        held[pid] += 1
    return conns, held


@pytest.mark.parametrize(("value", "message"), [
    (0, "proxy.workers must be a whole number of at least 1, or auto"),
    (-2, "proxy.workers must be a whole number of at least 1, or auto"),
    (True, "proxy.workers must be a whole number of at least 1, or auto"),
    ("two", "proxy.workers must be a whole number of at least 1, or auto"),
    (1.5, "proxy.workers must be a whole number of at least 1, or auto"),
    (MAX_PROXY_WORKERS + 1, f"proxy.workers must be at most {MAX_PROXY_WORKERS}"),
])
def test_workers_setting_is_validated(plugin: Plugin, value: object, message: str) -> None:
    plugin.write_config(proxy={"workers": value})
    with pytest.raises(Exception, match=message) as caught:
        plugin.config()
    assert "plugin.yaml" in str(caught.value)


def test_workers_default_one_and_auto_is_the_cores(plugin: Plugin) -> None:
    plugin.write_config()
    assert plugin.config().proxy.workers == 1 and proxy_workers(plugin.config().proxy) == 1
    plugin.write_config(proxy={"workers": "auto"})
    assert proxy_workers(plugin.config().proxy) == len(os.sched_getaffinity(0))
    plugin.write_config(proxy={"workers": 3})
    assert proxy_workers(plugin.config().proxy) == 3


def test_every_worker_answers_enforces_a_new_version_and_takes_sighup(installed: Plugin, tmp_path: Path) -> None:
    with ServerThread(make_origin()) as origin:
        host = f"127.0.0.1:{origin.port}"
        fine, later = f"http://{host}/fine.html", f"http://{host}/listed-later.html"
        proxy = start_proxy(installed, tmp_path, workers=WORKERS)
        try:
            wait_for("both workers", lambda: len(children(proxy.proc.pid)) == WORKERS)
            conns, held = spread(proxy, fine)
            assert len(held) == WORKERS and all(held.values()), held

            # a new version in the cache (what sync writes): every worker blocks the new URL
            publish(installed, later)
            installed.install_published()
            for conn in conns:
                wait_for("the new version on every connection", lambda c=conn: c.get(later) == 451)
                assert conn.open  # a block of a request without a body keeps its connection

            # SIGHUP reaches every worker: each logs the reload, and every one answers the new way
            base = {"listen": f"127.0.0.1:{proxy.port}", "access_log": str(proxy.access_log),
                    "appeal_url": "https://appeal.example/form?a=1&b=2",
                    "allow_private_destinations": LOOPBACK_DESTINATIONS, "workers": WORKERS}
            installed.write_config(proxy={**base, "block_status": 403})
            os.kill(proxy.proc.pid, signal.SIGHUP)
            wait_for("every worker reloaded", lambda: proxy.stderr.read_text().count(
                "applied, changed: proxy.block_status") == WORKERS)
            conns, held = spread(proxy, fine)
            assert all(held.values()), held
            assert [c.get(later) for c in conns] == [403] * CONNECTIONS
        finally:
            proxy.stop()
    assert proxy.proc.returncode == 0
    assert "Traceback" not in proxy.stderr.read_text()


def test_a_killed_worker_is_restarted_and_sigterm_stops_them_all(installed: Plugin, tmp_path: Path) -> None:
    with ServerThread(make_origin()) as origin:
        fine = f"http://127.0.0.1:{origin.port}/fine.html"
        proxy = start_proxy(installed, tmp_path, workers=WORKERS)
        try:
            wait_for("both workers", lambda: len(children(proxy.proc.pid)) == WORKERS)
            first = children(proxy.proc.pid)
            victim = min(first)
            os.kill(victim, signal.SIGKILL)
            wait_for("a new worker in its place", lambda: len(children(proxy.proc.pid) - first) == 1
                     and len(children(proxy.proc.pid)) == WORKERS)
            conns, held = spread(proxy, fine)
            assert victim not in held and all(held.values()), held
            for conn in conns:
                conn.close()
            workers = children(proxy.proc.pid)
            os.kill(proxy.proc.pid, signal.SIGTERM)
            assert proxy.proc.wait(20) == 0
        finally:
            proxy.stop()
    log = proxy.stderr.read_text()
    assert "killed by SIGKILL" in log and "restarted" in log and "Traceback" not in log
    wait_for("every worker gone", lambda: not any(alive(pid) for pid in workers), 5)


def test_workers_stop_when_their_parent_dies(installed: Plugin, tmp_path: Path) -> None:
    proxy = start_proxy(installed, tmp_path, workers=WORKERS)
    try:
        wait_for("both workers", lambda: len(children(proxy.proc.pid)) == WORKERS)
        workers = children(proxy.proc.pid)
        os.kill(proxy.proc.pid, signal.SIGKILL)
        proxy.proc.wait(10)
        wait_for("the orphaned workers gone", lambda: not any(alive(pid) for pid in workers), 15)
    finally:
        proxy.stop()
    assert "the supervising parent" in proxy.stderr.read_text()


def test_workers_refuse_a_taken_port(installed: Plugin, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        installed.write_config(proxy={"listen": f"127.0.0.1:{port}", "workers": WORKERS})
        result = subprocess.run(plugin_argv(installed, "proxy"), env=env(), capture_output=True, text=True,
                                timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 1, result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
