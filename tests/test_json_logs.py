"""JSON logs for a SIEM: one object per line, stable field names and types, and never a listed URL.

The end-to-end test runs every logging program as an operator does (subprocesses),
with plugin.yaml's `logging: {format: json}` and `blocklist --log-format json serve`:
serve, the sync daemon (a publish, a key rotation, a SIGHUP reload, the source going
away), the proxy with its access log (blocked, allowed and refused requests), the Squid
helper and a failing `sync --once`. Every line each one wrote is parsed with
json.loads and checked against blocklist.core.logs.FIELDS; the events an operator
alerts on must all be there; then the privacy scan of tests/test_privacy_scan.py runs
over every byte, every JSON field included. `--log-format text` wins over plugin.yaml.
"""

from __future__ import annotations

import ast
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
import yaml

from blocklist.core.errors import ConfigError
from blocklist.core.logs import FIELDS, REQUIRED, JsonFormatter, LogFormat, LogLevel, default_event, setup_logging
from blocklist.core.protocol import NODE, PROOF
from blocklist.home import Home
from resolver_plugin.config import load_config
from tests.conftest import Hotline, Plugin
from tests.support.net import free_port, wait_for_port
from tests.support.plugin import state_version
from tests.support.proxy import raw_exchange, start_proxy
from tests.support.squid import Helper
from tests.test_privacy_scan import SECRETS, scan

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_MAIN = "from resolver_plugin.cli import main; main()"
TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
SNAKE = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)+")
TEXT_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")
EXPECTED = {"serve_started", "fleet_poll_refused", "sync_started", "sync_updated", "key_rotation_followed",
            "reload_applied", "sync_failed", "sync_retry", "sync_stopped", "fleet_report_recorded",
            "proxy_started", "proxy_access", "proxy_stopping", "lists_enforced", "lists_missing",
            "squid_helper_started", "admin_started"}


def wait_for(what: str, condition: Callable[[], object], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what}")
        time.sleep(0.05)


def check_line(line: str) -> dict:
    """One JSON log line, checked against the schema; the parsed object."""
    record = json.loads(line)
    assert isinstance(record, dict) and all(name in record for name in REQUIRED), line
    assert set(record) <= set(FIELDS), set(record) - set(FIELDS)
    for name, value in record.items():
        assert isinstance(value, FIELDS[name]) and not isinstance(value, bool), (name, value)
    assert TS.fullmatch(record["ts"]) and SNAKE.fullmatch(record["event"]), record
    assert record["level"] in ("debug", "info", "warning", "error", "critical")
    return record


# ----------------------------------------------------------------------------- without processes

def test_json_formatter_writes_the_schema_and_only_it() -> None:
    stream = io.StringIO()
    logger = logging.getLogger("blocklist.plugin")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    try:
        logging.getLogger("blocklist.plugin.sync").warning("sync failed list=%s\nsecond line", "iwf",
                       extra={"event": "sync_failed", "list": "iwf", "version": 7, "have": None,
                              "lists": ("a", "b"), "undocumented": "dropped", "duration_ms": 1.5})
        logging.getLogger("blocklist.plugin.metrics").error("no event named")
    finally:
        logger.removeHandler(handler)
    first, second = [check_line(line) for line in stream.getvalue().splitlines()]
    assert first["event"] == "sync_failed" and first["msg"] == "sync failed list=iwf\nsecond line"
    assert first["list"] == "iwf" and first["version"] == 7 and first["lists"] == ["a", "b"]
    assert "have" not in first and "undocumented" not in first and first["level"] == "warning"
    assert second["event"] == "metrics_error" and second["logger"] == "blocklist.plugin.metrics"
    assert default_event("blocklist.serve", "INFO") == "serve_info" and default_event("aiohttp.access", "x") \
        == "aiohttp_access_x"


def test_setup_logging_replaces_its_own_handler_and_leaves_a_foreign_one() -> None:
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    root.handlers.clear()
    try:
        first, second = io.StringIO(), io.StringIO()
        setup_logging(LogFormat.JSON, LogLevel.WARNING, first)
        setup_logging(LogFormat.TEXT, LogLevel.DEBUG, second)
        logging.getLogger("blocklist.x").debug("hello")
        assert first.getvalue() == "" and TEXT_LINE.match(second.getvalue()) and len(root.handlers) == 1
        root.handlers.clear()
        foreign = logging.NullHandler()
        root.addHandler(foreign)
        setup_logging(LogFormat.JSON, LogLevel.INFO, first)
        assert root.handlers == [foreign]
    finally:
        root.handlers[:] = saved
        root.setLevel(level)


def test_logging_section_is_validated(plugin: Plugin) -> None:
    plugin.write_config()
    assert load_config(plugin.config_path).logging.format is LogFormat.TEXT
    plugin.write_config(logging={"format": "json", "level": "warning"})
    config = load_config(plugin.config_path)
    assert config.logging.format is LogFormat.JSON and config.logging.level is LogLevel.WARNING
    for bad, message in (({"format": "xml"}, "logging.format must be text or json"),
                         ({"level": "loud"}, "logging.level must be one of debug, info, warning, error"),
                         ({"colour": True}, "unknown key logging.colour"), ("json", "logging must be a mapping")):
        plugin.write_config(logging=bad)
        with pytest.raises(ConfigError) as caught:
            load_config(plugin.config_path)
        assert str(plugin.config_path) in str(caught.value) and message in str(caught.value)


def test_every_named_event_and_field_in_the_code_is_in_the_schema_and_documented() -> None:
    """Each `extra={...}` of the code names only fields of FIELDS, and a snake_case event that
    docs/OPERATIONS.md lists."""
    docs = (ROOT / "docs" / "OPERATIONS.md").read_text()
    events = set()
    for path in [*ROOT.joinpath("blocklist").rglob("*.py"), *ROOT.joinpath("resolver_plugin").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and node.arg == "extra" and isinstance(node.value, ast.Dict):
                keys = [k.value for k in node.value.keys if isinstance(k, ast.Constant)]
                assert set(keys) <= set(FIELDS) - set(REQUIRED) | {"event"}, (path, keys)
                event = node.value.values[keys.index("event")]
                assert isinstance(event, ast.Constant) and SNAKE.fullmatch(event.value), path
                events.add(event.value)
    assert EXPECTED <= events and len(events) > 30
    assert [e for e in sorted(events) if f"`{e}`" not in docs] == []
    assert [f for f in FIELDS if f"`{f}`" not in docs] == []


# ----------------------------------------------------------------------------- every program, as run

def program(logs: Path, name: str, argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=(logs / f"{name}.err").open("wb"), env={**os.environ, "PYTHONPATH": str(ROOT)},
                            cwd=logs)


def stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


def events_in(path: Path) -> set[str]:
    return {json.loads(line)["event"] for line in path.read_text().splitlines() if line.startswith("{")}


async def test_every_program_logs_schema_json_without_a_listed_url(hotline: Hotline, plugin: Plugin,
                                                                     origin: str, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    csv = tmp_path / "secrets.csv"
    csv.write_text("url,scope\n" + "".join(f"{u},{s}\n" for u, s in SECRETS))
    hotline.run("import", str(csv))
    hotline.run("publish")
    port = free_port()
    serve = program(logs, "serve", [sys.executable, "-m", "blocklist", "--home", str(hotline.home),
                                    "--log-format", "json", "serve", "--bind", "127.0.0.1", "--port", str(port)])
    sync = proxy = helper = None
    try:
        wait_for_port(port)
        source = f"http://127.0.0.1:{port}/"
        plugin.extra.update(source=source, long_poll=20, node_id="isp-json-1", logging={"format": "json"},
                            admin={"listen": f"127.0.0.1:{free_port()}"},
                            timeouts={"connect": 2, "retry_first": 0.1, "retry_max": 0.5})
        proxy = start_proxy(plugin, logs)  # writes plugin.yaml; nothing is cached yet: lists_missing
        plugin.extra["node_token_file"] = yaml.safe_load(plugin.config_path.read_text())["node_token_file"]
        sync = program(logs, "sync", [sys.executable, "-c", PLUGIN_MAIN, "-c", str(plugin.config_path), "sync"])
        wait_for("version 1 synced", lambda: state_version(plugin) == 1)
        wait_for("the proxy enforcing it", lambda: "lists_enforced" in events_in(proxy.stderr))

        blocked = [u for u, s in SECRETS if s == "page"] + ["http://www.secret-whole-site-w5c.example/any?x=1"]
        for url in blocked:
            answer = await raw_exchange(proxy.port, f"GET {url} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert answer.startswith(b"HTTP/1.1 451 ")
        await raw_exchange(proxy.port, b"CONNECT secret-whole-site-w5c.example:443 HTTP/1.1\r\nHost: y\r\n\r\n")
        await raw_exchange(proxy.port, b"GET * HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await raw_exchange(proxy.port, f"GET http://{origin}/fine.html HTTP/1.1\r\nHost: {origin}\r\n"
                                                "Connection: close\r\n\r\n".encode())
        assert b"origin content" in answer

        helper = Helper(plugin.config_path, logs)
        answers = [helper.ask(f"{i} {url} -".encode()) for i, url in enumerate(blocked)]
        assert all(a.split(b" ")[1] == b"OK" for a in answers)

        # a new version signed by the new key
        hotline.run("key", "rotate", "--root-dir", str(Home(hotline.home).default_root_dir()))
        wait_for("version 2 synced", lambda: state_version(plugin) == 2)
        plugin.write_config(poll_interval=2, proxy={"listen": f"127.0.0.1:{proxy.port}",
                                                    "access_log": str(proxy.access_log)})
        sync.send_signal(signal.SIGHUP)
        wait_for("the reload", lambda: "reload_applied" in events_in(logs / "sync.err"))
        async with aiohttp.ClientSession() as session:  # a poll whose proof is forged
            async with session.get(source + "manifest.json", headers={NODE: "intruder", PROOF: "x"}) as resp:
                assert resp.status == 200
        wait_for("the refused poll", lambda: "fleet_poll_refused" in events_in(logs / "serve.err"))
    finally:
        code = stop(serve)
        if sync is not None:
            wait_for("a failed sync and its retry", lambda: {"sync_failed", "sync_retry"}
                     <= events_in(logs / "sync.err"))
            assert stop(sync) == 0
        if helper is not None:
            helper.close()
        if proxy is not None:
            proxy.stop()
    assert code == 0

    down = [sys.executable, "-c", PLUGIN_MAIN, "-c", str(plugin.config_path)]
    assert program(logs, "sync-once-down", [*down, "sync", "--once"]).wait(60) == 1
    assert program(tmp_path, "sync-once-text", [*down, "--log-format", "text", "sync", "--once"]).wait(60) == 1

    seen: set[str] = set()
    files = [p for p in logs.iterdir() if p.suffix in (".err", ".log", ".stderr")]
    for path in files:
        for line in path.read_text().splitlines():
            seen.add(check_line(line)["event"])
    access = [json.loads(line) for line in proxy.access_log.read_text().splitlines()]
    assert {r["event"] for r in access} == {"proxy_access"}
    assert {r["outcome"] for r in access} >= {"blocked", "allowed", "error"}
    assert all(r["target"] == "-" and r["list"] == "default" for r in access if r["outcome"] == "blocked")
    assert EXPECTED <= seen, EXPECTED - seen
    text = (tmp_path / "sync-once-text.err").read_text().splitlines()
    assert text and all(TEXT_LINE.match(line) for line in text)  # the flag wins over plugin.yaml

    scanned, total, hits = scan(tmp_path)
    assert scanned > 10 and total > 5000
    assert hits == []
