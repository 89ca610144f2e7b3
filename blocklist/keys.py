"""Root keys and the online key: the first root, online key rotation and root key rotation.

Roles (core.format.root): root keys, k of n, stay offline and sign only root
documents (publish/root/<N>.json); the online key (keys/signing.key) signs
manifests, snapshots and deltas. Plugins pin a root and walk forward through
the published root documents.

Root private keys live in a root directory outside the home, one file
root-<id>.key (0600) each in a 0700 directory; only the three functions here
read them, and each refuses, with nothing changed, when fewer than the
threshold are at hand. A copy of the home alone cannot change who is trusted.

Every step is crash-safe and the whole is resumable by running the command
again, under the store's write lock (no publish runs meanwhile):
  rotate_key   1. the new key as keys/signing-next.key; 2. root N+1 naming it,
               signed by the root keys; 3. every list re-issued as its next
               version signed by the new key, and the manifest under root N+1;
               4. signing-next.key replaces signing.key: the retired key is
               gone from the home. Plugins that walk to root N+1 forget what
               the retired key vouched for and fetch the re-issued snapshots.
  rotate_root  1. new root keys in the new directory; 2. root N+1 naming them,
               signed by a threshold of the old and all of the new; 3. the
               manifest under root N+1.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from blocklist.core import atomic
from blocklist.core.errors import ConfigError, SignatureError, StoreError
from blocklist.core.format.artifacts import Delta, read_snapshot
from blocklist.core.format.digestset import digest_array
from blocklist.core.format.keys import key_id, load_private_key, private_key_bytes
from blocklist.core.format.manifest import ListRef, Manifest, read_manifest, write_manifest
from blocklist.core.format.root import MAX_ROLE_KEYS, Root, make_root, write_root
from blocklist.history import carry
from blocklist.home import Home
from blocklist.publish import MANIFEST_NAME, current_manifest, prune, resign, write_list_files
from blocklist.store import Store

ROOT_KEY_GLOB = "root-*.key"
NEXT_KEY_NAME = "signing-next.key"


def check_threshold(count: int, threshold: int) -> None:
    if not 1 <= threshold <= count <= MAX_ROLE_KEYS:
        raise ConfigError(f"root keys: need 1 <= threshold ({threshold}) <= keys ({count}) <= {MAX_ROLE_KEYS}")


def root_dir_keys(root_dir: Path) -> dict[str, Ed25519PrivateKey]:
    """The root private keys in `root_dir`, by key id (none if it does not exist)."""
    keys = {}
    for path in sorted(root_dir.glob(ROOT_KEY_GLOB)):
        try:
            key = load_private_key(path.read_bytes())
        except (OSError, SignatureError):
            continue
        keys[key_id(key.public_key())] = key
    return keys


def make_root_keys(home: Home, root_dir: Path, count: int) -> list[Ed25519PrivateKey]:
    """`count` new root keys in `root_dir`, which must be outside the home and hold none yet."""
    if root_dir.resolve().is_relative_to(home.root.resolve()):
        raise ConfigError(f"{root_dir}: root keys never go inside the home; give a --root-dir outside it")
    if root_dir_keys(root_dir):
        raise ConfigError(f"{root_dir} already holds root keys: give an empty directory (or remove what "
                          "an interrupted command left there)")
    root_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    keys = [Ed25519PrivateKey.generate() for _ in range(count)]
    for key in keys:
        atomic.write_bytes(root_dir / f"root-{key_id(key.public_key())}.key", private_key_bytes(key), mode=0o600)
    return keys


def signing_root_keys(root_dir: Path, root: Root) -> list[Ed25519PrivateKey]:
    """The root keys of `root` found in `root_dir`: at least its threshold, or ConfigError."""
    found = [key for kid, key in root_dir_keys(root_dir).items() if kid in root.root.keys]
    if len(found) < root.root.threshold:
        raise ConfigError(f"{root_dir}: {len(found)} of the {root.root.threshold} root keys of root version "
                          f"{root.version} needed; nothing changed (root keys are kept offline: bring them)")
    return found


def init_root(home: Home, root_dir: Path, count: int, threshold: int, actor: str,
              now: int | None = None) -> Root:
    """Root version 1 for a home without one: new root keys in `root_dir`, the home's key as online key.

    It is signed by the root keys and by the online key too, so a plugin that
    pinned that key as a bare key (before root keys) walks on to it. A home from
    before root keys has its manifest re-signed in the new format and loses the
    keys its old key chain retired.
    """
    check_threshold(count, threshold)
    now = int(time.time()) if now is None else now
    store = Store(home.store_path)
    try:
        with store.transaction():
            if home.root_version():
                raise ConfigError(f"{home.root} already has root keys (root version {home.root_version()})")
            online = home.signing_key()
            previous = current_manifest(home, online, allow_format_1=True)
            keys = make_root_keys(home, root_dir, count)
            root = make_root(1, now, [k.public_key() for k in keys], threshold, [online.public_key()])
            home.roots_dir.mkdir(parents=True, exist_ok=True)
            atomic.write_bytes(home.root_path(1), write_root(root, [*keys, online]))
            if previous is not None:
                resign(home, online, previous, 1, now, now + int(home.config().expires_hours * 3600))
            for retired in home.key_path.parent.glob("signing-*.key"):
                retired.unlink()
            store.audit(actor, "root-init", "", {"root_version": 1, "root_keys": list(root.root.keys),
                                                 "threshold": threshold, "online_key": key_id(online.public_key())})
    finally:
        store.close()
    return root


def rotate_key(home: Home, root_dir: Path, actor: str, now: int | None = None) -> str:
    """Replace the online key (or finish an interrupted rotation); returns the new key id."""
    home.require()
    manifest_path = home.publish_dir / MANIFEST_NAME
    if not manifest_path.exists():
        raise StoreError("nothing published yet: plugins learn of a new key from the manifest, "
                         "so run `blocklist publish` first")
    config = home.config()
    now = int(time.time()) if now is None else now
    expires = now + int(config.expires_hours * 3600)
    next_path = home.key_path.with_name(NEXT_KEY_NAME)
    store = Store(home.store_path)
    try:
        with store.transaction():
            root, _ = home.current_root()
            old = home.signing_key()
            waiting = load_private_key(next_path.read_bytes()) if next_path.exists() else None
            if key_id(old.public_key()) in root.online.keys:
                signers = signing_root_keys(root_dir, root)  # before anything changes
                new = waiting or Ed25519PrivateKey.generate()
                atomic.write_bytes(next_path, private_key_bytes(new), mode=0o600)
                root = make_root(root.version + 1, now, list(root.root_keys.values()), root.root.threshold,
                                 [new.public_key()])
                atomic.write_bytes(home.root_path(root.version), write_root(root, signers))
            elif waiting is not None and key_id(waiting.public_key()) in root.online.keys:
                new = waiting  # resume: root N+1 names it already
            else:
                raise ConfigError(f"{home.key_path} is not the online key of root version {root.version} "
                                  f"and no {NEXT_KEY_NAME} is: the home is not the hotline's")
            keys = {key_id(k.public_key()): k.public_key() for k in (old, new)}
            previous = read_manifest(manifest_path.read_bytes(), keys)
            lists = previous.lists
            if previous.root_version != root.version:
                lists = {name: _reissue(home, store, new, ref, keys, now, expires, config.keep_versions)
                         for name, ref in previous.lists.items()}
                manifest = Manifest(version=previous.version + 1, created=now, expires=expires, lists=lists,
                                    root_version=root.version)
                atomic.write_bytes(manifest_path, write_manifest(manifest, [new]))
            for name, ref in lists.items():
                info = store.get_list(name)
                if info is not None and store.last_published(info) < ref.version:
                    carry(store, info, previous.lists[name].version, ref.version)
                    store.record_publication(info, ref.version, ref.checksum, ref.entries)
            swap_in(next_path, home.key_path)
            old_id, new_id = key_id(old.public_key()), key_id(new.public_key())
            store.audit(actor, "key-rotate", "", {"old_key": old_id, "new_key": new_id,
                                                  "root_version": root.version,
                                                  "reissued": {n: r.version for n, r in lists.items()}})
    finally:
        store.close()
    prune(home.publish_dir, lists, config.keep_versions)
    return new_id


def rotate_root(home: Home, old_dir: Path, new_dir: Path, count: int, threshold: int, actor: str,
                now: int | None = None) -> Root:
    """Replace the root keys with `count` new ones in `new_dir`, `threshold` of them to sign."""
    check_threshold(count, threshold)
    home.require()
    now = int(time.time()) if now is None else now
    store = Store(home.store_path)
    try:
        with store.transaction():
            root, _ = home.current_root()
            online, _ = home.online_key()
            waiting = root_dir_keys(new_dir)
            if not (waiting and set(waiting) == set(root.root.keys)):  # else resume: root N+1 is out
                signers = signing_root_keys(old_dir, root)  # before anything changes
                new_keys = make_root_keys(home, new_dir, count)
                root = make_root(root.version + 1, now, [k.public_key() for k in new_keys], threshold,
                                 list(root.online_keys.values()))
                atomic.write_bytes(home.root_path(root.version), write_root(root, [*signers, *new_keys]))
            previous = current_manifest(home, online)
            if previous is not None and previous.root_version != root.version:
                resign(home, online, previous, root.version, now, now + int(home.config().expires_hours * 3600))
            store.audit(actor, "key-rotate-root", "", {"root_version": root.version,
                                                       "root_keys": list(root.root.keys),
                                                       "threshold": root.root.threshold})
    finally:
        store.close()
    return root


def swap_in(next_path: Path, key_path: Path) -> None:
    """The retired online key leaves the home: the next key replaces it in one rename."""
    os.replace(next_path, key_path)
    atomic.fsync_dir(key_path.parent)


def _reissue(home: Home, store: Store, key: Ed25519PrivateKey, ref: ListRef, keys: dict,
             now: int, expires: int, keep: int) -> ListRef:
    """List `ref`'s published set again, as the next version signed by `key`."""
    path = home.publish_dir / ref.snapshot.path
    if not path.exists():
        return ref  # nothing to re-sign
    old = read_snapshot(path.read_bytes(), keys)
    info = store.get_list(old.list)
    version = max(ref.version, store.last_published(info) if info else 0) + 1
    snap = dataclasses.replace(old, version=version, created=now, expires=expires)
    empty = digest_array(())
    delta = Delta(old.list, old.version, version, now, old.checksum, empty, empty, empty, empty,
                  subtree_markers=old.subtree_markers)
    return write_list_files(home, key, snap, delta, ref, keep)
