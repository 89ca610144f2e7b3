"""`blocklist-plugin sync` against real HTTP servers on 127.0.0.1: `blocklist serve` and hostile ones.

Every refusal is checked the way an operator would see it: the cache is
unchanged, the plugin's `check` still blocks the old URL, status.json names the
error kind, and the next sync from an honest source recovers.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from blocklist.core.format.artifacts import Delta, write_delta
from blocklist.core.format.digestset import digest_array
from blocklist.core.format.keys import key_id
from blocklist.core.format.manifest import DeltaRef, Manifest, file_ref, read_manifest, write_manifest
from blocklist.core.format.strictjson import canonical_json
from blocklist.home import Home
from blocklist.nodes import FleetStore
from blocklist.serve import make_app
from resolver_plugin.cache import Cache, LiveMatcher
from resolver_plugin.config import load_config
from resolver_plugin.distribution.sync import sync_loop
from tests.conftest import Hotline, Plugin
from tests.support.net import ServerThread, free_port, wait_for_port
from tests.support.plugin import (
    URL_A,
    URL_B,
    blocked,
    cache_files,
    env,
    plugin_argv,
    plugin_cli,
    state_version,
    status_of,
    sync_once,
)
from tests.support.processes import launch

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# ----------------------------------------------------------------------------- servers

class Source:
    """A plain static server of a publish dir (no ETag, no long-poll) with hostile overrides by path."""

    def __init__(self, publish_dir: Path) -> None:
        self.publish_dir = publish_dir
        self.overrides: dict[str, Handler] = {}
        self.requests: list[tuple[float, str, dict[str, str]]] = []
        self.manifest_seen = threading.Event()
        self.aborted_after: int | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/{path:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"]
        self.requests.append((time.monotonic(), path, dict(request.headers)))
        if path == "manifest.json":
            self.manifest_seen.set()
        for pattern, handler in self.overrides.items():
            if path == pattern or (pattern.endswith("*") and path.startswith(pattern[:-1])):
                return await handler(request)
        file = self.publish_dir / path
        if not file.is_file():
            raise web.HTTPNotFound()
        return web.Response(body=file.read_bytes())

    # hostile behaviours

    @staticmethod
    def body(data: bytes) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            return web.Response(body=data)
        return handler

    @staticmethod
    def status(code: int) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            return web.Response(status=code, text="oops")
        return handler

    @staticmethod
    def hang() -> Handler:
        async def handler(request: web.Request) -> web.Response:
            await asyncio.sleep(30)
            return web.Response(text="too late")
        return handler

    def endless(self) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse()
            await resp.prepare(request)
            sent, deadline = 0, time.monotonic() + 20
            try:
                while sent < 500 * 2**20 and time.monotonic() < deadline:
                    await resp.write(b"\0" * 65536)
                    sent += 65536
            except (ConnectionError, RuntimeError):
                pass
            self.aborted_after = sent
            return resp
        return handler


# ----------------------------------------------------------------------------- acceptance

def test_publish_sync_check_then_remove(hotline: Hotline, plugin: Plugin, caplog) -> None:
    caplog.set_level(logging.INFO, "blocklist.plugin.sync")
    hotline.run("add", URL_A)
    hotline.run("publish")
    with ServerThread(make_app(Home(hotline.home))) as server:
        plugin.write_config(source=server.url, long_poll=0)
        assert not blocked(plugin, URL_A)  # nothing cached yet
        assert sync_once(plugin) == 0
        assert blocked(plugin, URL_A)
        hotline.run("remove", URL_A)
        hotline.run("publish")
        assert sync_once(plugin) == 0
        assert not blocked(plugin, URL_A)
        assert "via=delta" in caplog.text
        status = status_of(plugin)
        st = status.lists["default"]
        assert (st.version, st.newest_seen, st.lag_versions()) == (2, 2, 0)
        assert status.manifest.version == 2 and st.last_success > 0
    [node] = FleetStore(hotline.home / "fleet.sqlite").nodes()
    assert node.node_id == "test-node" and node.versions == {"default": 1}
    assert "bad.example" not in caplog.text


def test_long_poll_daemon_enforces_a_publish_within_a_second(hotline: Hotline, plugin: Plugin,
                                                             record_property) -> None:
    hotline.run("add", URL_A)
    hotline.run("publish")
    port = free_port()
    serve = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; from blocklist.serve import run_serve; "
         "sys.exit(run_serve(Path(sys.argv[1]), '127.0.0.1', int(sys.argv[2])))", str(hotline.home), str(port)],
        env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sync = None
    try:
        wait_for_port(port)
        plugin.write_config(source=f"http://127.0.0.1:{port}/", long_poll=20, poll_interval=30)
        sync = subprocess.Popen(plugin_argv(plugin, "sync"), env=env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        deadline = time.monotonic() + 15
        while state_version(plugin) != 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert state_version(plugin) == 1
        time.sleep(0.3)  # the daemon is now parked in a long-poll
        figures = []
        for round_ in range(3):
            hotline.run("add", f"http://bad.example/new-{round_}.html")
            hotline.run("publish")
            published_at = (hotline.publish_dir / "manifest.json").stat().st_mtime
            want = round_ + 2
            deadline = time.monotonic() + 5
            while state_version(plugin) != want and time.monotonic() < deadline:
                time.sleep(0.005)
            enforced_at = time.time()
            assert state_version(plugin) == want
            figures.append(enforced_at - published_at)
            time.sleep(0.2)
        print(f"long-poll propagation publish -> state.json: {', '.join(f'{f * 1000:.0f} ms' for f in figures)}")
        record_property("long_poll_propagation_ms", [round(f * 1000) for f in figures])
        assert max(figures) < 1.5, figures
        assert blocked(plugin, "http://bad.example/new-2.html")
        status = status_of(plugin)
        assert time.time() - status.updated < 25
        sync.send_signal(signal.SIGTERM)
        assert sync.wait(5) == 0, sync.stderr.read().decode() if sync.stderr else ""
    finally:
        for proc in (sync, serve):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    assert serve.returncode == 0


# ----------------------------------------------------------------------------- refusals

@pytest.fixture
def attacked(hotline: Hotline, plugin: Plugin):
    """A plugin that enforces version 1 (URL_A) from a Source; version 2 (URL_A, URL_B) is published."""
    hotline.run("add", URL_A)
    hotline.run("publish")
    source = Source(hotline.publish_dir)
    with ServerThread(source.app()) as server:
        plugin.write_config(source=server.url, long_poll=0, timeouts={"connect": 2, "read": 0.5})
        assert sync_once(plugin) == 0 and blocked(plugin, URL_A)
        source.v1_manifest = (hotline.publish_dir / "manifest.json").read_bytes()  # type: ignore[attr-defined]
        hotline.run("add", URL_B)
        hotline.run("publish")
        yield source


def assert_last_good_kept(plugin: Plugin, before: dict[str, bytes], kind: str) -> None:
    assert cache_files(plugin) == before
    live = LiveMatcher(plugin.config())
    assert live.matcher.versions() == {"default": 1} and not live.missing
    assert live.check(URL_A).blocked and not live.check(URL_B).blocked
    assert blocked(plugin, URL_A) and not blocked(plugin, URL_B)
    status = status_of(plugin)
    st = status.lists["default"]
    assert st.version == 1 and st.last_error and st.last_error.startswith(kind + ":"), st.last_error
    assert status.errors_total.get(kind, 0) >= 1


def _tampered(data: bytes) -> bytes:
    doc = json.loads(data)
    doc["signed"]["created"] += 1
    return json.dumps(doc).encode()


def _foreign_key(data: bytes) -> bytes:
    """The real manifest content, signed by a key nobody trusts."""
    key = Ed25519PrivateKey.generate()
    doc = json.loads(data)
    doc["signatures"] = [{"key_id": key_id(key.public_key()),
                          "sig": base64.b64encode(key.sign(canonical_json(doc["signed"]))).decode()}]
    return json.dumps(doc).encode()


def _flip_last(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 1])


@pytest.mark.parametrize("attack, kind", [
    ("bad signature", "signature"),
    ("unknown key", "signature"),
    ("hash differs", "checksum"),
    ("oversized file", "size"),
    ("hanging server", "timeout"),
])
def test_attack_is_refused_and_the_last_good_state_kept(attacked: Source, hotline: Hotline,
                                                        plugin: Plugin, attack: str, kind: str,
                                                        caplog) -> None:
    before = cache_files(plugin)
    manifest = (hotline.publish_dir / "manifest.json").read_bytes()
    lists = "lists/default/"
    if attack == "bad signature":
        attacked.overrides["manifest.json"] = Source.body(_tampered(manifest))
    elif attack == "unknown key":
        attacked.overrides["manifest.json"] = Source.body(_foreign_key(manifest))
    elif attack == "hash differs":
        for name in ("snapshot-2", "delta-1-2"):
            original = (hotline.publish_dir / lists / name).read_bytes()
            attacked.overrides[lists + name] = Source.body(_flip_last(original))
    elif attack == "oversized file":
        attacked.overrides[lists + "*"] = attacked.endless()
    elif attack == "hanging server":
        attacked.overrides["manifest.json"] = Source.hang()
    started = time.monotonic()
    assert sync_once(plugin) == 1
    assert time.monotonic() - started < 10
    assert_last_good_kept(plugin, before, kind)
    assert f"kind={kind}" in caplog.text and "bad.example" not in caplog.text
    if attack == "oversized file":
        print(f"endless body: the server got to send {attacked.aborted_after} bytes")
        assert attacked.aborted_after is not None and attacked.aborted_after < 32 * 2**20
    attacked.overrides.clear()
    assert sync_once(plugin) == 0 and blocked(plugin, URL_B)


def test_replayed_older_manifest_is_refused(attacked: Source, plugin: Plugin) -> None:
    assert sync_once(plugin) == 0 and blocked(plugin, URL_B)
    before = cache_files(plugin)
    attacked.overrides["manifest.json"] = Source.body(attacked.v1_manifest)  # type: ignore[attr-defined]
    assert sync_once(plugin) == 1
    assert cache_files(plugin) == before and blocked(plugin, URL_B)
    assert status_of(plugin).lists["default"].last_error.startswith("rollback:")


def test_expired_manifest_is_refused_but_the_list_still_enforced(attacked: Source, hotline: Hotline,
                                                                 plugin: Plugin) -> None:
    from blocklist.publish import publish
    from blocklist.store import Store
    hotline.run("add", "http://bad.example/c.html")
    home = Home(hotline.home)
    created = json.loads(attacked.v1_manifest)["signed"]["created"]  # type: ignore[attr-defined]
    publish(home, Store(home.store_path), "tester", now=created, expires_in=1)  # stale a second after
    time.sleep(max(0.0, created + 1 - time.time()) + 0.01)
    before = cache_files(plugin)
    assert sync_once(plugin) == 1
    assert_last_good_kept(plugin, before, "expired")
    status = status_of(plugin)
    assert "went stale at" in status.lists["default"].last_error
    assert status.manifest.version == 1 and status.manifest.expires > time.time()
    # The enforced version's own manifest is still fresh: a WARNING ("last sync refused
    # (expired)") until that one runs out too (test_frozen_source_turns_critical...).
    assert plugin_cli(plugin, "status").exit_code == 1


def test_frozen_source_turns_critical_but_keeps_enforcing(hotline: Hotline, plugin: Plugin) -> None:
    """A source that keeps serving the last genuine manifest until it expires (a freeze attack)."""
    from blocklist.publish import publish
    from blocklist.store import Store
    hotline.run("add", URL_A)
    home = Home(hotline.home)
    publish(home, Store(home.store_path), "tester", expires_in=2)  # fresh for one to two seconds
    with ServerThread(Source(hotline.publish_dir).app()) as server:
        plugin.write_config(source=server.url, long_poll=0)
        assert sync_once(plugin) == 0
        assert plugin_cli(plugin, "status").exit_code == 0
        expires = status_of(plugin).lists["default"].expires
        time.sleep(max(0.0, expires - time.time()) + 0.1)
        before = cache_files(plugin)
        assert sync_once(plugin) == 1
    assert cache_files(plugin) == before and blocked(plugin, URL_A)
    st = status_of(plugin).lists["default"]
    assert st.last_error.startswith("expired:") and st.expires <= time.time()
    assert plugin_cli(plugin, "status").exit_code == 2  # CRITICAL


def test_delta_with_a_wrong_checksum_falls_back_to_the_snapshot(attacked: Source, hotline: Hotline,
                                                                plugin: Plugin, caplog) -> None:
    """A delta signed and listed correctly whose resulting set is not the announced one."""
    key = Home(hotline.home).signing_key()
    data = (hotline.publish_dir / "manifest.json").read_bytes()
    manifest = read_manifest(data, {key_id(key.public_key()): key.public_key()})
    ref = manifest.lists["default"]
    bad = write_delta(Delta("default", 1, 2, 0, ref.checksum, digest_array([12345]), digest_array([]),
                            digest_array([]), digest_array([])), key)
    fref = file_ref("lists/default/delta-1-2", bad)
    lists = dict(manifest.lists)
    lists["default"] = type(ref)(ref.version, ref.checksum, ref.entries, ref.snapshot,
                                 (DeltaRef(fref.path, fref.size, fref.sha256, 1, 2),))
    forged = write_manifest(Manifest(manifest.version, manifest.created, manifest.expires, lists), [key])
    attacked.overrides["manifest.json"] = Source.body(forged)
    attacked.overrides["lists/default/delta-1-2"] = Source.body(bad)
    assert sync_once(plugin) == 0
    assert "falling back to the snapshot" in caplog.text and "kind=checksum" in caplog.text
    state = json.loads((plugin.dir / "cache" / "lists" / "default" / "state.json").read_text())
    assert state == {"version": 2, "checksum": ref.checksum, "snapshot": "snapshot-2", "deltas": [],
                     "compiled": f"compiled-2-{ref.checksum[:16]}"}
    assert blocked(plugin, URL_A) and blocked(plugin, URL_B)


def test_server_errors_back_off_increasingly(hotline: Hotline, plugin: Plugin) -> None:
    hotline.run("add", URL_A)
    hotline.run("publish")
    source = Source(hotline.publish_dir)
    source.overrides["manifest.json"] = Source.status(500)
    with ServerThread(source.app()) as server:
        plugin.write_config(source=server.url, long_poll=0)
        config = plugin.config()

        async def run() -> None:
            stop = asyncio.Event()
            loop_task = asyncio.ensure_future(sync_loop(config, stop, backoff_base=0.05, backoff_cap=1.0))
            deadline = time.monotonic() + 10
            while len(source.requests) < 6 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            stop.set()
            await asyncio.wait_for(loop_task, 5)

        asyncio.run(run())
    times = [t for t, path, _ in source.requests if path == "manifest.json"]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    print("back-off gaps (s):", " ".join(f"{g:.3f}" for g in gaps))
    assert len(gaps) >= 5, gaps
    # equal jitter: attempt n waits within [d/2, d] with d doubling, so gaps never shrink (until the cap)
    assert all(later >= earlier * 0.95 for earlier, later in zip(gaps, gaps[1:], strict=False)), gaps
    assert gaps[-1] > 3 * gaps[0], gaps
    status = status_of(plugin)
    assert status.errors_total["http"] >= 5 and status.lists["default"].last_error.startswith("http:")


def test_no_cache_and_no_source_enforces_nothing_and_says_so(plugin: Plugin) -> None:
    plugin.write_config(source=f"http://127.0.0.1:{free_port()}/", long_poll=0)
    assert sync_once(plugin) == 1
    result = plugin_cli(plugin, "check", URL_A)
    assert result.exit_code == 1 and "no cached version of default" in result.output
    assert status_of(plugin).lists["default"].last_error.startswith("network:")


# ----------------------------------------------------------------------------- key rotation

def test_online_key_rotation_end_to_end_and_the_retired_key_refused(hotline: Hotline, plugin: Plugin,
                                                                   tmp_path: Path) -> None:
    """`blocklist serve` and `blocklist-plugin sync --once` as processes over HTTP: the hotline rotates
    its online key with the root keys; the node walks to root 2, takes the re-issued snapshot and
    the next publish, and refuses a manifest that the retired key signs afterwards."""
    hotline.run("add", URL_A)
    hotline.run("publish")
    home = Home(hotline.home)
    old = home.signing_key()
    port = free_port()
    serve = launch([sys.executable, "-m", "blocklist", "--home", str(hotline.home), "serve", "--port", str(port)],
                   tmp_path / "serve.stderr")

    def sync() -> int:
        return subprocess.run(plugin_argv(plugin, "sync", "--once"), env=env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=60).returncode

    try:
        wait_for_port(port)
        plugin.write_config(source=f"http://127.0.0.1:{port}/", long_poll=0)  # pins root 1
        assert sync() == 0 and blocked(plugin, URL_A)
        out = hotline.run("key", "rotate", "--root-dir", str(hotline.home.parent / "hotline-root-keys")).output
        new_id = key_id(home.signing_key().public_key())
        assert f"online key is now {new_id} (root version 2)" in out
        assert [p.name for p in home.key_path.parent.iterdir()] == ["signing.key"]  # the old key is gone
        hotline.run("add", URL_B)
        hotline.run("publish")
        assert sync() == 0 and blocked(plugin, URL_A) and blocked(plugin, URL_B)
        cache = Cache(plugin.config().cache_dir)
        assert set(cache.trusted_keys(plugin.config().public_keys)) == {new_id}
        assert status_of(plugin).manifest.signed_by == new_id and json.loads(cache.root_bytes())["signed"][
            "version"] == 2
        assert cache.state("default") is not None and cache.state("default").snapshot == "snapshot-3"  # the new key's
        # Whoever kept the retired key signs a newer manifest; serve hands it out.
        m = read_manifest((hotline.publish_dir / "manifest.json").read_bytes(),
                          {new_id: home.signing_key().public_key()})
        forged = Manifest(m.version + 5, m.created + 1, m.expires, {}, root_version=2)
        (hotline.publish_dir / "manifest.json").write_bytes(write_manifest(forged, [old]))
        assert sync() == 1 and blocked(plugin, URL_A) and blocked(plugin, URL_B)
        assert status_of(plugin).lists["default"].last_error.startswith("signature:")
    finally:
        assert serve.stop() == 0


# ----------------------------------------------------------------------------- crash safety

def test_kill_9_while_syncing_never_leaves_a_damaged_cache(hotline: Hotline, plugin: Plugin,
                                                           tmp_path: Path) -> None:
    rng = random.Random()
    seed = rng.randrange(10**6)
    rng.seed(seed)
    (tmp_path / "bulk.txt").write_text("".join(f"http://h{i % 97}.example/p/{i}.html\n" for i in range(15000)))
    hotline.run("import", str(tmp_path / "bulk.txt"))
    hotline.run("publish")
    published: dict[int, str] = {}

    def record() -> None:
        doc = json.loads((hotline.publish_dir / "manifest.json").read_bytes())
        ref = doc["signed"]["lists"]["default"]
        published[ref["version"]] = ref["checksum"]

    record()
    source = Source(hotline.publish_dir)
    with ServerThread(source.app()) as server:
        plugin.write_config(source=server.url, long_poll=0)
        config = load_config(plugin.config_path)
        cache = Cache(config.cache_dir)
        # Calibrate: how long a whole sync runs after it asked for the manifest.
        source.manifest_seen.clear()
        proc = subprocess.Popen(plugin_argv(plugin, "sync", "--once"), env=env(), stderr=subprocess.DEVNULL)
        assert source.manifest_seen.wait(20)
        seen = time.monotonic()
        assert proc.wait(20) == 0
        window = max(0.05, time.monotonic() - seen)
        kills, behind = 0, 0
        for run in range(15):
            hotline.run("add", f"http://new.example/{run}.html")
            if run % 3 == 2:
                hotline.run("add", *[f"http://more.example/{run}/{i}" for i in range(200)])
            hotline.run("publish")
            record()
            source.overrides = {"lists/default/delta-*": Source.status(404)} if run % 2 else {}
            source.manifest_seen.clear()
            proc = subprocess.Popen(plugin_argv(plugin, "sync", "--once"), env=env(),
                                    stderr=subprocess.DEVNULL)
            try:
                assert source.manifest_seen.wait(20)
                time.sleep(rng.uniform(0, window))
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                    kills += 1
            finally:
                proc.wait(10)
            loaded = cache.load_list("default", cache.trusted_keys(config.public_keys),
                                     config.limits.max_snapshot_bytes)  # raises if damaged
            assert loaded is not None, f"seed {seed} run {run}: the last good version vanished"
            assert published.get(loaded.version) == loaded.checksum, f"seed {seed} run {run}"
            matcher, missing = cache.load_matcher(config)
            assert not missing, f"seed {seed} run {run}"
            behind += loaded.version != max(published)
            json.loads((config.cache_dir / "manifest.json").read_bytes())
        print(f"kill -9: seed {seed}, window {window * 1000:.0f} ms, {kills} of 15 runs killed, "
              f"{behind} left at an older (complete) version")
        assert kills >= 5, f"seed {seed}: only {kills} runs were killed"
        source.overrides = {}
        assert sync_once(plugin) == 0  # and a normal run completes the work
        assert blocked(plugin, "http://new.example/14.html")


def test_interrupted_key_rotation_is_completed_by_running_it_again(hotline: Hotline, plugin: Plugin,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from blocklist.core.errors import ConfigError, StoreError
    from blocklist.keys import rotate_key
    home = Home(hotline.home)
    root_dir = hotline.home.parent / "hotline-root-keys"
    with pytest.raises(StoreError, match="nothing published yet"):
        rotate_key(home, root_dir, "tester")
    hotline.run("add", URL_A)
    hotline.run("publish")
    old = home.signing_key()

    def crash(*args: object) -> None:
        raise OSError(5, "Input/output error")

    # Root 2, the re-issued lists and the manifest are out; the crash comes before the key swap.
    monkeypatch.setattr("blocklist.keys.swap_in", crash)
    with pytest.raises(OSError):
        rotate_key(home, root_dir, "tester")
    monkeypatch.undo()
    assert home.signing_key().private_bytes_raw() == old.private_bytes_raw()
    with pytest.raises(ConfigError, match="interrupted `blocklist key rotate`"):
        home.online_key()  # so `blocklist publish` refuses to sign with the retired key
    new_id = rotate_key(home, root_dir, "tester")
    assert home.root_version() == 2 and key_id(home.signing_key().public_key()) == new_id
    with ServerThread(Source(hotline.publish_dir).app()) as server:
        plugin.write_config(source=server.url, long_poll=0)  # a new install: pins root 2
        assert sync_once(plugin) == 0 and blocked(plugin, URL_A)
        assert status_of(plugin).manifest.signed_by == new_id
    assert "key-rotate" in hotline.run("log").output


def test_status_json_records_the_kind_beside_the_message(plugin: Plugin) -> None:
    plugin.write_config(source=f"http://127.0.0.1:{free_port()}/", long_poll=0)
    assert sync_once(plugin) == 1
    raw = json.loads(Cache(plugin.config().cache_dir).status_file.read_text())["lists"]["default"]
    assert raw["last_error_kind"] == "network" and raw["last_error"].startswith("network: ")


def test_a_plugin_older_than_the_format_keeps_its_last_good_list(hotline: Hotline, plugin: Plugin,
                                                               monkeypatch) -> None:
    """A plugin that reads format 1 only (before www twins) refuses format 2 files with a clear
    error in its status, the words of that plugin's reader, and goes on enforcing the version it
    has; upgraded, it syncs."""
    from blocklist.core.format import container
    monkeypatch.setattr(container, "FORMAT_VERSION", 1)  # the old hotline writes, the old plugin reads
    monkeypatch.setattr(container, "READABLE_VERSIONS", (1,))
    hotline.run("add", URL_A)
    hotline.run("publish")
    with ServerThread(make_app(Home(hotline.home))) as server:
        plugin.write_config(source=server.url, long_poll=0)
        assert sync_once(plugin) == 0 and blocked(plugin, URL_A)
        monkeypatch.setattr(container, "FORMAT_VERSION", 2)  # the hotline is upgraded, the plugin not
        hotline.run("add", URL_B)
        hotline.run("publish")
        assert sync_once(plugin) == 1
        st = status_of(plugin).lists["default"]
        assert st.version == 1 and st.last_error == "format: snapshot: unsupported format version 2"
        assert blocked(plugin, URL_A) and not blocked(plugin, URL_B)
        monkeypatch.undo()  # the plugin is upgraded
        assert sync_once(plugin) == 0 and blocked(plugin, URL_A) and blocked(plugin, URL_B)
        assert status_of(plugin).lists["default"].version == 2
