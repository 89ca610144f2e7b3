"""The sync client (Syncer) under the distribution attacks of docs/RELIABILITY.md, without sockets.

Each test stages one attack on tests.support.repository.RepositorySimulator,
which publishes real signed artifacts and serves them through the sync's
Fetcher interface, then runs the real Syncer over a real cache in tmp_path.
It asserts what the node enforces afterwards (a freshly started enforcement
process loads its cache: which version, which URL blocked), what the running
Syncer holds, and what status.json recorded (the error kind). Most then heal
the source and check that the next sync recovers, so a refusal never poisons
the trusted state. tests/test_trust.py judges the same bytes without the
shell; tests/test_sync.py runs some of these attacks over real HTTP.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from blocklist.core.format.artifacts import Delta, write_delta
from blocklist.core.format.digestset import digest_array
from blocklist.core.format.keys import key_id
from blocklist.core.format.manifest import DeltaRef, file_ref
from blocklist.core.matcher import Matcher
from resolver_plugin.distribution.fetch import CHUNK
from resolver_plugin.distribution.sync import BUNDLE_BYTES, MANIFEST, Syncer
from resolver_plugin.operations.node_status import NodeStatus, read_status
from tests.support.repository import DAY, RepositorySimulator

URL_A = "http://bad.example/a.html"
URL_B = "http://bad.example/b.html"
URL_C = "http://bad.example/c.html"
SNAPSHOT_2 = "lists/default/snapshot-2"
DELTA_1_2 = "lists/default/delta-1-2"


pytestmark = pytest.mark.usefixtures("no_sockets")  # every byte comes from the simulator


@pytest.fixture
def sim() -> RepositorySimulator:
    """A hotline that published version 1 of "default": URL_A."""
    repo = RepositorySimulator()
    repo.add(URL_A)
    repo.publish()
    return repo


async def synced_node(sim: RepositorySimulator, tmp_path: Path, **config: object) -> Syncer:
    node = Syncer(sim.plugin_config(tmp_path / "plugin", **config), sim)
    assert await node.sync_once()
    return node


@pytest.fixture
async def node(sim: RepositorySimulator, tmp_path: Path) -> Syncer:
    """A node enforcing version 1 (URL_A); the hotline has since published version 2 (URL_A, URL_B)."""
    syncer = await synced_node(sim, tmp_path)
    sim.add(URL_B)
    sim.publish()
    sim.requests.clear()
    return syncer


def enforced(node: Syncer) -> Matcher:
    """What an enforcement process started now would enforce: the node's cache, loaded and verified."""
    matcher, _missing = node.cache.load_matcher(node.config)
    return matcher


def cached_version(node: Syncer, name: str = "default") -> int | None:
    state = node.cache.state(name)
    return state.version if state else None


def recorded(node: Syncer) -> NodeStatus:
    """status.json as `blocklist-plugin status` reads it."""
    status = read_status(node.cache.status_file)
    assert status is not None
    return status


# ----------------------------------------------------------------------------- arbitrary artifacts

async def test_tampered_delta_falls_back_to_the_genuine_snapshot(sim: RepositorySimulator, node: Syncer) -> None:
    sim.tamper(DELTA_1_2)
    assert await node.sync_once()  # the snapshot repairs what the delta could not
    assert sim.fetched("lists/") == [DELTA_1_2, SNAPSHOT_2]
    m = enforced(node)
    assert m.versions() == {"default": 2} and m.check(URL_A).blocked and m.check(URL_B).blocked
    assert node.cache.state("default").deltas == () and node.cache.state("default").snapshot == "snapshot-2"
    status = recorded(node)
    assert status.lists["default"].version == 2 and status.lists["default"].last_error.startswith("checksum:")
    assert status.errors_total == {"checksum": 1}


async def test_tampered_snapshot_and_delta_keep_the_last_good_list(sim: RepositorySimulator, node: Syncer) -> None:
    sim.tamper(DELTA_1_2)
    sim.tamper(SNAPSHOT_2)
    assert not await node.sync_once()
    assert sim.fetched("lists/") == [DELTA_1_2, SNAPSHOT_2]
    m = enforced(node)
    assert m.versions() == {"default": 1} and m.check(URL_A).blocked and not m.check(URL_B).blocked
    assert cached_version(node) == 1 and node.filters["default"].version == 1
    status = recorded(node)
    assert status.lists["default"].version == 1 and status.lists["default"].newest_seen == 2
    assert status.lists["default"].last_error.startswith("checksum:")
    assert status.errors_total == {"checksum": 2}
    sim.heal()
    assert await node.sync_once() and enforced(node).check(URL_B).blocked


async def test_a_new_node_refuses_a_tampered_snapshot_and_enforces_nothing(sim: RepositorySimulator,
                                                                         tmp_path: Path) -> None:
    sim.tamper("lists/default/snapshot-1")
    node = Syncer(sim.plugin_config(tmp_path / "plugin"), sim)
    assert not await node.sync_once()
    matcher, missing = node.cache.load_matcher(node.config)
    assert not matcher and missing == ["default"] and not matcher.check(URL_A).blocked
    assert cached_version(node) is None and "default" not in node.filters
    assert recorded(node).lists["default"].last_error.startswith("checksum:")
    sim.heal()
    assert await node.sync_once() and enforced(node).check(URL_A).blocked


async def test_delta_with_a_wrong_resulting_set_falls_back_to_the_snapshot(sim: RepositorySimulator,
                                                                         node: Syncer) -> None:
    """Signed by the hotline's key and listed with its true hash, but the set it makes is not announced."""
    ref = sim.lists["default"]
    empty = digest_array(())
    bad = write_delta(Delta("default", 1, 2, int(time.time()), ref.checksum, digest_array([12345]), empty,
                            empty, empty, subtree_markers=True), sim.key)
    bad_ref = file_ref(DELTA_1_2, bad)
    lists = {"default": dataclasses.replace(ref, deltas=(DeltaRef(bad_ref.path, bad_ref.size, bad_ref.sha256,
                                                                  1, 2),))}
    sim.serve(MANIFEST, sim.sign_manifest(lists=lists))
    sim.serve(DELTA_1_2, bad)
    assert await node.sync_once()
    m = enforced(node)
    assert m.versions() == {"default": 2} and m.check(URL_B).blocked
    assert node.cache.state("default").deltas == ()  # the bad delta was never cached
    status = recorded(node)
    assert status.lists["default"].last_error.startswith("checksum:") and "resulting set" in \
        status.lists["default"].last_error
    assert status.errors_total == {"checksum": 1}


# ----------------------------------------------------------------------------- manifest signatures

async def test_manifest_with_a_bad_signature_is_refused(sim: RepositorySimulator, node: Syncer) -> None:
    doc = json.loads(sim.files[MANIFEST])
    doc["signed"]["expires"] += DAY  # what a mirror would like to extend
    sim.serve(MANIFEST, json.dumps(doc).encode())
    assert not await node.sync_once()
    assert sim.fetched() == [MANIFEST]  # nothing it names is fetched
    m = enforced(node)
    assert m.versions() == {"default": 1} and m.check(URL_A).blocked and not m.check(URL_B).blocked
    assert cached_version(node) == 1 and node.trust.manifest.version == 1
    status = recorded(node)
    assert status.manifest.version == 1 and status.lists["default"].newest_seen == 1
    assert status.lists["default"].last_error.startswith("signature:") and "bad signature" in \
        status.lists["default"].last_error
    assert status.errors_total == {"signature": 1}
    sim.heal()
    assert await node.sync_once() and enforced(node).check(URL_B).blocked


async def test_manifest_signed_by_an_unknown_key_is_refused(sim: RepositorySimulator, node: Syncer) -> None:
    impostor = Ed25519PrivateKey.generate()
    sim.serve(MANIFEST, sim.sign_manifest(version=99, keys=[impostor]))
    assert not await node.sync_once()
    m = enforced(node)
    assert m.versions() == {"default": 1} and m.check(URL_A).blocked and not m.check(URL_B).blocked
    assert cached_version(node) == 1 and node.trust.manifest.version == 1
    error = recorded(node).lists["default"].last_error
    assert error.startswith("signature:") and "no valid signature by a trusted online key" in error
    assert f"signed by {key_id(impostor.public_key())}" in error
    assert recorded(node).errors_total == {"signature": 1}


async def test_a_root_from_unknown_keys_is_not_walked_to(sim: RepositorySimulator, node: Syncer) -> None:
    """An impostor publishes root version 2 naming its own root and online keys, signed by them, and
    a manifest under it: no trusted root key signed that root."""
    impostor, online = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    _, forged = sim.root_document(2, [impostor.public_key()], 1, [online.public_key()], [impostor, online])
    sim.serve("root/2.json", forged)
    sim.serve(MANIFEST, sim.sign_manifest(version=99, root_version=2, keys=[online]))
    assert not await node.sync_once()
    m = enforced(node)
    assert m.versions() == {"default": 1} and m.check(URL_A).blocked and not m.check(URL_B).blocked
    assert cached_version(node) == 1 and node.trust.manifest.version == 1 and node.trust.root.version == 1
    assert set(node.cache.trusted_keys(node.config.public_keys)) == {sim.key_id}  # no key learnt
    error = recorded(node).lists["default"].last_error
    assert error.startswith("signature:") and "root version 2" in error
    assert recorded(node).errors_total == {"signature": 1}


# ----------------------------------------------------------------------------- rollback and freeze

@pytest.mark.parametrize("replayed", [2, 1], ids=["same lists", "older lists"])
async def test_replayed_older_manifest_is_refused(sim: RepositorySimulator, node: Syncer, replayed: int) -> None:
    """Genuine, signed manifests one or two versions old: version 2 names the lists version 3
    names (the hotline only renewed its expiry), so only the manifest's own version refuses it."""
    assert await node.sync_once()
    sim.publish()  # nothing changed: a renewal, manifest version 3
    assert sim.lists_of[3] == sim.lists_of[2]
    assert await node.sync_once() and node.trust.manifest.version == 3
    sim.serve(MANIFEST, sim.manifests[replayed])
    assert not await node.sync_once()
    m = enforced(node)
    assert m.versions() == {"default": 2} and m.check(URL_A).blocked and m.check(URL_B).blocked
    assert cached_version(node) == 2 and node.trust.manifest.version == 3
    assert node.cache.manifest_bytes() == sim.manifests[3]  # the rollback floor after a restart
    status = recorded(node)
    assert status.manifest.version == 3
    assert status.lists["default"].last_error == (f"rollback: manifest version {replayed} is older than the "
                                                  "trusted version 3 (replayed manifest)")
    assert status.errors_total == {"rollback": 1}


@pytest.mark.parametrize("announced", ["an older list version", "the same list version, other content"])
async def test_list_version_rollback_is_refused(sim: RepositorySimulator, node: Syncer, announced: str) -> None:
    """A newer manifest, signed by the hotline's key, announcing a list the node already has beyond."""
    assert await node.sync_once()
    if announced == "an older list version":
        lists = sim.lists_of[1]
    else:
        lists = {"default": dataclasses.replace(sim.lists["default"], checksum="0" * 64)}
    sim.serve(MANIFEST, sim.sign_manifest(version=sim.version + 1, lists=lists))
    assert not await node.sync_once()
    m = enforced(node)
    assert m.versions() == {"default": 2} and m.check(URL_A).blocked and m.check(URL_B).blocked
    assert cached_version(node) == 2 and node.trust.manifest.version == 2
    error = recorded(node).lists["default"].last_error
    assert error.startswith("rollback:") and "list default version" in error
    assert recorded(node).errors_total == {"rollback": 1}


async def test_expired_manifest_is_refused_and_the_last_good_list_kept(sim: RepositorySimulator,
                                                                     node: Syncer) -> None:
    sim.add(URL_C)
    sim.publish(expires=int(time.time()) - 60)  # already past its expiry: a stale source
    assert not await node.sync_once()
    m = enforced(node)
    assert m.versions() == {"default": 1} and m.check(URL_A).blocked and not m.check(URL_C).blocked
    assert cached_version(node) == 1 and node.trust.manifest.version == 1
    status = recorded(node)
    assert status.manifest.version == 1 and status.manifest.expires > time.time()
    assert status.lists["default"].last_error.startswith("expired:")
    assert status.errors_total == {"expired": 1}


@pytest.mark.parametrize("etags", [True, False], ids=["304", "same bytes"])
async def test_frozen_source_is_detected_once_its_manifest_expires(sim: RepositorySimulator, node: Syncer,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 etags: bool) -> None:
    """A mirror that keeps serving version 1 after the hotline published 2: unnoticeable until
    version 1 expires; from then on every sync says so, and version 1 stays enforced."""
    sim.etags = etags
    sim.serve(MANIFEST, sim.manifests[1])
    assert await node.sync_once()  # still fresh: nothing to tell it from a quiet hotline
    answered = [r.path for r in sim.requests]
    assert answered == [MANIFEST]
    later = time.time() + sim.lifetime + 1
    monkeypatch.setattr(time, "time", lambda: later)
    assert not await node.sync_once()
    m = enforced(node)
    assert m.versions() == {"default": 1} and m.check(URL_A).blocked and not m.check(URL_B).blocked
    assert cached_version(node) == 1
    st = recorded(node).lists["default"]
    assert st.last_error.startswith("expired:") and st.expires <= later
    assert recorded(node).errors_total == {"expired": 1}


# ----------------------------------------------------------------------------- mix-and-match

async def test_snapshot_of_another_version_is_refused(sim: RepositorySimulator, tmp_path: Path) -> None:
    node = await synced_node(sim, tmp_path, limits={"max_delta_bytes": 1})  # snapshots only
    sim.add(URL_B)
    sim.publish()
    sim.remove(URL_B)
    sim.add(URL_C)
    sim.publish()
    old, new = sim.files[SNAPSHOT_2], sim.files["lists/default/snapshot-3"]
    assert len(old) == len(new)  # only the hash tells them apart
    sim.serve("lists/default/snapshot-3", old)  # genuine and signed, but version 2
    assert not await node.sync_once()
    m = enforced(node)
    assert m.versions() == {"default": 1} and m.check(URL_A).blocked
    assert not m.check(URL_B).blocked and not m.check(URL_C).blocked
    assert cached_version(node) == 1
    status = recorded(node)
    assert status.lists["default"].last_error.startswith("checksum:") and status.errors_total == {"checksum": 1}
    sim.heal()
    assert await node.sync_once() and enforced(node).check(URL_C).blocked


async def test_snapshot_of_another_list_is_refused(tmp_path: Path) -> None:
    sim = RepositorySimulator(("default", "another"))
    sim.add(URL_A)
    sim.add(URL_A, list_name="another")
    sim.publish()
    node = await synced_node(sim, tmp_path, lists=["default"], limits={"max_delta_bytes": 1})
    sim.add(URL_B)
    sim.add(URL_C, list_name="another")
    sim.publish()
    theirs = sim.files["lists/another/snapshot-2"]
    assert len(theirs) == len(sim.files[SNAPSHOT_2])
    sim.serve(SNAPSHOT_2, theirs)  # genuine and signed, right version, wrong list
    assert not await node.sync_once()
    m = enforced(node)
    assert m.versions() == {"default": 1} and m.check(URL_A).blocked
    assert not m.check(URL_B).blocked and not m.check(URL_C).blocked
    assert cached_version(node) == 1
    assert recorded(node).lists["default"].last_error.startswith("checksum:")
    assert recorded(node).errors_total == {"checksum": 1}


# ----------------------------------------------------------------------------- endless data, slow retrieval

@pytest.mark.parametrize("target", ["manifest", "list files"])
async def test_endless_data_is_cut_after_the_expected_size(sim: RepositorySimulator, node: Syncer,
                                                           target: str) -> None:
    paths = [MANIFEST] if target == "manifest" else [DELTA_1_2, SNAPSHOT_2]
    for path in paths:
        sim.endless(path)
    assert not await node.sync_once()
    limits = node.config.limits
    # The manifest's answer may also carry the files the node needs next (X-Blocklist-Bundle): its cap.
    expected = {MANIFEST: limits.max_manifest_bytes + BUNDLE_BYTES, DELTA_1_2: sim.lists["default"].deltas[0].size,
                SNAPSHOT_2: sim.lists["default"].snapshot.size}
    assert set(sim.sent) == set(paths)
    for path in paths:
        assert expected[path] < sim.sent[path] <= expected[path] + CHUNK, path
    m = enforced(node)
    assert m.versions() == {"default": 1} and m.check(URL_A).blocked and not m.check(URL_B).blocked
    assert cached_version(node) == 1
    status = recorded(node)
    assert status.lists["default"].last_error.startswith("size:")
    assert status.errors_total == {"size": len(paths)}
    sim.heal()
    assert await node.sync_once() and enforced(node).check(URL_B).blocked


@pytest.mark.parametrize("target", ["manifest", "list files"])
async def test_slow_retrieval_times_out_and_keeps_the_last_good_list(sim: RepositorySimulator, node: Syncer,
                                                                     target: str) -> None:
    paths = [MANIFEST] if target == "manifest" else [DELTA_1_2, SNAPSHOT_2]
    for path in paths:
        sim.time_out(path)
    assert not await node.sync_once()
    assert sim.fetched() == ([MANIFEST] if target == "manifest" else [MANIFEST, *paths])
    m = enforced(node)
    assert m.versions() == {"default": 1} and m.check(URL_A).blocked and not m.check(URL_B).blocked
    assert cached_version(node) == 1 and node.filters["default"].version == 1
    status = recorded(node)
    assert status.lists["default"].last_error.startswith("timeout:")
    assert status.errors_total == {"timeout": len(paths)}
    assert status.manifest.version == (1 if target == "manifest" else 2)
    sim.heal()
    assert await node.sync_once() and enforced(node).check(URL_B).blocked


# ----------------------------------------------------------------------------- HTTP and network errors

async def test_http_errors_on_one_lists_files_keep_that_list_and_update_the_others(tmp_path: Path) -> None:
    """503 on both ways to the new version of "another" (its delta, then its snapshot)."""
    sim = RepositorySimulator(("default", "another"))
    sim.add(URL_A)
    sim.add(URL_A, list_name="another")
    sim.publish()
    node = await synced_node(sim, tmp_path)
    sim.add(URL_B)
    sim.add(URL_B, list_name="another")
    sim.publish()
    sim.fail("lists/another/delta-1-2", 503)
    sim.fail("lists/another/snapshot-2", 503)
    assert not await node.sync_once()
    m = enforced(node)
    assert m.versions() == {"default": 2, "another": 1}
    assert cached_version(node, "default") == 2 and cached_version(node, "another") == 1
    default_only = Matcher([f for f in m.filters if f.name == "default"])
    another_only = Matcher([f for f in m.filters if f.name == "another"])
    assert default_only.check(URL_B).blocked
    assert another_only.check(URL_A).blocked and not another_only.check(URL_B).blocked
    status = recorded(node)
    assert status.lists["default"].last_error is None and status.lists["default"].version == 2
    assert status.lists["another"].last_error == "http: lists/another/snapshot-2: HTTP 503"
    assert status.errors_total == {"http": 2}
    sim.heal()
    assert await node.sync_once() and enforced(node).versions() == {"default": 2, "another": 2}


@pytest.mark.parametrize("fault, kind", [(503, "http"), (404, "http"), ("network", "network")])
async def test_unreachable_manifest_keeps_the_last_good_list(sim: RepositorySimulator, node: Syncer,
                                                             fault: int | str, kind: str) -> None:
    if fault == "network":
        sim.disconnect(MANIFEST)
    else:
        sim.fail(MANIFEST, int(fault))
    assert not await node.sync_once()
    m = enforced(node)
    assert m.versions() == {"default": 1} and m.check(URL_A).blocked and not m.check(URL_B).blocked
    assert cached_version(node) == 1
    status = recorded(node)
    assert status.lists["default"].last_error.startswith(f"{kind}:") and status.errors_total == {kind: 1}


# ----------------------------------------------------------------------------- key rotation

async def test_key_rotation_is_followed(tmp_path: Path) -> None:
    """The node pinned root 1; the hotline rotates its online key (root 2, each list re-issued) and
    signs on with the new key. The node walks to root 2 and replaces its cached files, which the
    retired key signed, by the new key's snapshot: nothing in force is the retired key's."""
    sim = RepositorySimulator()
    sim.add(URL_A, *[f"http://bulk.example/{i}.html" for i in range(200)])
    sim.publish()
    node = await synced_node(sim, tmp_path)
    old_id = sim.key_id
    sim.rotate_key()
    sim.requests.clear()
    assert await node.sync_once()
    assert sim.fetched() == [MANIFEST, "root/2.json", SNAPSHOT_2]
    m = enforced(node)
    assert m.versions() == {"default": 2} and m.check(URL_A).blocked and not m.check(URL_B).blocked
    assert node.cache.state("default").snapshot == "snapshot-2" and node.trust.root.version == 2
    assert set(node.cache.trusted_keys(node.config.public_keys)) == {sim.key_id} != {old_id}
    assert recorded(node).manifest.signed_by == sim.key_id
    sim.add(URL_B)
    sim.publish()
    assert await node.sync_once()
    m = enforced(node)
    assert m.versions() == {"default": 3} and m.check(URL_A).blocked and m.check(URL_B).blocked
    assert cached_version(node) == 3 and node.cache.state("default").deltas == ("delta-2-3",)
    restarted = Syncer(node.config, sim)  # a restart starts from the cached root 2
    assert restarted.filters["default"].version == 3 and restarted.trust.in_sync("default")
    assert restarted.trust.root.version == 2
    status = recorded(node)
    assert status.lists["default"].last_error is None and status.errors_total == {}


@pytest.mark.parametrize("forgery", ["under the new root", "under the old root"])
async def test_manifest_of_a_retired_key_is_refused_after_a_rotation(sim: RepositorySimulator, node: Syncer,
                                                                    forgery: str) -> None:
    sim.rotate_key()
    assert await node.sync_once()
    retired = sim.retired[-1]
    sim.add(URL_C)
    sim.publish()
    root_version = sim.root.version if forgery == "under the new root" else 1
    sim.serve(MANIFEST, sim.sign_manifest(version=sim.version + 5, root_version=root_version, keys=[retired]))
    assert not await node.sync_once()
    m = enforced(node)
    assert m.versions() == {"default": 3} and m.check(URL_B).blocked and not m.check(URL_C).blocked
    assert cached_version(node) == 3 and node.trust.manifest.signed_by == sim.key_id
    error = recorded(node).lists["default"].last_error
    assert error.startswith("signature:") and "no valid signature by a trusted online key" in error
    assert recorded(node).errors_total == {"signature": 1}
    sim.heal()
    assert await node.sync_once() and enforced(node).check(URL_C).blocked


# ----------------------------------------------------------------------------- the simulator keeps the contract

async def test_an_unchanged_source_answers_304_and_nothing_is_fetched_again(sim: RepositorySimulator,
                                                                           node: Syncer) -> None:
    assert await node.sync_once()
    sim.requests.clear()
    assert await node.sync_once()
    [poll] = sim.requests
    assert poll.path == MANIFEST and poll.headers["If-None-Match"] == node.etag
    assert poll.headers["X-Blocklist-Have"] == "default=2" and poll.headers["X-Blocklist-Node"] == "sim-node"
    assert "X-Blocklist-Wait" not in poll.headers and not node.long_poll_ok
    sim.long_poll = True  # a source that long-polls says so in every answer
    assert await node.sync_once(25) and node.long_poll_ok
    assert await node.sync_once(25)
    assert sim.requests[-1].headers["X-Blocklist-Wait"] == "25" and sim.requests[-1].wait == 25
    assert enforced(node).versions() == {"default": 2} and recorded(node).errors_total == {}
