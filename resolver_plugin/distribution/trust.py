"""Judges every fetched byte before the plugin uses it: roots, the manifest, then snapshots and deltas.

Modelled on python-tuf's TrustedMetadataSet: `TrustedState` takes bytes and
either accepts them into the trusted state or raises one of blocklist.core.errors;
it never opens a socket or a file. The sync shell (resolver_plugin.distribution.sync) does
the I/O and asks it to judge each download, in this order:

Roots, `update_root(data)`, for each version `root_steps(hint)` names (the
manifest's root_version, read before it is verified):
  exactly the next version, signed by a threshold of the trusted root's root
  keys and a threshold of its own (core.format.root.read_next_root)  SignatureError
  When the new root names other online keys, the state forgets the trusted
  manifest and every rollback floor: what the retired online key vouched for
  no longer binds the node (TUF's fast-forward recovery). The lists in force
  stay in force until the new key's versions replace them.
Manifest, `update_manifest(data, now)`:
  1. at most limits.max_manifest_bytes                              SizeError
  2. signed by an online key of the trusted root, under that root's
     version                                                         SignatureError
  3. version >= the trusted manifest's, created >= its created; the
     same version only as a re-signed copy (same lists, same root):
     a fresher expiry, or a reformatted file, is no change          RollbackError
  4. no list older than the trusted manifest's or the enforced
     version; an equal version with another checksum is refused     RollbackError
  5. fresh at `now`: before its expiry, and less than
     limits.max_manifest_lifetime after its creation, plus
     clock_skew; the last good state stays in force                  ExpiredError
Snapshot, `verify_snapshot(name, data)`, of a list the trusted manifest names:
  exactly the size and SHA-256 the manifest gives (mix-and-match, endless
  data), a valid signature by an online key of the trusted root, the list's
  name, the manifest's version and checksum, and a version strictly newer
  than the rollback floor.
Delta, `verify_delta(name, data, ref)`: `ref` is one the manifest lists for
  that list; the same size, hash, signature and name checks; from/to as `ref`
  says and not past the manifest's version; the last one of a chain carries
  the manifest's checksum (ListFilter.apply then checks the resulting set).
Result, `check_list` / `accept_list(name, filter)`: the filter built from
  those is at the manifest's version and checksum; accept_list makes it the
  enforced version (the shell calls it once the cache holds the result).

Keys. Everything downloaded is judged by the online keys of the trusted root
only. `seen_keys` holds the online keys of every root walked through, so the
shell can still verify cached files a retired key signed while they are in
force; it replaces them with the new key's snapshots (Syncer._sync_list).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from blocklist.core.errors import (
    BlocklistError,
    ChecksumError,
    ErrorKind,
    ExpiredError,
    FormatError,
    RollbackError,
    SignatureError,
    SizeError,
)
from blocklist.core.format.artifacts import Delta, Snapshot, read_delta, read_snapshot
from blocklist.core.format.manifest import DeltaRef, FileRef, ListRef, Manifest, check_file, read_manifest
from blocklist.core.format.root import Root, read_next_root, read_root
from blocklist.core.matcher import ListFilter
from resolver_plugin.config import Limits

MAX_CHAIN = 1000  # deltas applied in one sync; a longer gap takes the snapshot
MAX_ROOT_STEPS = 32  # root versions walked in one sync; the next sync walks on


def error_kind(exc: BaseException) -> ErrorKind:
    """The kind of a verification error: its own (FORMAT for anything not ours)."""
    return exc.kind if isinstance(exc, BlocklistError) else ErrorKind.FORMAT


def when(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


@dataclass(frozen=True)
class UpdatePlan:
    """How to bring one list to the manifest's version: `deltas` if any, else (or on failure) `snapshot`."""

    list: str
    version: int
    deltas: tuple[DeltaRef, ...]
    snapshot: FileRef


def delta_chain(ref: ListRef, have: int) -> tuple[DeltaRef, ...] | None:
    """The listed deltas leading from version `have` to `ref.version`, or None if one is missing."""
    by_from = {d.from_version: d for d in ref.deltas if d.to_version <= ref.version}
    chain: list[DeltaRef] = []
    version = have
    while version < ref.version and len(chain) < MAX_CHAIN:
        step = by_from.get(version)
        if step is None or step.to_version <= version:
            return None
        chain.append(step)
        version = step.to_version
    return tuple(chain) if version == ref.version else None


def plan_update(name: str, ref: ListRef, have: int | None, cached_delta_bytes: int = 0) -> UpdatePlan:
    """Deltas when the whole chain is listed and, with the deltas already cached on top of
    the cached snapshot, smaller than a fresh snapshot (so the cache stays bounded); else the snapshot."""
    chain = delta_chain(ref, have) if have else None
    if chain and cached_delta_bytes + sum(d.size for d in chain) >= ref.snapshot.size:
        chain = None
    return UpdatePlan(name, ref.version, chain or (), ref.snapshot)


class TrustedState:
    """The root, manifest and list versions this plugin trusts; one method per artifact to judge."""

    def __init__(self, anchor: Root, limits: Limits | None = None, clock_skew: float = 0.0) -> None:
        self.root = anchor
        self.limits = limits or Limits()
        self.clock_skew = clock_skew
        self.manifest: Manifest | None = None
        self.manifest_bytes: bytes | None = None
        self.seen_keys: dict[str, Ed25519PublicKey] = dict(anchor.online_keys)
        self.enforced: dict[str, tuple[int, str]] = {}  # list -> (version, checksum) in force
        self.floor: dict[str, tuple[int, str]] = {}     # list -> the lowest (version, checksum) still allowed

    @property
    def online_keys(self) -> dict[str, Ed25519PublicKey]:
        """The keys that may sign manifests, snapshots and deltas now."""
        return self.root.online_keys

    # -- loading what the cache holds (trusted already; expiry is not checked here)

    def load_trusted_root(self, data: bytes) -> Root:
        """Adopt the cached newest root when it is newer than the pinned one (a damage check: self-signed)."""
        root = read_root(data)
        if root.version > self.root.version:
            self.root = root
            self.seen_keys.update(root.online_keys)
        return self.root

    def load_trusted_manifest(self, data: bytes) -> Manifest:
        """Adopt the cached last good manifest: its signature must verify, it may have expired since."""
        manifest = self._read(data)
        self.manifest, self.manifest_bytes = manifest, data
        return manifest

    def set_enforced(self, name: str, version: int, checksum: str, *, vouched: bool = True) -> None:
        """Record a list version loaded (and verified) from the cache; `vouched`: signed by a
        current online key, so it is a rollback floor (a retired key's versions are not)."""
        self.enforced[name] = (version, checksum)
        if vouched:
            self.floor[name] = (version, checksum)

    def enforced_version(self, name: str) -> int:
        return self.enforced.get(name, (0, ""))[0]

    # -- judging downloads

    def root_steps(self, hint: int) -> range:
        """The root versions to fetch, in order, to reach the `hint` a manifest names."""
        return range(self.root.version + 1, min(hint, self.root.version + MAX_ROOT_STEPS) + 1)

    def update_root(self, data: bytes) -> bool:
        """Trust the next root version; True when it rotated the online keys (the state forgot the
        versions the retired keys vouched for)."""
        new = read_next_root(self.root, data)
        rotated = set(new.online.keys) != set(self.root.online.keys)
        self.root = new
        self.seen_keys.update(new.online_keys)
        if rotated:
            self.manifest, self.manifest_bytes = None, None
            self.floor = {}
        return rotated

    def update_manifest(self, data: bytes, now: float) -> Manifest:
        """Verify `data` as the newest manifest and trust it; returns the trusted manifest."""
        new = self._read(data)
        old = self.manifest
        if old is not None:
            if new.version < old.version:
                raise RollbackError(f"manifest version {new.version} is older than the trusted "
                                    f"version {old.version} (replayed manifest)")
            if new.created < old.created:
                raise RollbackError(f"manifest version {new.version} was created at {when(new.created)}, "
                                    f"before the trusted one ({when(old.created)}): replayed")
            if new.version == old.version and not new.same_content(old):
                raise RollbackError(f"manifest version {new.version} names other files than the trusted "
                                    "manifest of the same version")
        for name, ref in new.lists.items():
            floor, checksum = self._floor(name)
            if ref.version < floor:
                raise RollbackError(f"manifest version {new.version}: list {name} version "
                                    f"{ref.version} is older than the trusted version {floor}")
            if ref.version == floor and checksum and ref.checksum != checksum:
                raise RollbackError(f"manifest version {new.version}: list {name} version "
                                    f"{ref.version} announced with another checksum")
        self._check_fresh(new, now)
        if old is None or (new.version, new.created, new.expires) != (old.version, old.created, old.expires):
            self.manifest, self.manifest_bytes = new, data
        return self.manifest  # type: ignore[return-value]

    def deadline(self, manifest: Manifest) -> float:
        """When `manifest` stops being fresh on this node: its expiry, at most max_manifest_lifetime
        after its creation, plus clock_skew."""
        return min(manifest.expires, manifest.created + self.limits.max_manifest_lifetime) + self.clock_skew

    def check_fresh(self, now: float) -> None:
        """Raise ExpiredError if the trusted manifest is no longer fresh (a source that stopped changing)."""
        if self.manifest is not None:
            self._check_fresh(self.manifest, now)

    def _check_fresh(self, manifest: Manifest, now: float) -> None:
        deadline = self.deadline(manifest)
        if deadline <= now:
            raise ExpiredError(f"manifest version {manifest.version} went stale at {when(deadline)}: "
                               "the source may be frozen or stale")

    def _read(self, data: bytes) -> Manifest:
        manifest = read_manifest(data, self.online_keys, self.limits.max_manifest_bytes,
                                 self.root.online.threshold)
        if manifest.root_version != self.root.version:
            raise SignatureError(f"manifest version {manifest.version} names root version "
                                 f"{manifest.root_version}; this node trusts root version {self.root.version}")
        return manifest

    def plan(self, name: str, cached_delta_bytes: int = 0) -> UpdatePlan | None:
        """What to fetch for list `name`; None when it is already at the manifest's version."""
        ref = self.list_ref(name)
        version, checksum = self.enforced.get(name, (0, ""))
        if version == ref.version and checksum == ref.checksum:
            return None
        plan = plan_update(name, ref, version or None, cached_delta_bytes)
        self._check_size(plan.snapshot, self.limits.max_snapshot_bytes, f"list {name} snapshot")
        if any(d.size > self.limits.max_delta_bytes for d in plan.deltas):
            plan = dataclasses.replace(plan, deltas=())  # never download past a limit: take the snapshot
        return plan

    def verify_snapshot(self, name: str, data: bytes) -> Snapshot:
        ref = self.list_ref(name)
        what = f"list {name} snapshot version {ref.version} ({ref.snapshot.path})"
        self._check_size(ref.snapshot, self.limits.max_snapshot_bytes, what)
        check_file(ref.snapshot, data, what)
        snap = read_snapshot(data, self.online_keys, self.limits.max_snapshot_bytes)
        if snap.list != name or snap.version != ref.version:
            raise FormatError(f"{what}: the file is {snap.list} version {snap.version}")
        if snap.checksum != ref.checksum:
            raise ChecksumError(f"{what}: its digest set is not the one the manifest announces")
        self._check_newer(name, snap.version, what)
        return snap

    def verify_delta(self, name: str, data: bytes, ref: DeltaRef) -> Delta:
        list_ref = self.list_ref(name)
        what = f"list {name} delta {ref.from_version}->{ref.to_version} ({ref.path})"
        if ref not in list_ref.deltas:
            raise FormatError(f"{what}: not listed in manifest version {self.manifest.version}")  # type: ignore[union-attr]
        self._check_size(ref, self.limits.max_delta_bytes, what)
        check_file(ref, data, what)
        delta = read_delta(data, self.online_keys, self.limits.max_delta_bytes)
        if (delta.list, delta.from_version, delta.to_version) != (name, ref.from_version, ref.to_version):
            raise FormatError(f"{what}: the file is {delta.list} {delta.from_version}->{delta.to_version}")
        if delta.to_version > list_ref.version:
            raise FormatError(f"{what}: goes past the manifest's version {list_ref.version}")
        if delta.from_version < self.enforced_version(name):
            raise RollbackError(f"{what}: starts before the enforced version {self.enforced_version(name)}")
        if delta.to_version == list_ref.version and delta.checksum != list_ref.checksum:
            raise ChecksumError(f"{what}: its resulting checksum is not the one the manifest announces")
        return delta

    def accept_list(self, name: str, result: ListFilter) -> None:
        """Trust `result` as list `name` at the manifest's version: the end of a snapshot or delta update."""
        self.check_list(name, result)
        self.enforced[name] = self.floor[name] = (result.version, result.checksum)

    def check_list(self, name: str, result: ListFilter) -> None:
        """What accept_list checks, without recording it (the shell caches the result in between)."""
        ref = self.list_ref(name)
        what = f"list {name} version {result.version}"
        if result.name != name or result.version != ref.version:
            raise FormatError(f"{what}: the manifest announces version {ref.version}")
        if result.checksum != ref.checksum:
            raise ChecksumError(f"{what}: the resulting set does not match the manifest's checksum")
        self._check_newer(name, result.version, what)

    def list_ref(self, name: str) -> ListRef:
        if self.manifest is None:
            raise FormatError("no trusted manifest yet")
        ref = self.manifest.lists.get(name)
        if ref is None:
            raise FormatError(f"list {name} is not in manifest version {self.manifest.version}")
        return ref

    def in_sync(self, name: str) -> bool:
        """Whether list `name` is enforced at the trusted manifest's version."""
        if self.manifest is None or name not in self.manifest.lists:
            return False
        ref = self.manifest.lists[name]
        return self.enforced.get(name) == (ref.version, ref.checksum)

    # -- internals

    def _floor(self, name: str) -> tuple[int, str]:
        """The lowest (version, checksum) list `name` may have in a new manifest."""
        floor = self.floor.get(name, (0, ""))
        if self.manifest is not None and name in self.manifest.lists:
            ref = self.manifest.lists[name]
            if ref.version > floor[0]:
                floor = (ref.version, ref.checksum)
        return floor

    def _check_newer(self, name: str, version: int, what: str) -> None:
        floor = self.floor.get(name, (0, ""))[0]
        if version <= floor:
            raise RollbackError(f"{what}: not newer than the enforced version {floor}")

    @staticmethod
    def _check_size(ref: FileRef, limit: int, what: str) -> None:
        if ref.size > limit:
            raise SizeError(f"{what}: the manifest announces {ref.size} bytes, over the limit of {limit}")

