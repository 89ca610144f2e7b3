"""The root document: which root keys (k of n) vouch for which online keys, and how a root is replaced.

    {"signed": {"type": "blocklist/root", "spec_version": 1, "version": N, "created": T,
                "keys": {key_id: base64 raw public key},
                "roles": {"root": {"keys": [key_id], "threshold": k},
                          "online": {"keys": [key_id], "threshold": 1}}},
     "signatures": [{"key_id", "sig"}]}

Root keys stay offline and sign root documents only; online keys sign
manifests, snapshots and deltas. A plugin pins a root (what `blocklist key
export` prints) and walks forward: root N+1 counts only when a threshold of
root N's root keys AND a threshold of its own root keys signed it, and its
version is exactly N+1 (the rules of TUF's root rotation).

A bare Ed25519 public key pinned from before root documents existed reads as
root version 0 whose one key is both root and online key (`bare_key_root`);
the hotline signs root version 1 with its online key too, so such a node
walks on to it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from blocklist.core.errors import FormatError, SignatureError
from blocklist.core.format.envelope import Envelope, count_signers, open_envelope, require_threshold, seal
from blocklist.core.format.keys import key_id, load_public_key, public_key_from_raw, raw_public_key
from blocklist.core.format.strictjson import count_field, typed_field

__all__ = ["ROOT_TYPE", "ROOT_FORMAT", "MAX_ROOT", "MAX_ROLE_KEYS", "Role", "Root", "make_root",
           "write_root", "read_root", "read_next_root", "bare_key_root", "read_anchor"]

ROOT_TYPE = "blocklist/root"
ROOT_FORMAT = 1
MAX_ROOT = 256 * 1024
MAX_ROLE_KEYS = 16


@dataclass(frozen=True)
class Role:
    keys: tuple[str, ...]  # key ids, each in Root.keys
    threshold: int


@dataclass(frozen=True)
class Root:
    version: int
    created: int
    keys: Mapping[str, Ed25519PublicKey]
    root: Role
    online: Role
    bare_key: bool = False  # a pinned bare public key (version 0), not a root document

    def role_keys(self, role: Role) -> dict[str, Ed25519PublicKey]:
        return {kid: self.keys[kid] for kid in role.keys}

    @property
    def online_keys(self) -> dict[str, Ed25519PublicKey]:
        return self.role_keys(self.online)

    @property
    def root_keys(self) -> dict[str, Ed25519PublicKey]:
        return self.role_keys(self.root)


def make_root(version: int, created: int, root_keys: Sequence[Ed25519PublicKey], threshold: int,
              online_keys: Sequence[Ed25519PublicKey]) -> Root:
    keys = {key_id(k): k for k in (*root_keys, *online_keys)}
    root = Role(tuple(dict.fromkeys(key_id(k) for k in root_keys)), threshold)
    online = Role(tuple(dict.fromkeys(key_id(k) for k in online_keys)), 1)
    for name, role in (("root", root), ("online", online)):
        _check_role(role, name, f"root version {version}")
    return Root(version, created, keys, root, online)


def _root_signed(root: Root) -> dict[str, Any]:
    return {"type": ROOT_TYPE, "spec_version": ROOT_FORMAT, "version": root.version, "created": root.created,
            "keys": {kid: raw_public_key(k) for kid, k in sorted(root.keys.items())},
            "roles": {name: {"keys": list(role.keys), "threshold": role.threshold}
                      for name, role in (("root", root.root), ("online", root.online))}}


def write_root(root: Root, private_keys: Sequence[Ed25519PrivateKey]) -> bytes:
    """The root document signed by each of `private_keys` (old and new root keys, for a rotation)."""
    return seal(_root_signed(root), private_keys)


def _check_role(role: Role, name: str, what: str) -> None:
    if not 1 <= len(role.keys) <= MAX_ROLE_KEYS:
        raise FormatError(f"{what}: role {name} names {len(role.keys)} keys (1 to {MAX_ROLE_KEYS})")
    if not 1 <= role.threshold <= len(role.keys):
        raise FormatError(f"{what}: role {name} threshold {role.threshold} is not 1 to {len(role.keys)}")


def _role(signed: dict[str, Any], name: str, keys: Mapping[str, Any], what: str) -> Role:
    item = typed_field(typed_field(signed, "roles", dict, what), name, dict, what)
    ids = typed_field(item, "keys", list, what)
    if len(ids) > MAX_ROLE_KEYS or not all(isinstance(k, str) and k in keys for k in ids) \
            or len(set(ids)) != len(ids):
        raise FormatError(f"{what}: role {name} names unknown or repeated keys")
    role = Role(tuple(ids), count_field(item, "threshold", what, MAX_ROLE_KEYS))
    _check_role(role, name, what)
    return role


def _parse(data: bytes) -> tuple[Root, Envelope]:
    what = "root"
    envelope = open_envelope(data, what, MAX_ROOT)
    signed = envelope.signed
    if signed.get("type") != ROOT_TYPE:
        raise FormatError(f"{what}: not a blocklist root document")
    if signed.get("spec_version") != ROOT_FORMAT:
        raise FormatError(f"{what}: format {str(signed.get('spec_version'))[:8]} is not {ROOT_FORMAT}: "
                          "upgrade blocklist-plugin")
    version = count_field(signed, "version", what)
    what = f"root version {version}"
    raw_keys = typed_field(signed, "keys", dict, what)
    if len(raw_keys) > 2 * MAX_ROLE_KEYS:
        raise FormatError(f"{what}: more than {2 * MAX_ROLE_KEYS} keys")
    keys = {}
    for kid, raw in raw_keys.items():
        key = public_key_from_raw(raw)
        if key_id(key) != kid:
            raise FormatError(f"{what}: a key id does not match its key")
        keys[kid] = key
    root = Root(version, count_field(signed, "created", what), keys,
                _role(signed, "root", keys, what), _role(signed, "online", keys, what))
    return root, envelope


def read_root(data: bytes) -> Root:
    """A root document that a threshold of its own root keys signed (a pinned root, or the cache's)."""
    root, envelope = _parse(data)
    require_threshold(count_signers(envelope, root.root_keys), root.root.keys, root.root.threshold,
                      f"root version {root.version}: signatures of its own root keys")
    return root


def read_next_root(trusted: Root, data: bytes) -> Root:
    """Root `trusted.version + 1`, signed by a threshold of the trusted root keys and of its own."""
    root, envelope = _parse(data)
    what = f"root version {root.version}"
    if root.version != trusted.version + 1:
        raise FormatError(f"{what}: expected root version {trusted.version + 1}")
    require_threshold(count_signers(envelope, trusted.root_keys), trusted.root.keys, trusted.root.threshold,
                      f"{what}: signatures of the root keys of version {trusted.version}")
    require_threshold(count_signers(envelope, root.root_keys), root.root.keys, root.root.threshold,
                      f"{what}: signatures of its own root keys")
    return root


def bare_key_root(key: Ed25519PublicKey) -> Root:
    """What a pinned bare public key means: root version 0 whose one key is root and online key."""
    kid = key_id(key)
    return Root(0, 0, {kid: key}, Role((kid,), 1), Role((kid,), 1), bare_key=True)


def read_anchor(data: bytes) -> Root:
    """The trust anchor plugin.yaml pins: a root document, or a bare PEM or base64 public key."""
    if data.lstrip().startswith(b"{"):
        return read_root(data)
    try:
        return bare_key_root(load_public_key(data))
    except SignatureError:
        raise SignatureError("neither a root document (`blocklist key export`) nor a public key") from None
