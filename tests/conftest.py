"""Shared fixtures: a hotline home in tmp_path, a way to run the CLI as a user would, a local origin."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from click.testing import CliRunner, Result

from blocklist.cli import main as blocklist_main
from tests.support.net import free_port
from tests.support.nodes import enroll
from tests.support.proxy import RunningProxy, make_origin, start_proxy
from tests.support.raw_origin import RawOrigin
from tests.support.status import SOURCE, publish

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_program(name: str) -> str:
    """The path of a real program a test needs; skip outside CI, fail under CI=true."""
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None)
    if path is None:
        message = f"{name} is not installed (apt-get install it, or run the README test command as root)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


@contextlib.contextmanager
def mounted_tmpfs(mnt: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` at `mnt` (created) for disk-full tests; needs root, which CI has."""
    mnt.mkdir()
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("disk-full tests need root to mount a tmpfs")
        pytest.skip("disk-full tests need root to mount a tmpfs")
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def resize_tmpfs(mnt: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mnt)], check=True)


@dataclass
class Hotline:
    home: Path
    runner: CliRunner

    def run(self, *args: str, ok: bool | None = True) -> Result:
        result = self.runner.invoke(blocklist_main, ["--home", str(self.home), "--actor", "tester", *args],
                                    catch_exceptions=False)
        if ok is True:
            assert result.exit_code == 0, result.output
        return result

    @property
    def publish_dir(self) -> Path:
        return self.home / "publish"


@pytest.fixture
def hotline(tmp_path: Path) -> Hotline:
    h = Hotline(tmp_path / "hotline", CliRunner())
    h.run("init")
    return h


@dataclass
class Plugin:
    """A plugin.yaml in tmp_path that trusts `hotline`'s key; `config()` loads it."""

    hotline: Hotline
    dir: Path
    extra: dict

    @property
    def config_path(self) -> Path:
        return self.dir / "plugin.yaml"

    def write_config(self, source: str = "http://127.0.0.1:9/", lists: tuple[str, ...] = ("default",),
                     **extra: object) -> Path:
        """plugin.yaml; unless it says node_token_file, its node is registered with the hotline
        and the token given to it (`blocklist node add`, then node_token_file), as an operator does."""
        import yaml

        self.dir.mkdir(parents=True, exist_ok=True)
        key = self.hotline.run("key", "export").output
        (self.dir / "hotline.pub").write_text(key)
        doc = {"source": source, "public_key_file": "hotline.pub", "lists": list(lists),
               "cache_dir": "cache", "node_id": "test-node", "poll_interval": 1,
               "admin": {"listen": None}}
        doc.update(self.extra)
        doc.update(extra)
        if "node_token_file" not in doc:
            doc["node_token_file"] = enroll(self.hotline.home, str(doc["node_id"]), self.dir).name
        elif doc["node_token_file"] is None:
            del doc["node_token_file"]  # an anonymous node
        self.config_path.write_text(yaml.safe_dump(doc))
        return self.config_path

    def config(self):  # -> PluginConfig
        from resolver_plugin.config import load_config

        if not self.config_path.exists():
            self.write_config()
        return load_config(self.config_path)

    def install_published(self, compiled: bool = True) -> None:
        """Put the hotline's current published lists into the cache as `sync` would.

        A stand-in for the network in tests of enforcement shells: the files are
        verified with the plugin's pinned key exactly like the cache loader does.
        `compiled=False` leaves out the compiled list files, as a release before them did.
        """
        from blocklist.core.format.artifacts import read_snapshot
        from blocklist.core.format.manifest import read_manifest
        from blocklist.core.matcher import ListFilter
        from resolver_plugin.cache import Cache, ListState

        config = self.config()
        cache = Cache(config.cache_dir)
        data = (self.hotline.publish_dir / "manifest.json").read_bytes()
        manifest = read_manifest(data, config.public_keys)
        for name in config.lists:
            ref = manifest.lists.get(name)
            if ref is None:
                continue
            snap = (self.hotline.publish_dir / ref.snapshot.path).read_bytes()
            file_name = ref.snapshot.path.rsplit("/", 1)[1]
            built = ListFilter.from_snapshot(read_snapshot(snap, config.public_keys)) if compiled else None
            cache.write_list(name, ListState(ref.version, ref.checksum, file_name, ()), {file_name: snap}, built)
        cache.write_manifest(data)
        cache.write_meta({n: manifest.lists[n].meta for n in config.lists if n in manifest.lists})


@pytest.fixture
def plugin(hotline: Hotline, tmp_path: Path) -> Plugin:
    return Plugin(hotline, tmp_path / "plugin", {})


@pytest.fixture
def installed(plugin: Plugin) -> Plugin:
    """Version 1 of "default" (2 entries) published and in the cache."""
    plugin.write_config(source=SOURCE)
    publish(plugin, "http://bad.example/a.html", "http://bad.example/b.html")
    plugin.install_published()
    return plugin


@pytest.fixture
async def origin() -> AsyncIterator[str]:
    """The local origin of tests.support.proxy.make_origin on 127.0.0.1; its "host:port".

    A proxy reaches it only when its config allows loopback destinations
    (tests.support.proxy.LOOPBACK_DESTINATIONS, which start_proxy sets)."""
    runner = web.AppRunner(make_origin(), access_log=None)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    yield f"127.0.0.1:{port}"
    await runner.cleanup()


@pytest.fixture
def no_sockets(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every byte comes from an in-memory source: a connection attempt fails the test.

    Modules driven by the RepositorySimulator use it with
    `pytestmark = pytest.mark.usefixtures("no_sockets")`.
    """
    module = request.module.__name__

    def refuse(self: socket.socket, *args: object) -> None:
        raise AssertionError(f"a test of {module} opened a connection: {args}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak", action="store_true",
                     help="run fault and soak tests at full length (e.g. 50 kill -9 runs instead of 10)")


@pytest.fixture
def soak(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--soak"))


@pytest.fixture
def raw_origin() -> Iterator[RawOrigin]:
    """tests.support.raw_origin's origin, running."""
    with RawOrigin() as origin:
        yield origin


@pytest.fixture
def proxy(installed: Plugin, tmp_path: Path) -> Iterator[RunningProxy]:
    """A running `blocklist-plugin proxy` of the installed plugin (upstream timeout 3 s); a test
    module may define its own."""
    running = start_proxy(installed, tmp_path, upstream_timeout=3)
    yield running
    running.stop()
