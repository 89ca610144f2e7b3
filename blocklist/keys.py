"""`blocklist key rotate`: replace the signing key and announce the new one in the manifest's key chain.

Plugins pin one public key. A rotation adds a link "new key replaces old key",
signed by the old key, to the manifest's key_chain and signs the manifest with
the new key: a plugin follows the chain from its pinned key (format.read_manifest)
and from then on trusts only the new key for manifests. Snapshots and deltas
already published keep their old signatures; they stay valid because the
manifest binds them by SHA-256 (see resolver_plugin.trust).

Steps, each crash-safe and resumable:
  1. keep the current key as keys/signing-<old id>.key (0600);
  2. replace keys/signing.key with a new key (0600);
  3. write a new manifest version: same lists, the chain plus the new link,
     signed by the new key.
A crash after 2 leaves a manifest signed by an archived key: `blocklist
publish` then refuses it (the manifest is not signed by the current key) and
re-running `blocklist key rotate` completes step 3 with the key already made.
"""

from __future__ import annotations

import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from blocklist import atomic
from blocklist.errors import SignatureError, StoreError
from blocklist.format import (
    Manifest, key_id, load_private_key, private_key_bytes, read_manifest, sign_rotation,
    write_manifest,
)
from blocklist.home import Home
from blocklist.publish import MANIFEST_NAME
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
    """Every public key that signed something still published: the current one and archived ones.

    publish.py should verify the previous snapshot with these (not only the current
    key) so the first publish after a rotation can compute its delta.
    """
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
    current = home.signing_key()
    archive = archived_keys(home)
    candidates = {kid: k.public_key() for kid, k in archive.items()}
    candidates[key_id(current.public_key())] = current.public_key()
    data = manifest_path.read_bytes()
    previous = read_manifest(data, candidates)

    if previous.signed_by == key_id(current.public_key()):
        old, new = current, Ed25519PrivateKey.generate()
        atomic.write_bytes(archived_key_path(home, key_id(old.public_key())), private_key_bytes(old),
                           mode=0o600)
        atomic.write_bytes(home.key_path, private_key_bytes(new), mode=0o600)
    elif previous.signed_by in archive:  # resume: step 2 happened, step 3 did not
        old, new = archive[previous.signed_by], current
    else:  # pragma: no cover - read_manifest only accepts candidate signers
        raise SignatureError(f"{manifest_path}: signed by unknown key {previous.signed_by}")

    now = int(time.time()) if now is None else now
    manifest = Manifest(version=previous.version + 1, created=now,
                        expires=now + int(home.config().expires_days * 86400), lists=previous.lists,
                        key_chain=previous.key_chain + (sign_rotation(old, new.public_key()),))
    atomic.write_bytes(manifest_path, write_manifest(manifest, [new]))
    old_id, new_id = key_id(old.public_key()), key_id(new.public_key())
    store = Store(home.store_path)
    try:
        with store.transaction():
            store.audit(actor, "key-rotate", "", {"old_key": old_id, "new_key": new_id,
                                                  "manifest": manifest.version})
    finally:
        store.close()
    return new_id
