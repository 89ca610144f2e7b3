"""`blocklist-plugin status`: every sync state gives the right Nagios line, table and exit code."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from click.testing import CliRunner, Result

from resolver_plugin.cache import Cache
from resolver_plugin.cli import main as plugin_main
from resolver_plugin.config import PluginConfig
from resolver_plugin.operations.node_status import write_status
from resolver_plugin.operations.status import evaluate, render
from tests.conftest import Plugin
from tests.support.status import DAY, HOUR, SOURCE, node_status, publish


def status_cli(plugin: Plugin, *args: str) -> Result:
    return CliRunner().invoke(plugin_main, ["-c", str(plugin.config_path), "status", *args],
                              catch_exceptions=False)


# Each acceptance state: what sync would have written, the state, a phrase of the first line.
STATES = [
    ("in sync", dict(), "OK", 0, "default v1 in sync"),
    ("lagging", dict(newest_seen=3, newest_seen_at=-2 * HOUR, last_success=-2 * HOUR),
     "WARNING", 1, "2 versions behind for 2h"),
    ("lagging long", dict(newest_seen=2, newest_seen_at=-2 * DAY, last_success=-2 * DAY),
     "CRITICAL", 2, "1 version behind for 2d"),
    ("lagging briefly", dict(newest_seen=2, newest_seen_at=-60), "OK", 0, "in sync"),
    ("expired", dict(expires=-90), "CRITICAL", 2, "expired 1m 30s ago"),
    ("source down", dict(last_success=-2 * HOUR, last_error="network: cannot connect to " + SOURCE,
                         last_error_at=-5, errors={"network": 240}),
     "WARNING", 1, "no successful sync for 2h"),
    ("source down for days", dict(last_success=-3 * DAY, last_error="timeout: no answer in 30s",
                                  last_error_at=-5, errors={"timeout": 9000}),
     "CRITICAL", 2, "no successful sync for 3d"),
    ("source down briefly", dict(last_error="network: refused", last_error_at=-5, errors={"network": 1}),
     "OK", 0, "in sync"),
    ("bad signature seen", dict(last_error="signature: manifest: no valid signature by a trusted key",
                                last_error_at=-5, errors={"signature": 1}),
     "WARNING", 1, "sync refused (signature)"),
]


@pytest.mark.parametrize("fields,state,code,phrase", [s[1:] for s in STATES], ids=[s[0] for s in STATES])
def test_status_command_in_each_state(installed: Plugin, fields: dict[str, Any], state: str, code: int,
                                      phrase: str) -> None:
    now = time.time()
    errors = fields.pop("errors", None)
    relative = {k: now + v if k in ("expires", "newest_seen_at", "last_success", "last_error_at") else v
                for k, v in fields.items()}
    write_status(Cache(installed.config().cache_dir).status_file, node_status(now, errors, **relative))
    result = status_cli(installed)
    first, *rest = result.output.splitlines()
    assert result.exit_code == code, result.output
    assert first.startswith(f"BLOCKLIST {state} - ") and phrase in first, first
    assert "://" not in result.output  # never a URL, not even the source's in an error text
    table = "\n".join(rest)
    for header in ("LIST", "ENFORCED", "NEWEST SEEN", "LAG", "ENTRIES", "LAST SYNC", "LAST ERROR", "EXPIRES"):
        assert header in table
    row = next(line for line in rest if line.startswith("default "))
    assert f" {state} " in row and " 1 " in row

    doc = json.loads(status_cli(installed, "--json").output)
    assert (doc["state"], doc["exit_code"], doc["lists"][0]["enforced"]) == (state, code, 1)
    assert phrase in doc["summary"] and "://" not in json.dumps(doc)


def test_fresh_node_is_critical_no_list(plugin: Plugin) -> None:
    plugin.write_config(source=SOURCE)
    result = status_cli(plugin)
    assert result.exit_code == 2
    assert result.output.startswith("BLOCKLIST CRITICAL - default: no list")
    row = next(line for line in result.output.splitlines() if line.startswith("default "))
    assert "none" in row and "never" in row


def test_failed_first_sync_is_critical_with_its_error(plugin: Plugin) -> None:
    plugin.write_config(source=SOURCE)
    now = time.time()
    status = node_status(now, {"network": 3}, version=0, entries=0, newest_seen=0, newest_seen_at=0,
                         last_success=0, expires=0, last_error="network: refused", last_error_at=now - 1)
    write_status(Cache(plugin.config().cache_dir).status_file, status)
    result = status_cli(plugin)
    assert result.exit_code == 2 and "default: no list (last sync failed: network)" in result.output.splitlines()[0]
    assert "network: refused" in result.output and "sync errors: network 3" in result.output


def test_cache_without_status_is_a_warning(installed: Plugin) -> None:
    result = status_cli(installed)
    assert result.exit_code == 1 and "no sync status yet" in result.output.splitlines()[0]


def test_cache_ahead_of_status_counts_the_cache(installed: Plugin) -> None:
    """Enforcement loads the cache; sync may write status.json a moment later."""
    publish(installed, "http://bad.example/c.html")
    installed.install_published()  # the cache now holds version 2
    now = time.time()
    write_status(Cache(installed.config().cache_dir).status_file,
                 node_status(now, newest_seen=2, newest_seen_at=now - 2 * HOUR))
    doc = json.loads(status_cli(installed, "--json").output)
    assert doc["state"] == "OK" and doc["lists"][0]["enforced"] == 2 and doc["lists"][0]["lag_versions"] == 0


def test_corrupt_status_is_unknown(installed: Plugin) -> None:
    Cache(installed.config().cache_dir).status_file.write_text("{not json")
    result = status_cli(installed)
    assert result.exit_code == 3
    assert result.output.startswith("BLOCKLIST UNKNOWN - status unreadable")


def test_corrupt_status_without_a_list_is_still_critical(plugin: Plugin) -> None:
    plugin.write_config(source=SOURCE)
    Cache(plugin.config().cache_dir).status_file.parent.mkdir(parents=True)
    Cache(plugin.config().cache_dir).status_file.write_text('{"lists": {"default": {"bogus": 1}}}')
    assert status_cli(plugin).exit_code == 2


def test_unreadable_config_is_unknown(plugin: Plugin, tmp_path: Any) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("source: ftp://hotline.example/\nlists: [default]\ncache_dir: c\npublic_key: x\n")
    for args in ([], ["--json"]):
        result = CliRunner().invoke(plugin_main, ["-c", str(bad), "status", *args], catch_exceptions=False)
        assert result.exit_code == 3 and "UNKNOWN" in result.output and "://" not in result.output
    missing = CliRunner().invoke(plugin_main, ["-c", str(tmp_path / "none.yaml"), "status"])
    assert missing.exit_code == 3 and missing.output.startswith("BLOCKLIST UNKNOWN - config:")


def test_status_help_has_an_example() -> None:
    result = CliRunner().invoke(plugin_main, ["status", "--help"])
    assert result.exit_code == 0 and "Example" in result.output


# ----------------------------------------------------------------------------- the pure judgement

def test_thresholds_come_from_config(plugin: Plugin) -> None:
    plugin.write_config(source=SOURCE, status={"warn_lag_seconds": 60, "crit_lag_seconds": 120,
                                               "warn_lag_versions": 2})
    config: PluginConfig = plugin.config()
    now = 1_000_000.0

    def judge(**fields: Any) -> tuple[str, tuple[str, ...]]:
        report = evaluate(config, node_status(now, **fields), {"default": 1}, now)
        return report.state.name, report.lists[0].reasons

    assert judge(newest_seen=2, newest_seen_at=now - 100)[0] == "OK"  # 1 behind: under warn_lag_versions
    assert judge(newest_seen=3, newest_seen_at=now - 90)[0] == "WARNING"
    assert judge(newest_seen=3, newest_seen_at=now - 120)[0] == "CRITICAL"
    assert judge(last_success=now - 59)[0] == "OK"
    assert judge(last_success=now - 61) == ("WARNING", ("no successful sync for 1m 1s",))
    # an old refusal, followed by a success, is history
    assert judge(last_error="signature: bad", last_error_at=now - 50, last_success=now - 10)[0] == "OK"


def test_worst_list_wins_and_render_never_shows_a_url(plugin: Plugin) -> None:
    plugin.write_config(source=SOURCE, lists=["default", "other"])
    now = 1_000_000.0
    status = node_status(now, last_error=f"http: 404 for {SOURCE}manifest.json", last_error_at=now - 5)
    report = evaluate(plugin.config(), status, {"default": 1, "other": None}, now)
    assert report.state.name == "CRITICAL" and report.summary == "other: no list"
    text = render(report)
    assert "://" not in text and "http: 404 for <url>" in text
    assert "default_lag_seconds=0s;3600;86400" in text.splitlines()[0]


# ----------------------------------------------------------------------------- with the real sync and serve

async def test_after_a_real_sync_status_and_fleet_agree(plugin: Plugin, aiohttp_server: Any) -> None:
    """serve + `sync` write what `status` and `blocklist fleet` read: in sync, then a bad signature."""
    import asyncio
    import base64

    from blocklist.fleet import fleet_report
    from blocklist.home import Home
    from blocklist.serve import make_app
    from resolver_plugin.distribution.sync import sync_once

    home = Home(plugin.hotline.home)
    plugin.hotline.run("add", "http://bad.example/a.html")
    plugin.hotline.run("publish")
    server = await aiohttp_server(make_app(home))
    plugin.write_config(source=f"http://127.0.0.1:{server.port}/", long_poll=0)
    assert await sync_once(plugin.config())
    assert await sync_once(plugin.config())  # the second poll reports what the first fetched

    result = status_cli(plugin)
    assert result.exit_code == 0 and result.output.startswith("BLOCKLIST OK - default v1 in sync")
    assert "://" not in result.output
    node = fleet_report(home).nodes[0]
    assert (node.node_id, node.versions, node.flags) == ("test-node", {"default": 1}, [])

    manifest = home.publish_dir / "manifest.json"
    doc = json.loads(manifest.read_text())
    doc["signatures"][0]["sig"] = base64.b64encode(bytes(64)).decode()
    manifest.write_text(json.dumps(doc))
    await asyncio.sleep(0.2)  # serve notices the new manifest
    assert not await sync_once(plugin.config())
    result = status_cli(plugin)
    assert result.exit_code == 1, result.output
    assert result.output.startswith("BLOCKLIST WARNING - default: sync refused (signature)")
    assert "sync errors: signature 1" in result.output


# ----------------------------------------------------------------------------- the error kind as a value

def test_the_recorded_kind_is_judged_not_the_message(plugin: Plugin) -> None:
    from blocklist.core.errors import ErrorKind

    plugin.write_config(source=SOURCE)
    now = 1_000_000.0
    refused = node_status(now, last_error="signature: bad", last_error_kind=ErrorKind.SIGNATURE,
                          last_error_at=now - 5)
    report = evaluate(plugin.config(), refused, {"default": 1}, now)
    assert (report.state.name, report.lists[0].reasons) == ("WARNING", ("sync refused (signature)",))
    assert report.as_json()["lists"][0]["last_error_kind"] == "signature"
    unreached = node_status(now, last_error="signature: a text that only looks like a refusal",
                            last_error_kind=ErrorKind.NETWORK, last_error_at=now - 5)
    assert evaluate(plugin.config(), unreached, {"default": 1}, now).state.name == "OK"
    first = node_status(now, version=0, last_error="disk: No space left on device",
                        last_error_kind=ErrorKind.DISK, last_error_at=now - 5)
    assert evaluate(plugin.config(), first, {"default": None}, now).summary == \
        "default: no list (last sync failed: disk)"


def test_status_files_without_a_kind_are_read_from_the_message(tmp_path: Any) -> None:
    from blocklist.core.errors import ErrorKind
    from resolver_plugin.operations.node_status import read_status

    path = tmp_path / "status.json"

    def kind_of(record: dict[str, Any]) -> ErrorKind | None:
        path.write_text(json.dumps({"lists": {"default": {"version": 1, "last_error_at": 5.0, **record}}}))
        status = read_status(path)
        assert status is not None
        return status.lists["default"].last_error_kind

    assert kind_of({"last_error": "rollback: manifest version 3 is older"}) is ErrorKind.ROLLBACK  # older sync
    assert kind_of({"last_error": "rollback: x", "last_error_kind": None}) is ErrorKind.ROLLBACK
    assert kind_of({"last_error": "no kind in this text"}) is None
    assert kind_of({"last_error": "network: x", "last_error_kind": "checksum"}) is ErrorKind.CHECKSUM
    assert kind_of({"last_error": "network: x", "last_error_kind": "quantum"}) is None  # a newer sync's kind
    assert kind_of({}) is None
    status = read_status(path)
    assert status is not None
    status.lists["default"].last_error, status.lists["default"].last_error_kind = "size: big", ErrorKind.SIZE
    write_status(path, status)
    assert json.loads(path.read_text())["lists"]["default"]["last_error_kind"] == "size"
    assert kind_of(json.loads(path.read_text())["lists"]["default"]) is ErrorKind.SIZE
