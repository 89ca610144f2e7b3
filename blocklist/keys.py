"""`blocklist key rotate`: replace the signing key and announce the new one in the manifest's key chain.

Plugins pin one public key. A rotation adds a link "new key replaces old key",
signed by the old key, to the manifest's key_chain and signs the manifest with
the new key: a plugin follows the chain from its pinned key (manifest.read_manifest)
and from then on trusts only the new key for manifests.

The rotation also re-issues every list, unchanged, as a new version signed by
the new key (a snapshot and an empty delta), so that
  - a plugin installed after the rotation, pinning only the new key, can verify
    the newest snapshot (it cannot know the old public key), and
  - `blocklist publish` finds a previous snapshot signed by the current key.
Plugins that pinned the old key apply the empty delta (a few hundred bytes) and
keep their cached files, which stay valid: resolver_plugin.distribution.trust accepts files
signed by any key of the chain because the manifest binds them by SHA-256.

Steps, all under the store's write lock (no publish runs meanwhile), each
crash-safe, and the whole resumable:
  1. keep the current key as keys/signing-<old id>.key (0600);
  2. replace keys/signing.key with a new key (0600);
  3. write the re-issued list files, then a new manifest version: the chain plus
     the new link, signed by the new key; record the versions in the store.
A crash after 2 leaves a manifest signed by an archived key: `blocklist
publish` refuses it (not signed by the current key) and re-running `blocklist
key rotate` completes step 3 with the key already made.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from blocklist.core import atomic
from blocklist.core.errors import SignatureError, StoreError
from blocklist.core.format.artifacts import Delta, read_snapshot
from blocklist.core.format.digestset import digest_array
from blocklist.core.format.keys import key_id, load_private_key, private_key_bytes
from blocklist.core.format.manifest import ListRef, Manifest, read_manifest, sign_rotation, write_manifest
from blocklist.history import carry
from blocklist.home import Home
from blocklist.publish import MANIFEST_NAME, prune, write_list_files
from blocklist.store import Store


def archived_key_path(home: Home, kid: str) -> Path:
    return home.key_path.with_name(f"signing-{kid}.key")


def archived_keys(home: Home) -> dict[str, Ed25519PrivateKey]:
    """Keys replaced by earlier rotations, by key id."""
    keys = {}
    for path in sorted(home.key_path.parent.glob("signing-*.key")):
        try:
            key = load_private_key(path.read_bytes())
        except (OSError, SignatureError):
            continue
        keys[key_id(key.public_key())] = key
    return keys


def verification_keys(home: Home) -> dict[str, Ed25519PublicKey]:
    """Every public key that may have signed something still published: current and archived."""
    keys = {kid: k.public_key() for kid, k in archived_keys(home).items()}
    current = home.signing_key().public_key()
    keys[key_id(current)] = current
    return keys


def rotate_key(home: Home, actor: str, now: int | None = None) -> str:
    """Rotate the signing key (or finish an interrupted rotation); returns the new key id."""
    home.require()
    manifest_path = home.publish_dir / MANIFEST_NAME
    if not manifest_path.exists():
        raise StoreError("nothing published yet: plugins learn of a new key from the manifest, "
                         "so run `blocklist publish` first")
    config = home.config()
    now = int(time.time()) if now is None else now
    expires = now + int(config.expires_days * 86400)
    store = Store(home.store_path)
    try:
        with store.transaction():
            current = home.signing_key()
            archive = archived_keys(home)
            candidates = verification_keys(home)
            previous = read_manifest(manifest_path.read_bytes(), candidates)
            if previous.signed_by == key_id(current.public_key()):
                old, new = current, Ed25519PrivateKey.generate()
                atomic.write_bytes(archived_key_path(home, key_id(old.public_key())),
                                   private_key_bytes(old), mode=0o600)
                atomic.write_bytes(home.key_path, private_key_bytes(new), mode=0o600)
            elif previous.signed_by in archive:  # resume: step 2 happened, step 3 did not
                old, new = archive[previous.signed_by], current
            else:  # pragma: no cover - read_manifest only accepts candidate signers
                raise SignatureError(f"{manifest_path}: signed by unknown key {previous.signed_by}")

            lists = {name: _reissue(home, store, new, ref, candidates, now, expires, config.keep_versions)
                     for name, ref in previous.lists.items()}
            manifest = Manifest(version=previous.version + 1, created=now, expires=expires, lists=lists,
                                key_chain=previous.key_chain + (sign_rotation(old, new.public_key()),))
            atomic.write_bytes(manifest_path, write_manifest(manifest, [new]))
            for name, ref in lists.items():
                info = store.get_list(name)
                if info is not None and store.last_published(info) < ref.version:
                    carry(store, info, previous.lists[name].version, ref.version)
                    store.record_publication(info, ref.version, ref.checksum, ref.entries)
            old_id, new_id = key_id(old.public_key()), key_id(new.public_key())
            store.audit(actor, "key-rotate", "", {"old_key": old_id, "new_key": new_id,
                                                  "manifest": manifest.version,
                                                  "reissued": {n: r.version for n, r in lists.items()}})
    finally:
        store.close()
    prune(home.publish_dir, lists, config.keep_versions)
    return new_id


def _reissue(home: Home, store: Store, key: Ed25519PrivateKey, ref: ListRef, keys: dict,
             now: int, expires: int, keep: int) -> ListRef:
    """List `ref`'s published set again, as the next version signed by `key`."""
    path = home.publish_dir / ref.snapshot.path
    if not path.exists():
        return ref  # nothing to re-sign; plugins that pinned the old key still follow
    old = read_snapshot(path.read_bytes(), keys)
    info = store.get_list(old.list)
    version = max(ref.version, store.last_published(info) if info else 0) + 1
    snap = dataclasses.replace(old, version=version, created=now, expires=expires)
    empty = digest_array(())
    delta = Delta(old.list, old.version, version, now, old.checksum, empty, empty, empty, empty)
    return write_list_files(home, key, snap, delta, ref, keep)
