"""`blocklist publish`: compile lists into snapshots and deltas, then sign a new manifest.

Order matters for mirrors and crashes: new snapshot and delta files are written
(atomically) first, the manifest that names them is replaced last, the store
records the publication after that, and only then are files that the new
manifest no longer names removed. A kill at any point leaves publish/ at the
old manifest or the new one, never between; re-running completes the work.
The next version number comes from the published manifest, so a crash between
the manifest and the store record never reuses a version.
"""

from __future__ import annotations

import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from blocklist import atomic
from blocklist.format import (
    DeltaRef, ListRef, Manifest, Snapshot, build_bloom, diff, file_ref, key_id,
    read_manifest, read_snapshot, set_checksum, write_delta, write_manifest, write_snapshot,
)
from blocklist.home import Home
from blocklist.store import ListInfo, Store

MANIFEST_NAME = "manifest.json"
Progress = Callable[[str], None]


@dataclass
class PublishResult:
    published: dict[str, int] = field(default_factory=dict)   # list -> new version
    unchanged: dict[str, int] = field(default_factory=dict)   # list -> current version
    manifest_version: int = 0
    renewed: bool = False  # nothing changed, but the manifest's expiry was renewed

    @property
    def wrote_manifest(self) -> bool:
        return bool(self.published) or self.renewed


def compile_snapshot(info: ListInfo, entries: array, hosts: array, counts: dict[str, int],
                     version: int, now: int, expires: int) -> Snapshot:
    return Snapshot(list=info.name, version=version, created=now, expires=expires, salt=info.salt,
                    checksum=set_checksum(entries, hosts),
                    entry_bloom=build_bloom(entries, info.error_rate),
                    host_bloom=build_bloom(hosts, info.error_rate),
                    entries=entries, hosts=hosts, counts=counts)


def current_manifest(home: Home, key: Ed25519PrivateKey) -> Manifest | None:
    path = home.publish_dir / MANIFEST_NAME
    if not path.exists():
        return None
    return read_manifest(path.read_bytes(), {key_id(key.public_key()): key.public_key()})


def publish(home: Home, store: Store, actor: str, only: list[str] | None = None,
            now: int | None = None, progress: Progress = lambda msg: None) -> PublishResult:
    """Publish every list (or `only` these) that changed since its last version."""
    config = home.config()
    key = home.signing_key()
    keys = {key_id(key.public_key()): key.public_key()}
    now = int(time.time()) if now is None else now
    expires = now + int(config.expires_days * 86400)
    previous = current_manifest(home, key)
    lists = dict(previous.lists) if previous else {}
    infos = [store.require_list(name) for name in only] if only else store.lists()
    result = PublishResult()

    for info in infos:
        progress(f"compiling {info.name}")
        entries, hosts = store.digest_sets(info)
        checksum = set_checksum(entries, hosts)
        before = lists.get(info.name)
        if before is not None and before.checksum == checksum:
            result.unchanged[info.name] = before.version
            continue
        version = max(before.version if before else 0, store.last_published(info)) + 1
        counts = store.count(info)
        snap = compile_snapshot(info, entries, hosts, counts, version, now, expires)
        folder = home.publish_dir / "lists" / info.name
        folder.mkdir(parents=True, exist_ok=True)
        data = write_snapshot(snap, key)
        snap_path = f"lists/{info.name}/snapshot-{version}"
        atomic.write_bytes(home.publish_dir / snap_path, data)
        deltas: list[DeltaRef] = []
        if before is not None:
            deltas = [d for d in before.deltas if d.to_version > version - config.keep_versions]
            old_path = home.publish_dir / before.snapshot.path
            if old_path.exists():
                progress(f"computing delta {before.version} -> {version} of {info.name}")
                old = read_snapshot(old_path.read_bytes(), keys)
                delta_data = write_delta(diff(info.name, old, snap, now), key)
                delta_path = f"lists/{info.name}/delta-{before.version}-{version}"
                atomic.write_bytes(home.publish_dir / delta_path, delta_data)
                ref = file_ref(delta_path, delta_data)
                deltas.append(DeltaRef(ref.path, ref.size, ref.sha256, before.version, version))
        lists[info.name] = ListRef(version=version, checksum=checksum, entries=sum(counts.values()),
                                   snapshot=file_ref(snap_path, data), deltas=tuple(deltas))
        result.published[info.name] = version

    lifetime = expires - now
    if not result.published and previous is not None and previous.expires - now > lifetime / 2:
        result.manifest_version = previous.version
        _reconcile(store, infos, lists)
        return result
    result.renewed = not result.published
    manifest = Manifest(version=(previous.version if previous else 0) + 1, created=now,
                        expires=expires, lists=lists,
                        key_chain=previous.key_chain if previous else ())
    atomic.write_bytes(home.publish_dir / MANIFEST_NAME, write_manifest(manifest, [key]))
    result.manifest_version = manifest.version
    with store.transaction():
        for info in infos:
            if info.name in result.published:
                ref = lists[info.name]
                store.record_publication(info, ref.version, ref.checksum, ref.entries)
        store.audit(actor, "publish", "", {"manifest": manifest.version,
                                           "published": result.published,
                                           "renewed": result.renewed})
    _reconcile(store, infos, lists)
    _prune(home.publish_dir, manifest, config.keep_versions)
    return result


def _reconcile(store: Store, infos: list[ListInfo], lists: dict[str, ListRef]) -> None:
    """Record versions a crash left published but unrecorded (manifest written, store not)."""
    missing = [(info, lists[info.name]) for info in infos
               if info.name in lists and store.last_published(info) < lists[info.name].version]
    if missing:
        with store.transaction():
            for info, ref in missing:
                store.record_publication(info, ref.version, ref.checksum, ref.entries)


def _prune(publish_dir: Path, manifest: Manifest, keep: int) -> None:
    """Remove snapshots and deltas older than the last `keep` versions and not named."""
    named = {ref.snapshot.path for ref in manifest.lists.values()}
    named |= {d.path for ref in manifest.lists.values() for d in ref.deltas}
    for name, ref in manifest.lists.items():
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
