"""Running `blocklist-plugin` commands on a test's Plugin and reading what they left in its cache."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from click.testing import CliRunner, Result

from resolver_plugin.cache import Cache
from resolver_plugin.cli import main as plugin_main
from resolver_plugin.operations.node_status import read_status

if TYPE_CHECKING:
    from tests.conftest import Plugin

URL_A = "http://bad.example/a.html"
URL_B = "http://bad.example/b.html"
ROOT = Path(__file__).resolve().parents[2]
PLUGIN_MAIN = "from resolver_plugin.cli import main; main()"


def plugin_cli(plugin: Plugin, *args: str) -> Result:
    return CliRunner().invoke(plugin_main, ["-c", str(plugin.config_path), *args], catch_exceptions=False)


def sync_once(plugin: Plugin) -> int:
    return plugin_cli(plugin, "sync", "--once").exit_code


def blocked(plugin: Plugin, url: str) -> bool:
    result = plugin_cli(plugin, "check", url)
    assert result.exit_code in (0, 1), result.output
    return result.exit_code == 0


def cache_files(plugin: Plugin) -> dict[str, bytes]:
    root = plugin.config().cache_dir / "lists"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def state_version(plugin: Plugin) -> int | None:
    try:
        return json.loads((plugin.dir / "cache" / "lists" / "default" / "state.json").read_text())["version"]
    except (OSError, ValueError):
        return None


def status_of(plugin: Plugin):
    status = read_status(Cache(plugin.config().cache_dir).status_file)
    assert status is not None
    return status


def plugin_argv(plugin: Plugin, *args: str) -> list[str]:
    return [sys.executable, "-c", PLUGIN_MAIN, "-c", str(plugin.config_path), *args]


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT))
