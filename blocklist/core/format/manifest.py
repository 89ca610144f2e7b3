"""The signed manifest: canonical JSON of the lists' files, sizes and hashes, and the key chain.

    {"signed": {"type", "spec_version", "version", "created", "expires",
                "lists": {name: {"version", "checksum", "entries", "snapshot", "deltas", ["meta"]}},
                "key_chain": [{"new_key", "signed_by", "sig"}]},
     "signatures": [{"key_id", "sig"}]}

Each signature is over the canonical JSON of "signed", however the file itself is
laid out. A key chain link is signed by the key it replaces, over ROTATION_CONTEXT
and the 32 raw bytes of the new key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from blocklist.core.errors import ChecksumError, FormatError, SignatureError, SizeError
from blocklist.core.format.keys import Keyring, key_id, verify_signature
from blocklist.core.format.listmeta import ListMeta, meta_from_json
from blocklist.core.format.strictjson import (
    canonical_json,
    check_list_name,
    count_field,
    strict_loads,
    typed_field,
)

__all__ = [
    "MAX_MANIFEST", "MANIFEST_TYPE", "ROTATION_CONTEXT", "FileRef", "DeltaRef", "ListRef",
    "KeyRotation", "Manifest", "file_ref", "manifest_signed", "write_manifest", "sign_rotation",
    "follow_key_chain", "read_manifest", "check_file",
]

MAX_MANIFEST = 4 * 1024 * 1024
SPEC_VERSION = 1  # of the manifest; snapshots and deltas have their own (container.FORMAT_VERSION)
MANIFEST_TYPE = "blocklist/manifest"
ROTATION_CONTEXT = b"blocklist key rotation v1\x00"


@dataclass(frozen=True)
class FileRef:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class DeltaRef(FileRef):
    from_version: int = 0
    to_version: int = 0


@dataclass(frozen=True)
class ListRef:
    version: int
    checksum: str
    entries: int
    snapshot: FileRef
    deltas: tuple[DeltaRef, ...] = ()
    meta: ListMeta = ListMeta()  # who blocks with it (blocklist.core.format.listmeta); optional


@dataclass(frozen=True)
class KeyRotation:
    """"`new_key` replaces `signed_by`": a link of the key chain, signed by the old key."""

    new_key: str   # base64 of the 32 raw public key bytes
    signed_by: str  # key id of the key it replaces
    sig: str       # base64 Ed25519 signature over ROTATION_CONTEXT + raw new key


@dataclass(frozen=True)
class Manifest:
    version: int
    created: int
    expires: int
    lists: dict[str, ListRef]
    key_chain: tuple[KeyRotation, ...] = ()
    signed_by: str = ""  # key id that signed it (set by the reader)


def file_ref(path: str, data: bytes) -> FileRef:
    return FileRef(path=path, size=len(data), sha256=hashlib.sha256(data).hexdigest())


def _ref_json(ref: FileRef) -> dict[str, Any]:
    return {"path": ref.path, "size": ref.size, "sha256": ref.sha256}


def manifest_signed(manifest: Manifest) -> dict[str, Any]:
    return {
        "type": MANIFEST_TYPE, "spec_version": SPEC_VERSION, "version": manifest.version,
        "created": manifest.created, "expires": manifest.expires,
        "lists": {name: _list_json(ref) for name, ref in sorted(manifest.lists.items())},
        "key_chain": [{"new_key": r.new_key, "signed_by": r.signed_by, "sig": r.sig}
                      for r in manifest.key_chain],
    }


def _list_json(ref: ListRef) -> dict[str, Any]:
    out = {"version": ref.version, "checksum": ref.checksum, "entries": ref.entries,
           "snapshot": _ref_json(ref.snapshot),
           "deltas": [dict(_ref_json(d), **{"from": d.from_version, "to": d.to_version}) for d in ref.deltas]}
    if ref.meta:
        out["meta"] = ref.meta.as_json()
    return out


def write_manifest(manifest: Manifest, private_keys: list[Ed25519PrivateKey]) -> bytes:
    signed = manifest_signed(manifest)
    message = canonical_json(signed)
    signatures = [{"key_id": key_id(k.public_key()), "sig": base64.b64encode(k.sign(message)).decode()}
                  for k in private_keys]
    doc = {"signed": signed, "signatures": signatures}
    return json.dumps(doc, sort_keys=True, indent=1).encode("ascii") + b"\n"


def sign_rotation(old: Ed25519PrivateKey, new: Ed25519PublicKey) -> KeyRotation:
    raw = new.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return KeyRotation(new_key=base64.b64encode(raw).decode(), signed_by=key_id(old.public_key()),
                       sig=base64.b64encode(old.sign(ROTATION_CONTEXT + raw)).decode())


def follow_key_chain(trusted: Keyring, chain: tuple[KeyRotation, ...]) -> dict[str, Ed25519PublicKey]:
    """The keys trusted after walking `chain` from `trusted`.

    A link counts only when it is signed by a key trusted at that point; the key
    it replaces stops being trusted, so a rotation also revokes the old key.
    """
    keys = dict(trusted)
    for link in chain:
        old = keys.get(link.signed_by)
        if old is None:
            continue  # a link from before our pinned key, or from another branch
        try:
            raw = base64.b64decode(link.new_key, validate=True)
            new = Ed25519PublicKey.from_public_bytes(raw)
            old.verify(base64.b64decode(link.sig, validate=True), ROTATION_CONTEXT + raw)
        except (ValueError, binascii.Error, InvalidSignature):
            raise SignatureError(f"key chain: bad rotation signed by {link.signed_by}") from None
        del keys[link.signed_by]
        keys[key_id(new)] = new
    return keys


def read_manifest(data: bytes, keys: Keyring, max_size: int = MAX_MANIFEST) -> Manifest:
    """Parse and verify a manifest; `keys` are the pinned keys, the chain may extend them."""
    what = "manifest"
    if len(data) > max_size:
        raise SizeError(f"{what}: {len(data)} bytes exceeds the limit of {max_size}")
    doc = strict_loads(data, what)
    signed = typed_field(doc, "signed", dict, what)
    signatures = typed_field(doc, "signatures", list, what)
    if signed.get("type") != MANIFEST_TYPE or signed.get("spec_version") != SPEC_VERSION:
        raise FormatError(f"{what}: not a version {SPEC_VERSION} blocklist manifest")
    chain = tuple(_rotation(item, what) for item in typed_field(signed, "key_chain", list, what))
    trusted = follow_key_chain(keys, chain)
    message = canonical_json(signed)
    signer, errors = "", []
    for item in signatures:
        try:
            kid = typed_field(item, "key_id", str, what)
            sig = base64.b64decode(typed_field(item, "sig", str, what), validate=True)
            verify_signature(trusted, kid, sig, message)
        except (SignatureError, FormatError, binascii.Error, ValueError) as exc:
            errors.append(str(exc))
            continue
        signer = kid
        break
    if not signer:
        raise SignatureError(f"{what}: no valid signature by a trusted key ({'; '.join(errors) or 'unsigned'})")
    lists = typed_field(signed, "lists", dict, what)
    return Manifest(version=count_field(signed, "version", what),
                    created=count_field(signed, "created", what),
                    expires=count_field(signed, "expires", what),
                    lists={check_list_name(name): _list_ref(ref, f"{what}: list {name}")
                           for name, ref in lists.items()},
                    key_chain=chain, signed_by=signer)


def _rotation(item: Any, what: str) -> KeyRotation:
    return KeyRotation(new_key=typed_field(item, "new_key", str, what),
                       signed_by=typed_field(item, "signed_by", str, what),
                       sig=typed_field(item, "sig", str, what))


def _file_ref(item: Any, what: str) -> FileRef:
    path = typed_field(item, "path", str, what)
    if path.startswith("/") or ".." in path.split("/") or "\\" in path or len(path) > 512:
        raise FormatError(f"{what}: unsafe path {path!r}")
    sha = typed_field(item, "sha256", str, what)
    if len(sha) != 64 or not all(c in "0123456789abcdef" for c in sha):
        raise FormatError(f"{what}: bad sha256")
    return FileRef(path=path, size=count_field(item, "size", what), sha256=sha)


def _list_ref(item: Any, what: str) -> ListRef:
    deltas = []
    for d in typed_field(item, "deltas", list, what):
        ref = _file_ref(d, what)
        deltas.append(DeltaRef(path=ref.path, size=ref.size, sha256=ref.sha256,
                               from_version=count_field(d, "from", what),
                               to_version=count_field(d, "to", what)))
    return ListRef(version=count_field(item, "version", what),
                   checksum=typed_field(item, "checksum", str, what),
                   entries=count_field(item, "entries", what),
                   snapshot=_file_ref(typed_field(item, "snapshot", dict, what), what),
                   deltas=tuple(deltas), meta=meta_from_json(item["meta"], what) if "meta" in item else ListMeta())


def check_file(ref: FileRef, data: bytes, what: str) -> None:
    """Mix-and-match and endless-data defence: the bytes are exactly what the manifest named."""
    if len(data) != ref.size:
        raise SizeError(f"{what}: {len(data)} bytes, manifest says {ref.size}")
    if hashlib.sha256(data).hexdigest() != ref.sha256:
        raise ChecksumError(f"{what}: SHA-256 differs from the manifest")
