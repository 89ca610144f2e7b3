"""The signed manifest: canonical JSON of the lists' files, sizes and hashes, under one root version.

    {"signed": {"type", "spec_version": 2, "version", "created", "expires", "root_version",
                "lists": {name: {"version", "checksum", "entries", "snapshot", "deltas", ["meta"]}}},
     "signatures": [{"key_id", "sig"}]}

Each signature is over the canonical JSON of "signed" (core.format.envelope),
by an online key of root `root_version` (core.format.root). Format 1 carried a
key chain instead of a root version; this reader refuses it with an error that
says so.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from blocklist.core.errors import ChecksumError, FormatError, SignatureError, SizeError
from blocklist.core.format.envelope import Envelope, count_signers, open_envelope, seal
from blocklist.core.format.keys import Keyring, shown_id
from blocklist.core.format.listmeta import ListMeta, meta_from_json
from blocklist.core.format.strictjson import check_list_name, count_field, strict_loads, typed_field

__all__ = [
    "MAX_MANIFEST", "MANIFEST_TYPE", "MANIFEST_FORMAT", "FileRef", "DeltaRef", "ListRef", "Manifest",
    "file_ref", "manifest_signed", "write_manifest", "read_manifest", "root_version_hint", "check_file",
]

MAX_MANIFEST = 4 * 1024 * 1024
MANIFEST_TYPE = "blocklist/manifest"
MANIFEST_FORMAT = 2  # 1: signed by a key chain, before root documents; snapshots and deltas have their
#                     own (container.FORMAT_VERSION)


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
class Manifest:
    version: int
    created: int
    expires: int
    lists: dict[str, ListRef]
    root_version: int = 1  # the root whose online key signs it
    signed_by: str = ""  # key id that signed it (set by the reader)

    def same_content(self, other: Manifest) -> bool:
        """The same version naming the same files under the same root: a re-signed copy, not a change."""
        return (self.version, self.root_version, self.lists) == (other.version, other.root_version, other.lists)


def file_ref(path: str, data: bytes) -> FileRef:
    return FileRef(path=path, size=len(data), sha256=hashlib.sha256(data).hexdigest())


def _ref_json(ref: FileRef) -> dict[str, Any]:
    return {"path": ref.path, "size": ref.size, "sha256": ref.sha256}


def manifest_signed(manifest: Manifest) -> dict[str, Any]:
    return {
        "type": MANIFEST_TYPE, "spec_version": MANIFEST_FORMAT, "version": manifest.version,
        "created": manifest.created, "expires": manifest.expires, "root_version": manifest.root_version,
        "lists": {name: _list_json(ref) for name, ref in sorted(manifest.lists.items())},
    }


def _list_json(ref: ListRef) -> dict[str, Any]:
    out = {"version": ref.version, "checksum": ref.checksum, "entries": ref.entries,
           "snapshot": _ref_json(ref.snapshot),
           "deltas": [dict(_ref_json(d), **{"from": d.from_version, "to": d.to_version}) for d in ref.deltas]}
    if ref.meta:
        out["meta"] = ref.meta.as_json()
    return out


def write_manifest(manifest: Manifest, private_keys: list[Ed25519PrivateKey]) -> bytes:
    return seal(manifest_signed(manifest), private_keys)


def _check_format(envelope: Envelope, what: str, allow_format_1: bool) -> int:
    """The manifest's format: MANIFEST_FORMAT, or 1 where the hotline upgrades its own."""
    signed = envelope.signed
    if signed.get("type") != MANIFEST_TYPE:
        raise FormatError(f"{what}: not a blocklist manifest")
    spec = signed.get("spec_version")
    if spec == 1 and allow_format_1:
        return 1
    if spec == 1:
        raise FormatError(f"{what}: format 1, from a hotline older than root keys: upgrade the hotline "
                          "(`blocklist init --root-dir DIR` on its home)")
    if spec != MANIFEST_FORMAT:
        raise FormatError(f"{what}: format {str(spec)[:8]} is newer than {MANIFEST_FORMAT}: upgrade blocklist")
    return MANIFEST_FORMAT


def root_version_hint(data: bytes, max_size: int = MAX_MANIFEST) -> int:
    """The root version a manifest names, read before anything is verified: how far to walk the roots.

    read_manifest checks it afterwards against the root the walk reached.
    """
    if len(data) > max_size:
        raise SizeError(f"manifest: {len(data)} bytes exceeds the limit of {max_size}")
    doc = strict_loads(data, "manifest")
    signed = typed_field(doc, "signed", dict, "manifest") if isinstance(doc, dict) else None
    if not isinstance(signed, dict):
        raise FormatError("manifest: not a JSON object")
    return count_field(signed, "root_version", "manifest") if "root_version" in signed else 0


def read_manifest(data: bytes, keys: Keyring, max_size: int = MAX_MANIFEST, threshold: int = 1, *,
                  allow_format_1: bool = False) -> Manifest:
    """Parse and verify a manifest signed by `threshold` of `keys` (the online keys of its root)."""
    what = "manifest"
    envelope = open_envelope(data, what, max_size)
    spec = _check_format(envelope, what, allow_format_1)
    signed = envelope.signed
    signers = count_signers(envelope, keys)
    if len(signers) < threshold:
        named = [item.get("key_id") for item in envelope.signatures if isinstance(item, dict)]
        bad = sorted({shown_id(k) for k in named if isinstance(k, str) and k in keys and k not in signers})
        others = sorted({shown_id(k) for k in named if not (isinstance(k, str) and k in keys)})
        why = (f"bad signature by key {', '.join(bad[:2])}" if bad
               else f"signed by {', '.join(others[:2]) or 'nobody'}{' and others' if len(others) > 2 else ''}")
        raise SignatureError(f"{what}: no valid signature by a trusted online key ({len(signers)} of "
                             f"{threshold} needed; {why})")
    lists = typed_field(signed, "lists", dict, what)
    return Manifest(version=count_field(signed, "version", what),
                    created=count_field(signed, "created", what),
                    expires=count_field(signed, "expires", what),
                    lists={check_list_name(name): _list_ref(ref, f"{what}: list {name}")
                           for name, ref in lists.items()},
                    root_version=count_field(signed, "root_version", what) if spec > 1 else 0,
                    signed_by=min(signers))


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
