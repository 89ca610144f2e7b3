"""Who may change what a node enforces: root keys, the online key, freshness, each attack through the sync.

Each test stages one attack with tests.support.repository.RepositorySimulator
(root documents, online key and root rotations, re-signed manifests) or with
the real `blocklist` CLI, runs the real Syncer over a real cache, and asserts
in its own body what the node enforces afterwards: which version a freshly
started enforcement process loads and which URL it blocks, and what
status.json (or `status`) says.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import blocklist.core.format.envelope as envelope
from blocklist.core.format.keys import key_id
from blocklist.core.matcher import Matcher
from resolver_plugin.distribution.sync import MANIFEST, Syncer
from resolver_plugin.operations.node_status import NodeStatus, read_status
from resolver_plugin.operations.status import BARE_KEY, evaluate, gather
from tests.conftest import Hotline, Plugin
from tests.support.repository import SOURCE, DirectorySource, RepositorySimulator

URL_A = "http://bad.example/a.html"
URL_B = "http://bad.example/b.html"
URL_C = "http://bad.example/c.html"


pytestmark = pytest.mark.usefixtures("no_sockets")  # every byte comes from the simulator


@pytest.fixture
def sim() -> RepositorySimulator:
    """A hotline that published version 1 of "default": URL_A and URL_B."""
    repo = RepositorySimulator()
    repo.add(URL_A, URL_B)
    repo.publish()
    return repo


async def synced(sim: RepositorySimulator, folder: Path, **config: object) -> Syncer:
    node = Syncer(sim.plugin_config(folder, **config), sim)
    assert await node.sync_once()
    return node


def enforced(node: Syncer) -> Matcher:
    """What an enforcement process started now would enforce: the node's cache, loaded and verified."""
    matcher, _missing = node.cache.load_matcher(node.config)
    return matcher


def recorded(node: Syncer) -> NodeStatus:
    status = read_status(node.cache.status_file)
    assert status is not None
    return status


# ----------------------------------------------------------------------------- the online key

async def test_a_retired_online_key_cannot_take_over_a_node(sim: RepositorySimulator, tmp_path: Path) -> None:
    """The red team's first finding, replayed: after `key rotate`, whoever kept the old online key
    signs a root naming a key of theirs and an empty list under it, or signs under the old root."""
    node = await synced(sim, tmp_path)
    sim.rotate_key()
    assert await node.sync_once() and node.trust.root.version == 2
    retired, taker = sim.retired[-1], Ed25519PrivateKey.generate()
    _, root3 = sim.root_document(3, [taker.public_key()], 1, [taker.public_key()], [retired, taker])
    empty = sim.forge_list("default", 100, taker)
    sim.serve("root/3.json", root3)
    for forged in (sim.sign_manifest(version=100, root_version=3, lists={"default": empty}, keys=[taker]),
                   sim.sign_manifest(version=100, root_version=1, lists={"default": empty}, keys=[retired]),
                   sim.sign_manifest(version=100, root_version=2, lists={"default": empty}, keys=[retired])):
        sim.serve(MANIFEST, forged)
        assert not await node.sync_once()
        assert recorded(node).lists["default"].last_error.startswith("signature:")
    m = enforced(node)
    assert m.versions() == {"default": 2} and m.check(URL_A).blocked and m.check(URL_B).blocked
    assert node.trust.root.version == 2 and set(node.trust.online_keys) == {sim.key_id}
    assert recorded(node).errors_total == {"signature": 3}
    sim.heal()  # the genuine rotated manifest is still taken: nothing was refused for good
    sim.add(URL_C)
    sim.publish()
    assert await node.sync_once() and enforced(node).check(URL_C).blocked


async def test_a_stolen_online_key_is_undone_by_rotating_it(sim: RepositorySimulator, tmp_path: Path) -> None:
    """The thief publishes manifest version 100 with an empty list version 100, which the node has
    to take (the key is still its online key). The hotline rotates the online key with its root
    keys: the node walks to root 2, forgets the versions the stolen key vouched for, returns to the
    genuine lists, and refuses the thief from then on, after a restart too."""
    node = await synced(sim, tmp_path)
    stolen = sim.key
    empty = sim.forge_list("default", 100, stolen)
    sim.serve(MANIFEST, sim.sign_manifest(version=100, lists={"default": empty}, keys=[stolen]))
    assert await node.sync_once()
    m = enforced(node)
    assert m.versions() == {"default": 100} and not m.check(URL_A).blocked  # the theft took effect
    sim.rotate_key()  # genuine manifest version 2 under root 2: list version 2, far below 100
    sim.heal()
    assert await node.sync_once()
    m = enforced(node)
    assert m.versions() == {"default": 2} and m.check(URL_A).blocked and m.check(URL_B).blocked
    assert node.trust.manifest is not None and node.trust.manifest.version == 2
    assert set(node.cache.trusted_keys(node.config.public_keys)) == {sim.key_id}  # the stolen key is gone
    assert recorded(node).lists["default"].newest_seen == 2 and recorded(node).lists["default"].last_error is None
    again = sim.forge_list("default", 101, stolen)
    for root_version in (1, 2):
        sim.serve(MANIFEST, sim.sign_manifest(version=101, root_version=root_version,
                                              lists={"default": again}, keys=[stolen]))
        assert not await node.sync_once()
    restarted = Syncer(node.config, sim)
    assert not await restarted.sync_once()
    m = enforced(restarted)
    assert m.versions() == {"default": 2} and m.check(URL_A).blocked
    assert restarted.trust.floor["default"][0] == 2 and restarted.trust.root.version == 2


# ----------------------------------------------------------------------------- the root keys

@pytest.mark.parametrize("signers", ["1 of 3 old, 2 of 2 new", "2 of 3 old, 1 of 2 new"])
async def test_a_root_rotation_needs_a_threshold_of_the_old_and_of_the_new_keys(tmp_path: Path,
                                                                               signers: str) -> None:
    sim = RepositorySimulator(root_keys=3, threshold=2)
    sim.add(URL_A)
    sim.publish()
    node = await synced(sim, tmp_path)
    old = sim.root_keys
    new = [Ed25519PrivateKey.generate() for _ in range(2)]
    use = [old[0], *new] if signers.startswith("1 of 3") else [*old[:2], new[0]]
    _, root2 = sim.root_document(2, [k.public_key() for k in new], 2, [sim.key.public_key()], use)
    sim.serve("root/2.json", root2)
    sim.serve(MANIFEST, sim.sign_manifest(version=5, root_version=2))
    assert not await node.sync_once()
    error = recorded(node).lists["default"].last_error
    assert error.startswith("signature: root version 2:") and "1 valid of the 2 signatures needed" in error
    assert node.trust.root.version == 1 and node.cache.root_bytes() is None
    m = enforced(node)
    assert m.versions() == {"default": 1} and m.check(URL_A).blocked
    sim.heal()
    sim.rotate_root(2, 2)  # the genuine rotation: 3 old and 2 new keys signed root 2
    assert await node.sync_once() and node.trust.root.version == 2
    # The old root keys alone cannot make root 3 any more.
    ghost = Ed25519PrivateKey.generate()
    _, root3 = sim.root_document(3, [ghost.public_key()], 1, [ghost.public_key()], [*old, ghost])
    sim.serve("root/3.json", root3)
    sim.serve(MANIFEST, sim.sign_manifest(version=9, root_version=3, keys=[ghost]))
    assert not await node.sync_once()
    assert "root keys of version 2" in recorded(node).lists["default"].last_error
    assert node.trust.root.version == 2 and enforced(node).check(URL_A).blocked


def test_a_copy_of_the_home_without_the_root_keys_cannot_rotate_any_key(hotline: Hotline, tmp_path: Path) -> None:
    hotline.run("add", URL_A)
    hotline.run("publish")
    copy = Hotline(tmp_path / "stolen-home", hotline.runner)
    shutil.copytree(hotline.home, copy.home)
    before = {p: p.read_bytes() for p in copy.home.rglob("*") if p.is_file() and "sqlite" not in p.name}
    no_option = copy.run("key", "rotate", ok=None)
    assert no_option.exit_code == 2 and "--root-dir" in no_option.output
    for args in (["key", "rotate", "--root-dir", str(tmp_path / "empty")],
                 ["key", "rotate-root", "--root-dir", str(tmp_path / "empty"), "--new-root-dir", str(tmp_path / "n")]):
        result = copy.run(*args, ok=None)
        assert result.exit_code == 3 and "0 of the 1 root keys of root version 1 needed; nothing changed" in \
            result.output
    assert {p: p.read_bytes() for p in before} == before and not (tmp_path / "n").exists()
    assert sorted(p.name for p in (copy.publish_dir / "root").iterdir()) == ["1.json"]
    # The hotline, with its root keys brought in, can.
    assert "root version 2" in hotline.run("key", "rotate", "--root-dir",
                                           str(hotline.home.parent / "hotline-root-keys")).output


# ----------------------------------------------------------------------------- freshness

async def test_a_frozen_mirror_turns_the_node_critical_and_a_refresh_recovers_it(
        hotline: Hotline, plugin: Plugin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hotline.run("add", URL_A)
    hotline.run("publish", "--expires-in", "1h")
    mirror = tmp_path / "mirror"
    shutil.copytree(hotline.publish_dir, mirror)
    plugin.write_config(source=SOURCE, long_poll=0)
    node = Syncer(plugin.config(), DirectorySource(mirror))
    assert await node.sync_once()
    assert gather(node.config).state.name == "OK"
    clock = [time.time() + 3600 + 1]  # the mirror never changed; the hour is over
    monkeypatch.setattr(time, "time", lambda: clock[0])
    later = clock[0]
    assert not await node.sync_once()
    report = gather(node.config, now=later)
    assert report.state.name == "CRITICAL" and "expired" in report.summary
    assert recorded(node).lists["default"].last_error.startswith("expired:")
    m = enforced(node)
    assert m.versions() == {"default": 1} and m.check(URL_A).blocked  # the last good list stays
    before = json.loads((hotline.publish_dir / "manifest.json").read_bytes())["signed"]
    assert "re-signed" in hotline.run("refresh", "--expires-in", "24h").output
    shutil.copy(hotline.publish_dir / "manifest.json", mirror / "manifest.json")
    clock[0] += 1
    assert await node.sync_once()
    report = gather(node.config, now=clock[0])
    assert report.state.name == "OK", report.summary
    after = json.loads((hotline.publish_dir / "manifest.json").read_bytes())["signed"]
    assert after["version"] == before["version"] and after["created"] > before["created"]
    assert enforced(node).check(URL_A).blocked and recorded(node).errors_total == {"expired": 1}


async def test_a_replayed_manifest_with_an_older_created_is_refused(sim: RepositorySimulator,
                                                                   tmp_path: Path) -> None:
    node = await synced(sim, tmp_path)
    now = int(time.time())
    first = sim.refresh(now=now + 10)
    sim.refresh(now=now + 20)
    assert await node.sync_once() and node.trust.manifest.created == now + 20
    sim.serve(MANIFEST, first)  # the same version, signed earlier: replayed to hide later ones
    assert not await node.sync_once()
    error = recorded(node).lists["default"].last_error
    assert error.startswith("rollback: manifest version 1 was created at") and "replayed" in error
    assert node.trust.manifest.created == now + 20 and node.cache.manifest_bytes() == sim.files[MANIFEST]
    assert enforced(node).versions() == {"default": 1} and enforced(node).check(URL_A).blocked


async def test_the_same_version_re_signed_or_reformatted_is_no_change_and_no_alarm(sim: RepositorySimulator,
                                                                                   tmp_path: Path) -> None:
    node = await synced(sim, tmp_path)
    expires = recorded(node).manifest.expires
    sim.requests.clear()
    assert node.trust.manifest is not None
    fresh = sim.refresh(now=node.trust.manifest.created + 60)  # 60 s after the first, whatever the clock did since
    assert await node.sync_once()
    assert sim.fetched() == [MANIFEST]  # no list is fetched again
    assert recorded(node).manifest.expires == expires + 60 and node.cache.manifest_bytes() == fresh
    sim.serve(MANIFEST, json.dumps(json.loads(fresh), indent=4, sort_keys=False).encode())  # reformatted
    assert await node.sync_once()
    status = recorded(node)
    assert status.errors_total == {} and status.lists["default"].last_error is None
    assert status.manifest.version == 1 and enforced(node).check(URL_B).blocked


@pytest.mark.parametrize("skew", [0, 30])
async def test_clock_skew_is_allowed_only_as_configured(sim: RepositorySimulator, tmp_path: Path,
                                                         skew: int) -> None:
    sim.publish(expires=int(time.time()) - 10)  # a manifest whose expiry passed ten seconds ago
    node = Syncer(sim.plugin_config(tmp_path, clock_skew=skew), sim)
    assert await node.sync_once() is bool(skew)
    kind = recorded(node).lists["default"].last_error_kind
    assert (enforced(node).versions(), kind) == (({"default": 1}, None) if skew else ({}, "expired"))


# ----------------------------------------------------------------------------- bounds

async def test_thirty_thousand_junk_signatures_are_refused_before_any_check(sim: RepositorySimulator,
                                                                           tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    node = await synced(sim, tmp_path)
    checks: list[str] = []
    real = envelope.verify_signature
    monkeypatch.setattr(envelope, "verify_signature", lambda keys, kid, sig, msg: (checks.append(kid),
                                                                                   real(keys, kid, sig, msg)))
    doc = json.loads(sim.sign_manifest(version=2))
    junk = {"key_id": sim.key_id, "sig": "A" * 86 + "=="}
    sim.serve(MANIFEST, json.dumps({"signed": doc["signed"], "signatures": [junk] * 30_000}).encode())
    assert not await node.sync_once()
    error = recorded(node).lists["default"].last_error
    assert checks == [] and len(error) < 120 and "30000 signatures" in error
    # Under the cap, duplicates cost nothing and a genuine signature behind junk still counts.
    distinct = [{"key_id": sim.key_id, "sig": f"{i:04d}" + "A" * 82 + "=="} for i in range(15)]
    sim.serve(MANIFEST, json.dumps({"signed": doc["signed"],
                                    "signatures": [*distinct, *distinct, doc["signatures"][0]]}).encode())
    assert await node.sync_once()
    assert len(checks) == 16 and node.trust.manifest.version == 2
    assert enforced(node).check(URL_A).blocked


# ----------------------------------------------------------------------------- from before root keys

async def test_a_node_pinning_a_bare_key_walks_to_root_1_and_status_warns(sim: RepositorySimulator,
                                                                         tmp_path: Path) -> None:
    node = Syncer(sim.plugin_config(tmp_path, bare_key=True), sim)
    assert await node.sync_once()
    assert node.trust.root.version == 1 and not node.trust.root.bare_key
    assert enforced(node).check(URL_A).blocked
    report = evaluate(node.config, recorded(node), {"default": 1}, time.time())
    assert report.state.name == "WARNING" and BARE_KEY in report.summary
    sim.rotate_key()  # and follows later rotations like any node
    assert await node.sync_once() and node.trust.root.version == 2


def test_a_home_from_before_root_keys_is_upgraded_by_init(hotline: Hotline, plugin: Plugin) -> None:
    from blocklist.core.format.envelope import seal
    from blocklist.core.format.manifest import manifest_signed, read_manifest
    from blocklist.home import Home
    hotline.run("add", URL_A)
    hotline.run("publish")
    home = Home(hotline.home)
    key = home.signing_key()
    # What an old home looks like: a format-1 manifest, an archived key, no root document.
    old = read_manifest((home.publish_dir / "manifest.json").read_bytes(), {key_id(key.public_key()): key.public_key()})
    signed = manifest_signed(old) | {"spec_version": 1, "key_chain": []}
    del signed["root_version"]
    (home.publish_dir / "manifest.json").write_bytes(seal(signed, [key]))
    shutil.rmtree(home.roots_dir)
    shutil.rmtree(hotline.home.parent / "hotline-root-keys")
    (home.key_path.parent / "signing-0123456789abcdef.key").write_bytes(b"retired")
    result = hotline.run("publish", ok=None)
    assert result.exit_code == 3 and "init --root-dir DIR" in result.output
    assert "root keys:" in hotline.run("init", "--root-dir", str(hotline.home.parent / "offline")).output
    assert sorted(p.name for p in home.key_path.parent.iterdir()) == ["signing.key"]
    upgraded = read_manifest((home.publish_dir / "manifest.json").read_bytes(),
                             {key_id(key.public_key()): key.public_key()})
    assert (upgraded.version, upgraded.root_version, upgraded.lists) == (old.version + 1, 1, old.lists)
    hotline.run("add", URL_B)
    assert hotline.run("publish").stdout.strip() == "default 2"
