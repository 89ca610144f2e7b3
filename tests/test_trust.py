"""TrustedState: every refusal of the sync's verifier, without HTTP, files or clocks."""

from __future__ import annotations

import dataclasses
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from blocklist.core.errors import (
    ChecksumError,
    ExpiredError,
    FormatError,
    RollbackError,
    SignatureError,
    SizeError,
)
from blocklist.core.format.artifacts import Delta, Snapshot, diff, write_delta, write_snapshot
from blocklist.core.format.bloom import build_bloom
from blocklist.core.format.digestset import digest_array, set_checksum
from blocklist.core.format.keys import key_id
from blocklist.core.format.manifest import DeltaRef, ListRef, Manifest, file_ref, write_manifest
from blocklist.core.format.root import Root, make_root, write_root
from blocklist.core.matcher import ListFilter
from resolver_plugin.config import Limits
from resolver_plugin.distribution.trust import MAX_ROOT_STEPS, TrustedState, delta_chain, error_kind, plan_update
from resolver_plugin.operations.node_status import ERROR_KINDS

NOW = 1_800_000_000
DAY = 86400


class Repo:
    """An in-memory publisher: the same artifacts `blocklist publish` writes."""

    def __init__(self, key: Ed25519PrivateKey | None = None) -> None:
        self.key = key or Ed25519PrivateKey.generate()  # the online key
        self.root_key = Ed25519PrivateKey.generate()
        self.root = make_root(1, NOW, [self.root_key.public_key()], 1, [self.key.public_key()])
        self.anchor: Root = self.root  # what a plugin pins
        self.files: dict[str, bytes] = {}
        self.lists: dict[str, ListRef] = {}
        self.snaps: dict[tuple[str, int], Snapshot] = {}
        self.version = 0

    def snapshot(self, name: str, version: int, entries: list[int], hosts: list[int]) -> Snapshot:
        e, h = digest_array(entries), digest_array(hosts)
        return Snapshot(list=name, version=version, created=NOW, expires=NOW + DAY, salt=b"s" * 16,
                        checksum=set_checksum(e, h), entry_bloom=build_bloom(e, 1e-4),
                        host_bloom=build_bloom(h, 1e-4), entries=e, hosts=h, counts={"page": len(e)})

    def publish(self, name: str, entries: list[int], hosts: list[int] = (7,), *, expires: int = NOW + DAY,
                bump: bool = True) -> bytes:
        before = self.lists.get(name)
        version = (before.version if before else 0) + 1
        snap = self.snapshot(name, version, entries, list(hosts))
        self.snaps[(name, version)] = snap
        data = write_snapshot(snap, self.key)
        path = f"lists/{name}/snapshot-{version}"
        self.files[path] = data
        deltas = list(before.deltas) if before else []
        if before is not None:
            ddata = write_delta(diff(name, self.snaps[(name, before.version)], snap, NOW), self.key)
            dpath = f"lists/{name}/delta-{before.version}-{version}"
            self.files[dpath] = ddata
            ref = file_ref(dpath, ddata)
            deltas.append(DeltaRef(ref.path, ref.size, ref.sha256, before.version, version))
        self.lists[name] = ListRef(version, snap.checksum, len(entries), file_ref(path, data), tuple(deltas))
        return self.manifest(expires=expires, bump=bump)

    def manifest(self, *, expires: int = NOW + DAY, bump: bool = True, lists: dict | None = None,
                 keys: list | None = None, created: int = NOW) -> bytes:
        self.version += 1 if bump else 0
        m = Manifest(version=self.version, created=created, expires=expires,
                     lists=dict(self.lists if lists is None else lists), root_version=self.root.version)
        return write_manifest(m, keys or [self.key])

    def rotate(self) -> bytes:
        """A new online key, named by the next root (signed by the root key): its bytes."""
        self.key = Ed25519PrivateKey.generate()
        self.root = make_root(self.root.version + 1, NOW, [self.root_key.public_key()], 1, [self.key.public_key()])
        return write_root(self.root, [self.root_key])


def entries(n: int, start: int = 1) -> list[int]:
    return list(range(start, start + n))


@pytest.fixture
def repo() -> Repo:
    return Repo()


def trusted(repo: Repo, limits: Limits | None = None) -> TrustedState:
    return TrustedState(repo.anchor, limits)


# ----------------------------------------------------------------------------- manifest

def test_a_valid_manifest_is_trusted(repo: Repo) -> None:
    state = trusted(repo)
    manifest = state.update_manifest(repo.publish("iwf", entries(10)), NOW)
    assert manifest.version == 1 and state.manifest is manifest
    assert state.list_ref("iwf").version == 1


def test_tampered_manifest_is_refused(repo: Repo) -> None:
    doc = json.loads(repo.publish("iwf", entries(10)))
    doc["signed"]["expires"] += 1
    with pytest.raises(SignatureError):
        trusted(repo).update_manifest(json.dumps(doc).encode(), NOW)


def test_manifest_by_an_unknown_key_is_refused(repo: Repo) -> None:
    state = trusted(repo)
    data = repo.publish("iwf", entries(10))
    impostor = Repo()
    with pytest.raises(SignatureError, match="no valid signature"):
        state.update_manifest(impostor.manifest(lists=repo.lists), NOW)
    assert state.manifest is None
    state.update_manifest(data, NOW)


def test_oversized_manifest_is_refused_before_parsing(repo: Repo) -> None:
    state = trusted(repo, Limits(max_manifest_bytes=100))
    with pytest.raises(SizeError):
        state.update_manifest(repo.publish("iwf", entries(1)), NOW)


def test_replayed_older_manifest_is_refused(repo: Repo) -> None:
    state = trusted(repo)
    old = repo.publish("iwf", entries(10))
    state.update_manifest(old, NOW)
    new = state.update_manifest(repo.publish("iwf", entries(11)), NOW)
    with pytest.raises(RollbackError, match="older than the trusted version 2"):
        state.update_manifest(old, NOW)
    assert state.manifest is new


def test_same_version_with_other_content_is_refused(repo: Repo) -> None:
    state = trusted(repo)
    state.update_manifest(repo.publish("iwf", entries(10)), NOW)
    assert state.update_manifest(state.manifest_bytes, NOW) is state.manifest  # re-served: no change
    with pytest.raises(RollbackError, match="names other files"):
        state.update_manifest(repo.manifest(bump=False, lists={}), NOW)


def test_list_version_going_backwards_is_refused(repo: Repo) -> None:
    state = trusted(repo)
    repo.publish("iwf", entries(10))
    older_lists = dict(repo.lists)
    state.update_manifest(repo.publish("iwf", entries(11)), NOW)
    with pytest.raises(RollbackError, match="list iwf version 1 is older"):
        state.update_manifest(repo.manifest(lists=older_lists), NOW)


def test_list_older_than_the_enforced_version_is_refused(repo: Repo) -> None:
    state = trusted(repo)  # a plugin whose cached manifest was lost but whose list is at 5
    state.set_enforced("iwf", 5, "x" * 64)
    with pytest.raises(RollbackError, match="older than the trusted version 5"):
        state.update_manifest(repo.publish("iwf", entries(3)), NOW)


def test_expired_manifest_is_refused_and_the_last_good_one_kept(repo: Repo) -> None:
    state = trusted(repo)
    good = state.update_manifest(repo.publish("iwf", entries(10)), NOW)
    with pytest.raises(ExpiredError, match="went stale at"):
        state.update_manifest(repo.publish("iwf", entries(11), expires=NOW - 1), NOW)
    assert state.manifest is good and state.list_ref("iwf").version == 1
    state.check_fresh(NOW)
    with pytest.raises(ExpiredError):  # a frozen source: the trusted manifest itself runs out
        state.check_fresh(NOW + 2 * DAY)
    with pytest.raises(ExpiredError):
        state.update_manifest(state.manifest_bytes, NOW + 2 * DAY)


def test_cached_manifest_loads_even_if_expired_and_stays_the_rollback_floor(repo: Repo) -> None:
    older = repo.publish("iwf", entries(10))
    cached = repo.publish("iwf", entries(11), expires=NOW - DAY)
    state = trusted(repo)
    assert state.load_trusted_manifest(cached).version == 2
    with pytest.raises(RollbackError):
        state.update_manifest(older, NOW)
    assert state.update_manifest(repo.publish("iwf", entries(12)), NOW).version == 3


# ----------------------------------------------------------------------------- snapshot

def test_snapshot_accepted_then_enforced(repo: Repo) -> None:
    state = trusted(repo)
    state.update_manifest(repo.publish("iwf", entries(10)), NOW)
    plan = state.plan("iwf")
    assert plan is not None and plan.deltas == () and plan.snapshot.path == "lists/iwf/snapshot-1"
    snap = state.verify_snapshot("iwf", repo.files[plan.snapshot.path])
    state.accept_list("iwf", ListFilter.from_snapshot(snap))
    assert state.in_sync("iwf") and state.plan("iwf") is None


@pytest.mark.parametrize("damage, error", [
    (lambda d: d[:-1] + bytes([d[-1] ^ 1]), ChecksumError),   # same size, other hash
    (lambda d: d + b"\0", SizeError),                         # longer than announced
    (lambda d: d[:100], SizeError),                           # truncated
])
def test_snapshot_not_matching_the_manifest_is_refused(repo: Repo, damage, error) -> None:
    state = trusted(repo)
    state.update_manifest(repo.publish("iwf", entries(10)), NOW)
    with pytest.raises(error):
        state.verify_snapshot("iwf", damage(repo.files["lists/iwf/snapshot-1"]))
    assert not state.in_sync("iwf")


def test_mix_and_match_is_refused(repo: Repo) -> None:
    state = trusted(repo)
    repo.publish("iwf", entries(10))
    state.update_manifest(repo.publish("iwf", entries(10, 2)), NOW)  # same size, other set
    with pytest.raises(ChecksumError):
        state.verify_snapshot("iwf", repo.files["lists/iwf/snapshot-1"])


def test_snapshot_signed_by_an_unknown_key_is_refused_even_if_the_manifest_names_it(repo: Repo) -> None:
    other = Ed25519PrivateKey.generate()
    state = trusted(repo)
    repo.publish("iwf", entries(10))
    forged = write_snapshot(repo.snaps[("iwf", 1)], other)
    repo.lists["iwf"] = dataclasses.replace(repo.lists["iwf"], snapshot=file_ref("lists/iwf/snapshot-1", forged))
    state.update_manifest(repo.manifest(), NOW)
    with pytest.raises(SignatureError, match="unknown key"):
        state.verify_snapshot("iwf", forged)


def test_snapshot_of_another_list_is_refused(repo: Repo) -> None:
    state = trusted(repo)
    repo.publish("other", entries(10))
    repo.lists["iwf"] = repo.lists["other"]
    state.update_manifest(repo.manifest(), NOW)
    with pytest.raises(FormatError, match="the file is other version 1"):
        state.verify_snapshot("iwf", repo.files["lists/other/snapshot-1"])


def test_snapshot_not_newer_than_enforced_is_refused(repo: Repo) -> None:
    state = trusted(repo)
    state.update_manifest(repo.publish("iwf", entries(10)), NOW)
    snap = state.verify_snapshot("iwf", repo.files["lists/iwf/snapshot-1"])
    state.accept_list("iwf", ListFilter.from_snapshot(snap))
    with pytest.raises(RollbackError, match="not newer"):
        state.verify_snapshot("iwf", repo.files["lists/iwf/snapshot-1"])


def test_snapshot_over_the_size_limit_is_refused_before_download(repo: Repo) -> None:
    state = trusted(repo, Limits(max_snapshot_bytes=200))
    state.update_manifest(repo.publish("iwf", entries(100)), NOW)
    with pytest.raises(SizeError, match="over the limit"):
        state.plan("iwf")


def test_list_missing_from_the_manifest(repo: Repo) -> None:
    state = trusted(repo)
    state.update_manifest(repo.publish("iwf", entries(1)), NOW)
    with pytest.raises(FormatError, match="not in manifest version 1"):
        state.plan("other")


# ----------------------------------------------------------------------------- deltas

def _at_version_1(repo: Repo, state: TrustedState, n: int = 200) -> ListFilter:
    state.update_manifest(repo.publish("iwf", entries(n)), NOW)
    current = ListFilter.from_snapshot(state.verify_snapshot("iwf", repo.files["lists/iwf/snapshot-1"]))
    state.accept_list("iwf", current)
    return current


def test_delta_chain_is_planned_verified_and_applied(repo: Repo) -> None:
    state = trusted(repo)
    current = _at_version_1(repo, state)
    repo.publish("iwf", entries(201))
    state.update_manifest(repo.publish("iwf", entries(202)), NOW)
    plan = state.plan("iwf")
    assert [(d.from_version, d.to_version) for d in plan.deltas] == [(1, 2), (2, 3)]
    for ref in plan.deltas:
        current = current.apply(state.verify_delta("iwf", repo.files[ref.path], ref))
    state.accept_list("iwf", current)
    assert state.in_sync("iwf") and len(current.entries) == 202


def test_delta_chain_with_a_gap_or_too_big_takes_the_snapshot(repo: Repo) -> None:
    repo.publish("iwf", entries(200))
    repo.publish("iwf", entries(201))
    repo.publish("iwf", entries(202))
    ref = repo.lists["iwf"]
    assert delta_chain(ref, 1) is not None and delta_chain(ref, 3) == ()
    gappy = dataclasses.replace(ref, deltas=ref.deltas[1:])
    assert delta_chain(gappy, 1) is None and plan_update("iwf", gappy, 1).deltas == ()
    assert plan_update("iwf", ref, 1).deltas == ref.deltas
    assert plan_update("iwf", ref, 1, cached_delta_bytes=ref.snapshot.size).deltas == ()
    assert plan_update("iwf", ref, None).deltas == ()


def test_delta_over_the_size_limit_is_not_planned(repo: Repo) -> None:
    state = trusted(repo, Limits(max_delta_bytes=10))
    _at_version_1(repo, state)
    state.update_manifest(repo.publish("iwf", entries(201)), NOW)
    assert state.plan("iwf").deltas == ()


def test_delta_not_listed_or_not_matching_is_refused(repo: Repo) -> None:
    state = trusted(repo)
    _at_version_1(repo, state)
    state.update_manifest(repo.publish("iwf", entries(201)), NOW)
    ref = state.list_ref("iwf").deltas[0]
    data = repo.files[ref.path]
    with pytest.raises(FormatError, match="not listed"):
        state.verify_delta("iwf", data, dataclasses.replace(ref, to_version=9))
    with pytest.raises(ChecksumError):
        state.verify_delta("iwf", data[:-1] + bytes([data[-1] ^ 1]), ref)
    with pytest.raises(SizeError):
        state.verify_delta("iwf", data + b"more", ref)


def test_delta_with_a_wrong_checksum_is_refused(repo: Repo) -> None:
    """Signed and listed with the right hash, but the set it produces is not the announced one."""
    state = trusted(repo)
    current = _at_version_1(repo, state)
    repo.publish("iwf", entries(201))
    ref = repo.lists["iwf"].deltas[-1]
    good = repo.snaps[("iwf", 2)]
    bad = Delta("iwf", 1, 2, NOW, good.checksum, digest_array([999_999]), digest_array([]),
                digest_array([]), digest_array([]))
    data = write_delta(bad, repo.key)
    fref = file_ref(ref.path, data)
    repo.lists["iwf"] = dataclasses.replace(repo.lists["iwf"], deltas=(DeltaRef(
        fref.path, fref.size, fref.sha256, 1, 2),))
    state.update_manifest(repo.manifest(), NOW)
    delta = state.verify_delta("iwf", data, state.list_ref("iwf").deltas[0])
    with pytest.raises(ChecksumError, match="resulting set"):
        current.apply(delta)
    assert state.enforced_version("iwf") == 1


def test_accept_list_refuses_a_result_that_is_not_the_manifests(repo: Repo) -> None:
    state = trusted(repo)
    current = _at_version_1(repo, state)
    state.update_manifest(repo.publish("iwf", entries(201)), NOW)
    with pytest.raises(FormatError, match="announces version 2"):
        state.accept_list("iwf", current)
    wrong = ListFilter("iwf", 2, b"s" * 16, digest_array([1]), digest_array([]))
    with pytest.raises(ChecksumError):
        state.accept_list("iwf", wrong)


# ----------------------------------------------------------------------------- keys

def test_online_key_rotation_is_followed_through_the_root_and_the_old_key_revoked(repo: Repo) -> None:
    old_key = repo.key
    state = trusted(repo)
    _at_version_1(repo, state)
    assert state.update_root(repo.rotate()) is True  # another online key: the old one's word is forgotten
    assert state.manifest is None and state.floor == {} and state.enforced_version("iwf") == 1
    assert set(state.online_keys) == {key_id(repo.key.public_key())}
    assert key_id(old_key.public_key()) in state.seen_keys  # the cached files it signed still load
    state.update_manifest(repo.publish("iwf", entries(201)), NOW)
    snap = state.verify_snapshot("iwf", repo.files[state.list_ref("iwf").snapshot.path])
    state.accept_list("iwf", ListFilter.from_snapshot(snap))
    # A manifest signed by the replaced key, even with a newer version, is refused,
    impostor = Manifest(version=99, created=NOW, expires=NOW + DAY, lists=repo.lists, root_version=2)
    with pytest.raises(SignatureError, match="no valid signature"):
        state.update_manifest(write_manifest(impostor, [old_key]), NOW)
    # and so is one that names the root the old key belonged to.
    with pytest.raises(SignatureError, match="names root version 1"):
        state.update_manifest(write_manifest(dataclasses.replace(impostor, root_version=1), [repo.key]), NOW)
    assert state.manifest is not None and state.manifest.version == 2 and state.in_sync("iwf")


def test_two_rotations_in_a_row_are_followed(repo: Repo) -> None:
    state = trusted(repo)
    state.update_manifest(repo.publish("iwf", entries(3)), NOW)
    first, second = repo.rotate(), repo.rotate()
    with pytest.raises(FormatError, match="expected root version 2"):
        state.update_root(second)
    assert state.update_root(first) and state.update_root(second)
    assert state.root.version == 3 and list(state.root_steps(3)) == [] and list(state.root_steps(5)) == [4, 5]
    assert len(state.root_steps(10**9)) == MAX_ROOT_STEPS  # a lying hint costs a bounded walk
    assert state.update_manifest(repo.publish("iwf", entries(4)), NOW).version == 2
    assert len(state.seen_keys) == 3


def test_every_error_maps_to_a_status_kind() -> None:
    kinds = {error_kind(e("x")) for e in (SignatureError, ChecksumError, SizeError, RollbackError,
                                          ExpiredError, FormatError)}
    assert kinds == {"signature", "checksum", "size", "rollback", "expired", "format"}
    assert kinds <= set(ERROR_KINDS)


def test_each_error_carries_its_kind_and_the_enum_says_which_are_refusals() -> None:
    from blocklist.core.errors import ErrorKind, TransportError
    from resolver_plugin.distribution.sync import SyncError, failure_kind

    assert [error_kind(e("x")) for e in (SignatureError, ChecksumError, SizeError, RollbackError,
                                         ExpiredError, FormatError)] == [
        ErrorKind.SIGNATURE, ErrorKind.CHECKSUM, ErrorKind.SIZE, ErrorKind.ROLLBACK, ErrorKind.EXPIRED,
        ErrorKind.FORMAT]
    assert failure_kind(SyncError(ErrorKind.TIMEOUT, "manifest.json: timed out")) is ErrorKind.TIMEOUT
    assert failure_kind(OSError(28, "No space left on device")) is ErrorKind.DISK
    assert failure_kind(ValueError("not ours")) is ErrorKind.FORMAT
    with pytest.raises(ValueError):
        TransportError("teapot", "a kind outside ErrorKind fails where it is raised")  # type: ignore[arg-type]
    assert {k for k in ErrorKind if k.is_verification} == {
        ErrorKind.SIGNATURE, ErrorKind.ROLLBACK, ErrorKind.EXPIRED, ErrorKind.CHECKSUM, ErrorKind.SIZE,
        ErrorKind.FORMAT}
    assert f"{ErrorKind.SIGNATURE}: bad" == "signature: bad"  # texts and labels read as before
