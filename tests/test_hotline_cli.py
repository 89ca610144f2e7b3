"""The `blocklist` CLI as hotline staff use it: changes, imports, checks, audit, publish."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from blocklist.core.format.keys import key_id, load_private_key
from blocklist.core.format.root import read_anchor
from tests.conftest import Hotline


def test_init_makes_a_private_key_and_root_keys_outside_the_home_and_is_idempotent(hotline: Hotline) -> None:
    key = hotline.home / "keys" / "signing.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    root_dir = hotline.home.parent / "hotline-root-keys"
    [root_key] = root_dir.glob("root-*.key")
    assert stat.S_IMODE(root_key.stat().st_mode) == 0o600 and stat.S_IMODE(root_dir.stat().st_mode) == 0o700
    assert not list(hotline.home.rglob("root-*.key"))  # never inside the home
    again = hotline.run("init").output
    assert "already initialized" in again and "root keys:" not in again
    anchor = read_anchor(hotline.run("key", "export").output.encode())
    assert anchor.version == 1 and not anchor.bare_key
    assert set(anchor.online_keys) == {key_id(load_private_key(key.read_bytes()).public_key())}
    assert set(anchor.root_keys) == {key_id(load_private_key(root_key.read_bytes()).public_key())}


def test_commands_without_init_say_what_to_do(tmp_path: Path) -> None:
    h = Hotline(tmp_path / "nowhere", __import__("click.testing").testing.CliRunner())
    result = h.run("ls", ok=None)
    assert result.exit_code == 3 and "blocklist --home" in result.output and "init" in result.output


def test_world_readable_key_is_refused(hotline: Hotline) -> None:
    os.chmod(hotline.home / "keys" / "signing.key", 0o644)
    hotline.run("add", "http://a.example/x")
    result = hotline.run("publish", ok=None)
    assert result.exit_code == 3 and "chmod 600" in result.output


def test_add_twice_and_remove_missing_are_clear_messages(hotline: Hotline) -> None:
    hotline.run("add", "http://a.example/x")
    dup = hotline.run("add", "http://A.example/x#frag", ok=None)
    assert dup.exit_code == 3 and "already listed" in dup.output and "Traceback" not in dup.output
    missing = hotline.run("remove", "http://a.example/y", ok=None)
    assert missing.exit_code == 3 and "not listed" in missing.output


def test_add_is_all_or_nothing(hotline: Hotline) -> None:
    hotline.run("add", "http://a.example/x")
    result = hotline.run("add", "http://b.example/new", "http://a.example/x", ok=None)
    assert result.exit_code == 3
    assert hotline.run("check", "http://b.example/new", ok=None).exit_code == 1


def test_bad_url_and_scheme_are_usage_errors(hotline: Hotline) -> None:
    result = hotline.run("add", "ftp://a.example/x", ok=None)
    assert result.exit_code == 2 and "ftp" in result.output
    result = hotline.run("add", "http://a.example/x", "--scope", "domain", ok=None)
    assert result.exit_code == 2 and "host only" in result.output


def test_unknown_list_needs_create_flag(hotline: Hotline) -> None:
    result = hotline.run("add", "http://a.example/x", "--list", "iwf", ok=None)
    assert result.exit_code == 3 and "--create-list" in result.output
    hotline.run("add", "http://a.example/x", "--list", "iwf", "--create-list")
    assert hotline.run("check", "http://a.example/x", "--list", "iwf").exit_code == 0


def test_check_json_names_the_entry(hotline: Hotline) -> None:
    hotline.run("add", "http://bad.example/", "--scope", "domain", "--reason", "R", "--ref", "X-1")
    out = json.loads(hotline.run("check", "http://WWW.bad.example:8080/a?b#c", "--json").output)
    assert out["listed"] and out["scope"] == "domain" and out["entries"][0]["ref"] == "X-1"
    out = json.loads(hotline.run("check", "http://good.example/", "--json", ok=None).output)
    assert out == {"url": "http://good.example/", "listed": False, "list": None, "scope": None, "reach": None,
                   "entries": []}


def test_import_text_with_comments_and_progress(hotline: Hotline, tmp_path: Path) -> None:
    f = tmp_path / "list.txt"
    f.write_text("# reports of the week\n\nhttp://a.example/1\nhttp://a.example/2  \nhttp://a.example/1\n")
    result = hotline.run("import", str(f))
    assert "imported 2 entries" in result.output
    assert hotline.run("check", "http://a.example/2").exit_code == 0
    again = hotline.run("import", str(f))
    assert "imported 0 entries" in again.output and "2 already listed" in again.output


def test_import_csv_with_scopes(hotline: Hotline, tmp_path: Path) -> None:
    f = tmp_path / "list.csv"
    f.write_text("url,scope,reason,ref\nhttp://d.example/,domain,whole site,R1\n"
                 "http://p.example/dir/,folder,,R2\nhttp://p.example/page.html,,,R3\n")
    hotline.run("import", str(f))
    rows = json.loads(hotline.run("ls", "--json").output)
    assert {(r["url"], r["scope"], r["ref"]) for r in rows} == {
        ("http://d.example/", "domain", "R1"), ("http://p.example/dir/", "folder", "R2"),
        ("http://p.example/page.html", "page", "R3")}
    assert hotline.run("check", "http://sub.d.example/x").exit_code == 0


def test_import_one_bad_line_among_10000_imports_nothing(hotline: Hotline, tmp_path: Path) -> None:
    f = tmp_path / "big.txt"
    lines = [f"http://host{i % 97}.example/page/{i}.html" for i in range(10000)]
    lines[6789] = "javascript:alert(1)"
    f.write_text("\n".join(lines) + "\n")
    result = hotline.run("import", str(f), ok=None)
    assert result.exit_code == 2
    assert f"{f}:6790:" in result.output and "javascript" in result.output
    assert "nothing imported" in result.output
    assert json.loads(hotline.run("ls", "--json").output) == []
    assert not any(r["action"] == "import" for r in json.loads(hotline.run("log", "--json").output))


def test_import_csv_bad_scope_and_columns_named_by_line(hotline: Hotline, tmp_path: Path) -> None:
    f = tmp_path / "bad.csv"
    f.write_text("url,scope\nhttp://a.example/,galaxy\nhttp://b.example/,page,extra\n")
    result = hotline.run("import", str(f), ok=None)
    assert result.exit_code == 2
    assert f"{f}:2: unknown scope" in result.output and f"{f}:3: expected 2 columns" in result.output


def test_audit_log_records_every_change(hotline: Hotline) -> None:
    hotline.run("add", "http://a.example/x", "--reason", "because")
    hotline.run("remove", "http://a.example/x")
    hotline.run("publish")
    actions = [(r["actor"], r["action"]) for r in json.loads(hotline.run("log", "--json").output)]
    assert actions[-3:] == [("tester", "add"), ("tester", "remove"), ("tester", "publish")]
    assert "because" in hotline.run("log").output


def test_audit_log_is_append_only(hotline: Hotline) -> None:
    import sqlite3
    db = sqlite3.connect(hotline.home / "store.sqlite")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("DELETE FROM audit")


def test_publish_prints_versions_and_says_when_nothing_changed(hotline: Hotline) -> None:
    hotline.run("add", "http://a.example/x")
    assert hotline.run("publish").stdout.strip() == "default 1"
    again = hotline.run("publish")
    assert again.stdout.strip() == "" and "nothing changed (default 1)" in again.output
    hotline.run("add", "http://a.example/y")
    assert hotline.run("publish").stdout.strip() == "default 2"
    files = sorted(p.name for p in (hotline.publish_dir / "lists" / "default").iterdir())
    assert files == ["delta-1-2", "snapshot-1", "snapshot-2"]


def test_publish_keeps_a_configured_number_of_versions(hotline: Hotline) -> None:
    config = hotline.home / "blocklist.yaml"
    config.write_text(config.read_text().replace("keep_versions: 10", "keep_versions: 2"))
    for i in range(5):
        hotline.run("add", f"http://a.example/{i}")
        hotline.run("publish")
    files = sorted(p.name for p in (hotline.publish_dir / "lists" / "default").iterdir())
    assert files == ["delta-3-4", "delta-4-5", "snapshot-4", "snapshot-5"]
    manifest = json.loads((hotline.publish_dir / "manifest.json").read_text())["signed"]
    assert [(d["from"], d["to"]) for d in manifest["lists"]["default"]["deltas"]] == [(3, 4), (4, 5)]


def test_bad_config_key_is_named(hotline: Hotline) -> None:
    (hotline.home / "blocklist.yaml").write_text("keep_versoins: 3\n")
    result = hotline.run("publish", ok=None)
    assert result.exit_code == 3 and "keep_versoins" in result.output


def test_lists_create_and_error_rate(hotline: Hotline) -> None:
    hotline.run("lists", "--create", "iwf", "--error-rate", "1e-4")
    rows = {r["list"]: r for r in json.loads(hotline.run("lists", "--json").output)}
    assert rows["iwf"]["error_rate"] == 1e-4
    hotline.run("lists", "--list", "iwf", "--error-rate", "1e-3")
    rows = {r["list"]: r for r in json.loads(hotline.run("lists", "--json").output)}
    assert rows["iwf"]["error_rate"] == 1e-3


@pytest.mark.parametrize("args", [[], ["init"], ["add"], ["remove"], ["import"], ["ls"], ["check"],
                                  ["log"], ["publish"], ["key", "export"], ["lists"],
                                  ["key", "rotate"], ["key", "rotate-root"], ["refresh"]])
def test_every_command_has_help_with_an_example(hotline: Hotline, args: list[str]) -> None:
    out = hotline.run(*args, "--help").output
    assert "Usage:" in out and ("Example" in out or args == [])


def test_expiry_durations_for_publish_and_refresh(hotline: Hotline) -> None:
    hotline.run("add", "http://a.example/x")
    hotline.run("publish", "--expires-in", "90s")
    signed = json.loads((hotline.publish_dir / "manifest.json").read_text())["signed"]
    assert signed["expires"] - signed["created"] == 90
    assert "fresh for 30 minutes" in hotline.run("refresh", "--expires-in", "30m").output
    again = json.loads((hotline.publish_dir / "manifest.json").read_text())["signed"]
    assert again["version"] == signed["version"] and again["expires"] - again["created"] == 1800
    assert "fresh for 1440 minutes" in hotline.run("refresh").output  # the 24 h of blocklist.yaml
    for bad in ("10s", "9d", "1w", "soon"):
        result = hotline.run("refresh", "--expires-in", bad, ok=None)
        assert result.exit_code == 2 and "--expires-in" in result.output
    config = hotline.home / "blocklist.yaml"
    config.write_text("expires_days: 7\n")
    result = hotline.run("publish", ok=None)
    assert result.exit_code == 3 and "expires_days was replaced by expires_hours" in result.output


def test_root_rotation_from_the_cli_with_a_threshold(hotline: Hotline, tmp_path: Path) -> None:
    hotline.run("add", "http://a.example/x")
    hotline.run("publish")
    old_dir, new_dir = hotline.home.parent / "hotline-root-keys", tmp_path / "new-root"
    out = hotline.run("key", "rotate-root", "--root-dir", str(old_dir), "--new-root-dir", str(new_dir),
                      "--root-keys", "3", "--threshold", "2").output
    assert "root version 2: 3 root keys" in out and len(list(new_dir.glob("root-*.key"))) == 3
    anchor = read_anchor(hotline.run("key", "export").output.encode())
    assert (anchor.version, anchor.root.threshold, len(anchor.root_keys)) == (2, 2, 3)
    assert json.loads((hotline.publish_dir / "manifest.json").read_text())["signed"]["root_version"] == 2
    inside = hotline.run("key", "rotate-root", "--root-dir", str(new_dir), "--new-root-dir",
                         str(hotline.home / "keys" / "root"), ok=None)
    assert inside.exit_code == 3 and "never go inside the home" in inside.output
    bad = hotline.run("key", "rotate-root", "--root-dir", str(new_dir), "--new-root-dir", str(tmp_path / "x"),
                      "--root-keys", "2", "--threshold", "3", ok=None)
    assert bad.exit_code == 3 and "threshold (3) <= keys (2)" in bad.output
    assert "root version 3" in hotline.run("key", "rotate", "--root-dir", str(new_dir)).output
