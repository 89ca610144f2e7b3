"""`blocklist publish`: compile lists into snapshots and deltas, then sign a new manifest.

Order matters for mirrors and crashes: new snapshot and delta files are written
(atomically) first, the store's record of the publication is written in its
transaction, the manifest that names them is replaced last, the transaction
commits after that, and only then are files that the new manifest no longer
names removed (nodes fetch the version while only the commit is left). A kill
at any point leaves publish/ at the old manifest or the new one, never between;
re-running completes the work.
The next version number comes from the published manifest, so a crash between
the manifest and the store record never reuses a version; the store then sees
that its record lags the manifest and compiles the next version in full.
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pybloom_live import BloomFilter

from blocklist.core import atomic
from blocklist.core.canary import has_canary, with_canary
from blocklist.core.format.artifacts import Delta, Snapshot, diff, read_snapshot, write_delta, write_snapshot
from blocklist.core.format.bloom import build_bloom, grow_bloom
from blocklist.core.format.container import FORMAT_VERSION
from blocklist.core.format.digestset import contains, digest_array, merge_sorted, set_checksum
from blocklist.core.format.keys import key_id
from blocklist.core.format.manifest import (
    DeltaRef,
    ListRef,
    Manifest,
    file_ref,
    read_manifest,
    write_manifest,
)
from blocklist.history import record as record_entries
from blocklist.home import Home
from blocklist.store import ListInfo, Store

MANIFEST_NAME = "manifest.json"
BLOOM_GROWTH = 1.05
Progress = Callable[[str], None]


@dataclass
class PublishResult:
    published: dict[str, int] = field(default_factory=dict)   # list -> new version
    unchanged: dict[str, int] = field(default_factory=dict)   # list -> current version
    manifest_version: int = 0
    renewed: bool = False  # nothing changed, but the manifest's expiry was renewed
    retitled: list[str] = field(default_factory=list)  # lists whose metadata alone changed

    @property
    def wrote_manifest(self) -> bool:
        return bool(self.published) or self.renewed or bool(self.retitled)


def compile_snapshot(info: ListInfo, entries: array, hosts: array, counts: dict[str, int],
                     version: int, now: int, expires: int) -> Snapshot:
    return Snapshot(list=info.name, version=version, created=now, expires=expires, salt=info.salt,
                    checksum=set_checksum(entries, hosts),
                    entry_bloom=build_bloom(entries, info.error_rate),
                    host_bloom=build_bloom(hosts, info.error_rate),
                    entries=entries, hosts=hosts, counts=counts, subtree_markers=True)


def current_manifest(home: Home, key: Ed25519PrivateKey, *, allow_format_1: bool = False) -> Manifest | None:
    """The published manifest, verified with the online key `key`; None before the first publish."""
    path = home.publish_dir / MANIFEST_NAME
    if not path.exists():
        return None
    return read_manifest(path.read_bytes(), {key_id(key.public_key()): key.public_key()},
                         allow_format_1=allow_format_1)


def renewal(previous: Manifest, root_version: int, now: int, expires: int) -> Manifest:
    """`previous` fresh: the same version when only created and expires change (a plugin takes
    it as no change), the next one when it moves to another root."""
    version = previous.version + (previous.root_version != root_version)
    return Manifest(version=version, created=max(now, previous.created), expires=expires,
                    lists=previous.lists, root_version=root_version)


def resign(home: Home, key: Ed25519PrivateKey, previous: Manifest, root_version: int, now: int,
           expires: int) -> Manifest:
    """Write the renewal of `previous` as the published manifest."""
    manifest = renewal(previous, root_version, now, expires)
    atomic.write_bytes(home.publish_dir / MANIFEST_NAME, write_manifest(manifest, [key]))
    return manifest


def _grown_bloom(bloom: BloomFilter, added: array, values: array, rate: float) -> BloomFilter:
    """The previous filter plus `added`, or a fresh one once it would be too full.

    Removed digests stay set in a grown filter (refuted hits, never blocks); a
    rebuild drops them. Growing up to BLOOM_GROWTH of capacity keeps the
    false-positive rate near the configured one.
    """
    if bloom.error_rate != rate or bloom.count + len(added) > bloom.capacity * BLOOM_GROWTH:
        return build_bloom(values, rate)
    return grow_bloom(bloom, added)


def _changes(store: Store, info: ListInfo, old: Snapshot) -> tuple[array, array, array, array]:
    """(entries added, removed, hosts added, removed) since `old`, from the store's journal."""
    entry_state, host_state = store.touched_changes(info)
    return (digest_array(v for v, present in entry_state.items() if present and not contains(old.entries, v)),
            digest_array(v for v, present in entry_state.items() if not present and contains(old.entries, v)),
            digest_array(v for v, present in host_state.items() if present and not contains(old.hosts, v)),
            digest_array(v for v, present in host_state.items() if not present and contains(old.hosts, v)))


def _compile(home: Home, store: Store, info: ListInfo, before: ListRef | None, keys: dict,
             version: int, now: int, expires: int, progress: Progress) -> tuple[Snapshot, Delta | None] | None:
    """The new snapshot (and delta from `before`) of a list, or None if it did not change.

    When the previous snapshot is at hand and the store recorded its publication,
    only the digests the store journalled since are looked at (a fast delta
    publish); otherwise the whole list is compiled.
    """
    old = None
    if before is not None and (home.publish_dir / before.snapshot.path).exists():
        old = read_snapshot((home.publish_dir / before.snapshot.path).read_bytes(), keys)
    counts = store.count(info)
    # The journal path needs a previous snapshot of the current layout; one written
    # before subtree markers, the canary or the current format existed is recompiled in
    # full (its delta brings the new digests). The journal never touches the canary's
    # digests: the store refuses names in its zone.
    if (old is not None and before is not None and old.subtree_markers and old.format_version == FORMAT_VERSION
            and store.last_published(info) == before.version
            and has_canary(info.name, info.salt, old.entries, old.hosts)):
        e_add, e_rem, h_add, h_rem = _changes(store, info, old)
        if not (e_add or e_rem or h_add or h_rem):
            return None
        progress(f"applying {len(e_add) + len(e_rem) + len(h_add) + len(h_rem)} changes to {info.name}")
        entries = merge_sorted(old.entries, e_add, e_rem)
        hosts = merge_sorted(old.hosts, h_add, h_rem)
        snap = Snapshot(list=info.name, version=version, created=now, expires=expires, salt=info.salt,
                        checksum=set_checksum(entries, hosts),
                        entry_bloom=_grown_bloom(old.entry_bloom, e_add, entries, info.error_rate),
                        host_bloom=_grown_bloom(old.host_bloom, h_add, hosts, info.error_rate),
                        entries=entries, hosts=hosts, counts=counts, subtree_markers=True)
        return snap, Delta(info.name, old.version, version, now, snap.checksum, e_add, e_rem, h_add, h_rem,
                           subtree_markers=True)
    progress(f"compiling {info.name} ({sum(counts.values())} entries)")
    # the canary (blocklist.core.canary): in every snapshot, in no store row
    entries, hosts = with_canary(info.name, info.salt, *store.digest_sets(info))
    if before is not None and before.checksum == set_checksum(entries, hosts):
        return None
    snap = compile_snapshot(info, entries, hosts, counts, version, now, expires)
    return snap, diff(info.name, old, snap, now) if old is not None else None


def publish(home: Home, store: Store, actor: str, only: list[str] | None = None,
            now: int | None = None, progress: Progress = lambda msg: None,
            prepare: Callable[[], None] | None = None, expires_in: int | None = None) -> PublishResult:
    """Publish every list (or `only` these) that changed since its last version.

    The whole run holds the store's write lock, so what is published is exactly
    what the store holds, and the publication is recorded with it, together with
    the entries each new version holds (blocklist.history). `prepare` runs first
    inside that transaction: a change made there (a revert) commits with its
    publication or not at all. The manifest lives `expires_in` seconds (default:
    expires_hours of blocklist.yaml).
    """
    config = home.config()
    key, root = home.online_key()
    keys = {key_id(key.public_key()): key.public_key()}
    now = int(time.time()) if now is None else now
    expires = now + (expires_in or int(config.expires_hours * 3600))
    previous = current_manifest(home, key)
    lists = dict(previous.lists) if previous else {}
    result = PublishResult()
    with store.transaction():
        if prepare is not None:
            prepare()
        infos = [store.require_list(name) for name in only] if only else store.lists()
        for info in infos:
            before = lists.get(info.name)
            version = max(before.version if before else 0, store.last_published(info)) + 1
            compiled = _compile(home, store, info, before, keys, version, now, expires, progress)
            if compiled is None:
                result.unchanged[info.name] = before.version if before else 0
                continue
            snap, delta = compiled
            lists[info.name] = write_list_files(home, key, snap, delta, before, config.keep_versions)
            result.published[info.name] = version
        for info in infos:  # who blocks with each list, signed with the manifest
            ref, meta = lists.get(info.name), store.list_meta(info)
            if ref is not None and ref.meta != meta:
                lists[info.name] = replace(ref, meta=meta)
                if info.name not in result.published:
                    result.retitled.append(info.name)

        lifetime = expires - now
        manifest: Manifest | None = None
        if (not result.published and not result.retitled and previous is not None
                and previous.expires - now > lifetime / 2):
            result.manifest_version = previous.version
        elif not result.published and not result.retitled and previous is not None:
            result.renewed = True  # nothing changed: the same version, re-signed with a fresh expiry
            manifest = renewal(previous, root.version, now, expires)
        else:
            manifest = Manifest(version=(previous.version if previous else 0) + 1, created=now,
                                expires=expires, lists=lists, root_version=root.version)
        if manifest is not None:
            result.manifest_version = manifest.version
            detail = ({"published": {}, "renewed": True} if result.renewed else
                      {"published": result.published, "renewed": False, "retitled": result.retitled})
            store.audit(actor, "publish", "", {"manifest": manifest.version, **detail})
        for info in infos:
            ref = lists.get(info.name)
            if ref is not None:
                if store.last_published(info) < ref.version:
                    # The store holds what ref.version publishes: compiled from it just now, or
                    # found unchanged after a crash that left the manifest ahead of the store.
                    record_entries(store, info, ref.version)
                    store.record_publication(info, ref.version, ref.checksum, ref.entries)
                store.clear_touched(info)
        # The manifest last, once the store's statements have run: they commit right after it
        # (a failed write rolls them back), and nodes see the version while only the commit is left.
        if manifest is not None:
            atomic.write_bytes(home.publish_dir / MANIFEST_NAME, write_manifest(manifest, [key]))
    if result.wrote_manifest:
        prune(home.publish_dir, lists, config.keep_versions)
    return result


def write_list_files(home: Home, key: Ed25519PrivateKey, snap: Snapshot, delta: Delta | None,
                before: ListRef | None, keep: int) -> ListRef:
    """Write a list's new snapshot and delta files; returns its manifest entry."""
    folder = home.publish_dir / "lists" / snap.list
    folder.mkdir(parents=True, exist_ok=True)
    data = write_snapshot(snap, key)
    snap_path = f"lists/{snap.list}/snapshot-{snap.version}"
    atomic.write_bytes(home.publish_dir / snap_path, data)
    deltas = [d for d in before.deltas if d.to_version > snap.version - keep] if before else []
    if delta is not None:
        delta_data = write_delta(delta, key)
        delta_path = f"lists/{snap.list}/delta-{delta.from_version}-{delta.to_version}"
        atomic.write_bytes(home.publish_dir / delta_path, delta_data)
        ref = file_ref(delta_path, delta_data)
        deltas.append(DeltaRef(ref.path, ref.size, ref.sha256, delta.from_version, delta.to_version))
    return ListRef(version=snap.version, checksum=snap.checksum, entries=sum(snap.counts.values()),
                   snapshot=file_ref(snap_path, data), deltas=tuple(deltas))


def prune(publish_dir: Path, lists: dict[str, ListRef], keep: int) -> None:
    """Remove snapshots and deltas older than the last `keep` versions and not named."""
    named = {ref.snapshot.path for ref in lists.values()}
    named |= {d.path for ref in lists.values() for d in ref.deltas}
    for name, ref in lists.items():
        folder = publish_dir / "lists" / name
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            rel = f"lists/{name}/{path.name}"
            if rel in named or not path.name.startswith(("snapshot-", "delta-")):
                continue
            try:
                version = int(path.name.rsplit("-", 1)[1])
            except ValueError:
                continue
            if version <= ref.version - keep or path.name.startswith("."):
                path.unlink(missing_ok=True)
