"""SIGHUP (`systemctl reload`): the sync daemon and the proxy re-read plugin.yaml without dropping enforcement.

The units' `ExecReload=/bin/kill -HUP $MAINPID` relies on this. A good new
plugin.yaml takes effect in the running process (the sync daemon even leaves
a long-poll for it); a bad one, or one that changes what only a restart can
change, is logged and the running configuration stays. Through all of it
the cached lists stay in force: the proxy answers a listed URL with a block
on every request, before, during and after each reload.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from blocklist.fleet import FleetStore
from blocklist.home import Home
from blocklist.serve import make_app
from resolver_plugin.cache import LiveMatcher
from resolver_plugin.config import changed_settings
from resolver_plugin.operations.reload import reread
from tests.conftest import Plugin
from tests.support.net import ServerThread
from tests.support.plugin import state_version
from tests.support.processes import PLUGIN, Program, launch
from tests.support.proxy import LOOPBACK_DESTINATIONS, RunningProxy, make_origin, start_proxy
from tests.support.status import publish

FAST = {"connect": 2, "retry_first": 0.1, "retry_max": 0.5}


def wait_for(what: str, condition: Callable[[], object], timeout: float = 15) -> float:
    """Poll `condition` every 50 ms until it holds; the seconds it took (fails past `timeout`)."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            pytest.fail(f"not within {timeout} s: {what}")
        time.sleep(0.05)
    return time.monotonic() - started


def hangup(program: Program | RunningProxy) -> None:
    os.kill(program.proc.pid, signal.SIGHUP)


def node_of(plugin: Plugin) -> str | None:
    try:
        return json.loads((plugin.dir / "cache" / "status.json").read_text())["node_id"]
    except (OSError, ValueError, KeyError):
        return None


def other_key_file(folder: Path) -> Path:
    """The public key of a hotline this node never trusted, as `blocklist key export` writes one."""
    raw = Ed25519PrivateKey.generate().public_key().public_bytes(serialization.Encoding.PEM,
                                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    path = folder / "other.pub"
    path.write_bytes(raw)
    return path


# ----------------------------------------------------------------------------- without processes

def test_changed_settings_name_what_differs(installed: Plugin) -> None:
    before = installed.config()
    assert changed_settings(before, installed.config()) == []
    installed.write_config(source="http://127.0.0.1:9/", node_id="renamed", proxy={"block_status": 403},
                           lists=["default", "other"])
    # The test plugin registers each node id with the hotline and keeps its token in <node id>.token.
    # A proxy section also makes `selftest` test the proxy by default (selftest.proxy).
    assert changed_settings(before, installed.config()) == ["lists", "node_id", "proxy.block_status",
                                                             "selftest.proxy", "node_token_file"]
    other_key_file(installed.dir)
    installed.write_config(source="http://127.0.0.1:9/", public_key_file="other.pub")
    assert changed_settings(before, installed.config()) == ["public_key"]


def test_reread_applies_a_good_file_and_keeps_the_running_one_otherwise(
        installed: Plugin, caplog: pytest.LogCaptureFixture) -> None:
    running = installed.config()
    caplog.set_level(logging.INFO, logger="blocklist.plugin.reload")
    assert reread(running, ("cache_dir",)) is None
    assert "unchanged" in caplog.text

    installed.config_path.write_text("lists: [default\n")
    assert reread(running, ("cache_dir",)) is None
    assert "reload refused" in caplog.text and "not valid YAML" in caplog.text

    installed.write_config(source="http://127.0.0.1:9/", cache_dir="elsewhere", node_id="renamed")
    assert reread(running, ("cache_dir",)) is None
    assert "cache_dir cannot change without a restart" in caplog.text

    def refuse(config: object) -> None:
        from blocklist.core.errors import ConfigError
        raise ConfigError("proxy.block_page: unreadable")

    installed.write_config(source="http://127.0.0.1:9/", node_id="renamed")
    assert reread(running, ("cache_dir",), check=refuse) is None
    assert "proxy.block_page: unreadable; keeping the running configuration" in caplog.text
    new = reread(running, ("cache_dir",))
    assert new is not None and new.node_id == "renamed"
    assert "applied, changed: node_id" in caplog.text


def test_a_reconfigured_matcher_never_drops_a_list_it_enforces(installed: Plugin) -> None:
    live = LiveMatcher(installed.config())
    assert live.check("http://bad.example/a.html").blocked
    other_key_file(installed.dir)
    installed.write_config(source="http://127.0.0.1:9/", public_key_file="other.pub", lists=["default", "other"],
                           fail_closed=True)
    live.reconfigure(installed.config())
    # The cache is not signed by the new key: "default" keeps the version in force; "other" is not cached.
    assert live.check("http://bad.example/a.html").blocked and not live.check("http://good.example/").blocked
    assert live.missing == ["other"] and live.config.fail_closed
    installed.write_config(source="http://127.0.0.1:9/", lists=["other"])
    live.reconfigure(installed.config())
    assert not live.matcher and live.missing == ["other"]  # a list taken out of plugin.yaml is no longer enforced


# ----------------------------------------------------------------------------- the sync daemon

def test_sync_daemon_reloads_on_sighup_and_keeps_its_config_when_the_new_one_is_bad(
        installed: Plugin, tmp_path: Path) -> None:
    home = Home(installed.hotline.home)
    with ServerThread(make_app(home, watch_interval=0.05)) as source:
        settings = dict(source=source.url, long_poll=20, timeouts=FAST)
        installed.write_config(node_id="node-a", **settings)
        daemon = launch([*PLUGIN, "-c", str(installed.config_path), "sync"], tmp_path / "sync.stderr")
        try:
            wait_for("the daemon's first sync", lambda: node_of(installed) == "node-a")
            time.sleep(0.3)  # well into its 20 s long-poll

            installed.write_config(node_id="node-b", **settings)
            hangup(daemon)
            took = wait_for("the new node_id in status.json", lambda: node_of(installed) == "node-b")
            assert took < 10, "the reload waited for the long-poll to end"
            assert "applied, changed: node_id" in daemon.log()
            wait_for("a poll under the new name", lambda: any(
                n.node_id == "node-b" for n in FleetStore(home.fleet_path).nodes()))

            installed.config_path.write_text("lists: [default\n")
            hangup(daemon)
            wait_for("the refusal logged", lambda: "not valid YAML" in daemon.log())
            publish(installed, "http://bad.example/c.html")  # the running configuration still syncs
            wait_for("version 2 synced", lambda: state_version(installed) == 2)

            installed.write_config(node_id="node-b", cache_dir="elsewhere", **settings)
            hangup(daemon)
            wait_for("the refusal logged", lambda: "cache_dir cannot change without a restart" in daemon.log())
            assert daemon.alive() and node_of(installed) == "node-b"
            assert not (installed.dir / "elsewhere").exists()
        finally:
            code = daemon.stop()
    assert code == 0, daemon.log()[-2000:]
    assert "Traceback" not in daemon.log()


# ----------------------------------------------------------------------------- the proxy

def get(port: int, url: str) -> int:
    """The status of one GET of `url` through the proxy (Connection: close)."""
    host = url.split("/")[2]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {url} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while b"\r\n" not in data:
            piece = sock.recv(4096)
            if not piece:
                break
            data += piece
    return int(data[9:12])


class Listed:
    """A client asking for a listed URL through the proxy over and over; every status it got."""

    def __init__(self, port: int, url: str) -> None:
        self.port, self.url, self.statuses = port, url, []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self.statuses.append(get(self.port, self.url))
            except OSError as exc:
                self.statuses.append(type(exc).__name__)
            time.sleep(0.01)

    def __enter__(self) -> Listed:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(15)


def test_proxy_reloads_on_sighup_without_dropping_enforcement(installed: Plugin, tmp_path: Path) -> None:
    with ServerThread(make_origin()) as origin:
        host = f"127.0.0.1:{origin.port}"
        publish(installed, f"http://{host}/blocked.html")
        installed.install_published()
        proxy = start_proxy(installed, tmp_path)
        listed, allowed = f"http://{host}/blocked.html", f"http://{host}/fine.html"
        base = {"listen": f"127.0.0.1:{proxy.port}", "access_log": str(proxy.access_log),
                "allow_private_destinations": LOOPBACK_DESTINATIONS}  # restart-only: kept as started
        try:
            with Listed(proxy.port, listed) as client:
                wait_for("a first answer", lambda: client.statuses)
                installed.write_config(proxy={**base, "block_status": 403})
                hangup(proxy)
                wait_for("the new block status", lambda: get(proxy.port, listed) == 403)

                installed.write_config(proxy={**base, "block_status": 404, "block_page": "missing.html"})
                hangup(proxy)
                wait_for("the refusal logged", lambda: "missing.html" in proxy.stderr.read_text())
                assert get(proxy.port, listed) == 403 and get(proxy.port, allowed) == 200

                installed.write_config(proxy={**base, "block_status": 404, "listen": "127.0.0.1:1"})
                hangup(proxy)
                wait_for("the refusal logged", lambda: "proxy.listen cannot change without a restart"
                         in proxy.stderr.read_text())
                assert get(proxy.port, listed) == 403

                # logrotate: move the access log away, SIGHUP, and the proxy writes a new one
                installed.write_config(proxy={**base, "block_status": 403})
                rotated = proxy.access_log.rename(tmp_path / "access.log.1")
                hangup(proxy)
                wait_for("a new access log", lambda: get(proxy.port, allowed) == 200 and proxy.access_log.exists()
                         and "allowed" in proxy.access_log.read_text())
                assert rotated.read_text()
            assert proxy.proc.poll() is None
        finally:
            proxy.stop()
    answers = client.statuses
    assert len(answers) >= 10 and set(answers) <= {451, 403}, answers  # blocked on every request, always
    log = proxy.stderr.read_text()
    assert "applied, changed: proxy.block_status" in log and "Traceback" not in log
