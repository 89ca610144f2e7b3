"""The only code that knows the bytes of snapshots, deltas, manifests and keys.

docs/FORMAT.md is the specification; it and this module change together.

Snapshot and delta files share one signed container:

    magic        4 bytes  b"BLKL"
    kind         1 byte   b"S" snapshot, b"D" delta
    format       1 byte   1
    reserved     2 bytes  zero
    header_len   u32 BE   at most MAX_HEADER bytes
    header       header_len bytes of canonical JSON (UTF-8, sorted keys, no spaces)
    sections     the byte strings named by header["sections"], in order
    signature    64 bytes Ed25519 over every byte before it, by header["key_id"]

The manifest is canonical JSON: {"signed": {...}, "signatures": [{"key_id", "sig"}]},
each signature over the canonical JSON of "signed".

Readers check every length against the file and the configured limits before
they allocate, verify the signature before they trust any field, and raise
FormatError (or a subclass) for anything else.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import json
import math
import operator
import struct
import sys
from array import array
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Any, Mapping

import bitarray
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from pybloom_live import BloomFilter

from blocklist.core.errors import ChecksumError, FormatError, SignatureError, SizeError

MAGIC = b"BLKL"
FORMAT_VERSION = 1
KIND_SNAPSHOT = b"S"
KIND_DELTA = b"D"
PREFIX = struct.Struct(">4sc B 2s I")  # magic, kind, format, reserved, header_len
SIG_SIZE = 64
MAX_HEADER = 64 * 1024
MAX_MANIFEST = 4 * 1024 * 1024
MAX_LIST_NAME = 64
MANIFEST_TYPE = "blocklist/manifest"
ROTATION_CONTEXT = b"blocklist key rotation v1\x00"

Keyring = Mapping[str, Ed25519PublicKey]


# ----------------------------------------------------------------------------- keys

def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_key_text(public_key: Ed25519PublicKey) -> str:
    """The PEM text `blocklist key export` prints and plugin.yaml's public_key_file reads."""
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def load_public_key(text: str | bytes) -> Ed25519PublicKey:
    """A public key from PEM, or from the base64 of its 32 raw bytes (plugin.yaml `public_key`)."""
    data = text.encode("ascii", "replace") if isinstance(text, str) else text
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_public_key(data)
        else:
            key = Ed25519PublicKey.from_public_bytes(base64.b64decode(data.strip(), validate=True))
    except (ValueError, TypeError, binascii.Error) as exc:
        raise SignatureError(f"not an Ed25519 public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError("not an Ed25519 public key")
    return key


def private_key_bytes(private_key: Ed25519PrivateKey) -> bytes:
    return private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_private_key(data: bytes) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"not an Ed25519 private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError("not an Ed25519 private key")
    return key


def _verify(keys: Keyring, kid: str, signature: bytes, message: bytes) -> None:
    key = keys.get(kid)
    if key is None:
        raise SignatureError(f"signed by unknown key {kid!r}")
    try:
        key.verify(signature, message)
    except InvalidSignature:
        raise SignatureError(f"bad signature by key {kid}") from None


# ----------------------------------------------------------------------------- json

def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number out of range: {text[:20]}")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _loads(data: bytes, what: str) -> Any:
    """Strict JSON: no NaN/Infinity, so whatever parses also re-serializes canonically."""
    try:
        return json.loads(data, parse_float=_finite, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise FormatError(f"{what}: not valid JSON ({exc})") from None


def _field(obj: Mapping[str, Any], name: str, kind: type | tuple[type, ...], what: str) -> Any:
    if not isinstance(obj, Mapping) or name not in obj:
        raise FormatError(f"{what}: missing field {name!r}")
    value = obj[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise FormatError(f"{what}: field {name!r} has the wrong type")
    return value


def _count(obj: Mapping[str, Any], name: str, what: str, maximum: int = 2**40) -> int:
    value = _field(obj, name, int, what)
    if not 0 <= value <= maximum:
        raise FormatError(f"{what}: field {name!r} out of range")
    return value


def check_list_name(name: object) -> str:
    if (not isinstance(name, str) or not 0 < len(name) <= MAX_LIST_NAME
            or not all(ch.isascii() and (ch.isalnum() or ch in "-_.") for ch in name)
            or name.startswith(".")):
        raise FormatError(f"invalid list name {name!r}: use 1-{MAX_LIST_NAME} of a-z 0-9 - _ .")
    return name


# ----------------------------------------------------------------------------- digest sets

def digest_array(values: Any) -> array:
    """A sorted, duplicate-free array('Q') of digests."""
    return array("Q", sorted(set(values)))


def contains(values: array, value: int) -> bool:
    """Membership in a sorted digest array (binary search)."""
    i = bisect_left(values, value)
    return i < len(values) and values[i] == value


def merge_sorted(base: array, added: Any, removed: Any) -> array:
    """`base` minus `removed` plus `added`, sorted and unique; `base` is not changed."""
    if not added and not removed:
        return base
    if len(added) + len(removed) > 256:  # in-place edits are O(n) each: rebuild instead
        return array("Q", sorted(set(base).difference(removed).union(added)))
    out = array("Q", base)
    for value in removed:
        i = bisect_left(out, value)
        if i < len(out) and out[i] == value:
            del out[i]
    for value in added:
        i = bisect_left(out, value)
        if i == len(out) or out[i] != value:
            out.insert(i, value)
    return out


def _array_bytes(values: array) -> bytes:
    out = array("Q", values)
    if sys.byteorder == "little":
        out.byteswap()
    return out.tobytes()


def _array_from(data: bytes, what: str) -> array:
    if len(data) % 8:
        raise FormatError(f"{what}: length is not a multiple of 8")
    out = array("Q")
    out.frombytes(data)
    if sys.byteorder == "little":
        out.byteswap()
    if not all(map(operator.lt, out, itertools.islice(out, 1, None))):
        raise FormatError(f"{what}: digests are not sorted and unique")
    return out


def set_checksum(entries: array, hosts: array) -> str:
    """SHA-256 of the whole digest set, the value deltas and manifests announce."""
    h = hashlib.sha256()
    h.update(struct.pack(">Q", len(entries)))
    h.update(_array_bytes(entries))
    h.update(struct.pack(">Q", len(hosts)))
    h.update(_array_bytes(hosts))
    return h.hexdigest()


# ----------------------------------------------------------------------------- bloom

def bloom_key(value: int) -> str:
    """The key a digest is stored under in a pybloom-live filter: 16 lowercase hex digits."""
    return format(value, "016x")


def build_bloom(values: array, error_rate: float) -> BloomFilter:
    bloom = BloomFilter(capacity=max(len(values), 1), error_rate=error_rate)
    add_to_bloom(bloom, values)
    return bloom


def add_to_bloom(bloom: BloomFilter, values: Any) -> None:
    """Set the bits of `values` without pybloom-live's capacity check.

    A plugin adds a delta's digests to the snapshot's filter; growing past its
    capacity only raises the false-positive rate, and every hit is confirmed
    against the exact digests anyway.
    """
    bits, per_slice, make_hashes = bloom.bitarray, bloom.bits_per_slice, bloom.make_hashes
    for value in values:
        offset = 0
        for k in make_hashes(bloom_key(value)):
            bits[offset + k] = True
            offset += per_slice
    bloom.count += len(values)


def grow_bloom(bloom: BloomFilter, values: Any) -> BloomFilter:
    """A copy of `bloom` with `values` added; `bloom` itself is not changed."""
    grown = BloomFilter.__new__(BloomFilter)
    grown._setup(bloom.error_rate, bloom.num_slices, bloom.bits_per_slice, bloom.capacity, bloom.count)
    grown.bitarray = bloom.bitarray.copy()
    add_to_bloom(grown, values)
    return grown


def _bloom_params(bloom: BloomFilter) -> dict[str, Any]:
    return {"error_rate": bloom.error_rate, "num_slices": bloom.num_slices,
            "bits_per_slice": bloom.bits_per_slice, "capacity": bloom.capacity,
            "count": bloom.count}


def _bloom_from(params: Any, data: bytes, what: str) -> BloomFilter:
    if not isinstance(params, Mapping):
        raise FormatError(f"{what}: bloom parameters missing")
    rate = _field(params, "error_rate", float, what)
    slices = _count(params, "num_slices", what, 64)
    per_slice = _count(params, "bits_per_slice", what, 2**36)
    capacity = _count(params, "capacity", what)
    count = _count(params, "count", what)
    if not (0 < rate < 1) or slices < 1 or per_slice < 1 or capacity < 1:
        raise FormatError(f"{what}: bloom parameters out of range")
    if len(data) != math.ceil(slices * per_slice / 8):
        raise FormatError(f"{what}: bloom section has {len(data)} bytes, "
                          f"parameters need {math.ceil(slices * per_slice / 8)}")
    bloom = BloomFilter.__new__(BloomFilter)
    bloom._setup(rate, slices, per_slice, capacity, count)
    bits = bitarray.bitarray(endian="little")
    bits.frombytes(data)
    del bits[slices * per_slice:]  # the last byte's padding
    bloom.bitarray = bits
    return bloom


# ----------------------------------------------------------------------------- container

def _pack(kind: bytes, header: dict[str, Any], sections: list[tuple[str, bytes]],
          private_key: Ed25519PrivateKey) -> bytes:
    header = dict(header, key_id=key_id(private_key.public_key()),
                  sections=[[name, len(data)] for name, data in sections])
    head = canonical_json(header)
    body = b"".join([PREFIX.pack(MAGIC, kind, FORMAT_VERSION, b"\0\0", len(head)), head]
                    + [data for _, data in sections])
    return body + private_key.sign(body)


def _unpack(data: bytes, kind: bytes, keys: Keyring, max_size: int, what: str
            ) -> tuple[dict[str, Any], dict[str, bytes]]:
    if len(data) > max_size:
        raise SizeError(f"{what}: {len(data)} bytes exceeds the limit of {max_size}")
    if len(data) < PREFIX.size + SIG_SIZE:
        raise FormatError(f"{what}: truncated ({len(data)} bytes)")
    magic, got_kind, version, _, head_len = PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise FormatError(f"{what}: not a blocklist file (bad magic)")
    if got_kind != kind:
        raise FormatError(f"{what}: wrong kind {got_kind!r}, expected {kind!r}")
    if version != FORMAT_VERSION:
        raise FormatError(f"{what}: unsupported format version {version}")
    if head_len > MAX_HEADER or PREFIX.size + head_len + SIG_SIZE > len(data):
        raise FormatError(f"{what}: header length {head_len} out of range")
    header = _loads(data[PREFIX.size:PREFIX.size + head_len], what)
    if not isinstance(header, dict):
        raise FormatError(f"{what}: header is not an object")
    kid = _field(header, "key_id", str, what)
    _verify(keys, kid, data[-SIG_SIZE:], data[:-SIG_SIZE])
    layout = _field(header, "sections", list, what)
    offset, sections = PREFIX.size + head_len, {}
    for item in layout:
        if (not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], str)
                or not isinstance(item[1], int) or item[1] < 0):
            raise FormatError(f"{what}: bad section table")
        name, length = item
        if offset + length > len(data) - SIG_SIZE:
            raise FormatError(f"{what}: section {name!r} runs past the end of the file")
        sections[name] = data[offset:offset + length]
        offset += length
    if offset != len(data) - SIG_SIZE:
        raise FormatError(f"{what}: {len(data) - SIG_SIZE - offset} unexplained bytes")
    return header, sections


def _section(sections: Mapping[str, bytes], name: str, what: str) -> bytes:
    if name not in sections:
        raise FormatError(f"{what}: missing section {name!r}")
    return sections[name]


def _digests(sections: Mapping[str, bytes], name: str, count: int, what: str) -> array:
    data = _section(sections, name, what)
    if len(data) != count * 8:
        raise FormatError(f"{what}: section {name!r} holds {len(data) // 8} digests, header says {count}")
    return _array_from(data, f"{what}: {name}")


# ----------------------------------------------------------------------------- snapshot

@dataclass(frozen=True)
class Snapshot:
    list: str
    version: int
    created: int
    expires: int
    salt: bytes
    checksum: str
    entry_bloom: BloomFilter
    host_bloom: BloomFilter
    entries: array  # sorted page/folder digests
    hosts: array    # sorted host, domain and parent-marker digests
    counts: dict[str, int] = field(default_factory=dict)  # entries by scope, informational
    subtree_markers: bool = False  # `hosts` holds subtree markers (blocklist.core.digests); publish sets it


def write_snapshot(snap: Snapshot, private_key: Ed25519PrivateKey) -> bytes:
    header = {"type": "snapshot", "list": check_list_name(snap.list), "version": snap.version,
              "created": snap.created, "expires": snap.expires, "salt": snap.salt.hex(),
              "checksum": snap.checksum, "entries": len(snap.entries), "hosts": len(snap.hosts),
              "counts": snap.counts, "digest_size": 8, "subtree_markers": snap.subtree_markers,
              "entry_bloom": _bloom_params(snap.entry_bloom),
              "host_bloom": _bloom_params(snap.host_bloom)}
    return _pack(KIND_SNAPSHOT, header, [
        ("entry_bloom", snap.entry_bloom.bitarray.tobytes()),
        ("host_bloom", snap.host_bloom.bitarray.tobytes()),
        ("entries", _array_bytes(snap.entries)),
        ("hosts", _array_bytes(snap.hosts)),
    ], private_key)


def read_snapshot(data: bytes, keys: Keyring, max_size: int = 2**31) -> Snapshot:
    what = "snapshot"
    header, sections = _unpack(data, KIND_SNAPSHOT, keys, max_size, what)
    if header.get("type") != "snapshot" or header.get("digest_size") != 8:
        raise FormatError(f"{what}: unsupported header type or digest size")
    salt = _hex(_field(header, "salt", str, what), what)
    entries = _digests(sections, "entries", _count(header, "entries", what), what)
    hosts = _digests(sections, "hosts", _count(header, "hosts", what), what)
    snap = Snapshot(
        list=check_list_name(header.get("list")), version=_count(header, "version", what),
        created=_count(header, "created", what), expires=_count(header, "expires", what),
        salt=salt, checksum=_field(header, "checksum", str, what),
        entry_bloom=_bloom_from(header.get("entry_bloom"), _section(sections, "entry_bloom", what), what),
        host_bloom=_bloom_from(header.get("host_bloom"), _section(sections, "host_bloom", what), what),
        entries=entries, hosts=hosts, counts=_counts(header.get("counts", {}), what),
        subtree_markers=_flag(header, "subtree_markers", what))
    if set_checksum(entries, hosts) != snap.checksum:
        raise ChecksumError(f"{what}: digest set does not match its checksum")
    return snap


def _hex(text: str, what: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise FormatError(f"{what}: bad hex value") from None


def _flag(header: Mapping[str, Any], name: str, what: str) -> bool:
    """An optional boolean header field; absent in files written before it existed."""
    value = header.get(name, False)
    if not isinstance(value, bool):
        raise FormatError(f"{what}: {name} must be true or false")
    return value


def _counts(value: Any, what: str) -> dict[str, int]:
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, int) for k, v in value.items()):
        raise FormatError(f"{what}: bad counts")
    return dict(value)


# ----------------------------------------------------------------------------- delta

@dataclass(frozen=True)
class Delta:
    list: str
    from_version: int
    to_version: int
    created: int
    checksum: str  # of the resulting set
    entries_added: array
    entries_removed: array
    hosts_added: array
    hosts_removed: array
    subtree_markers: bool = False  # the resulting host set holds subtree markers

    @property
    def changes(self) -> int:
        return (len(self.entries_added) + len(self.entries_removed)
                + len(self.hosts_added) + len(self.hosts_removed))


_DELTA_SECTIONS = ("entries_added", "entries_removed", "hosts_added", "hosts_removed")


def write_delta(delta: Delta, private_key: Ed25519PrivateKey) -> bytes:
    header = {"type": "delta", "list": check_list_name(delta.list),
              "from_version": delta.from_version, "to_version": delta.to_version,
              "created": delta.created, "checksum": delta.checksum,
              "subtree_markers": delta.subtree_markers}
    header.update({name: len(getattr(delta, name)) for name in _DELTA_SECTIONS})
    return _pack(KIND_DELTA, header,
                 [(name, _array_bytes(getattr(delta, name))) for name in _DELTA_SECTIONS],
                 private_key)


def read_delta(data: bytes, keys: Keyring, max_size: int = 2**31) -> Delta:
    what = "delta"
    header, sections = _unpack(data, KIND_DELTA, keys, max_size, what)
    if header.get("type") != "delta":
        raise FormatError(f"{what}: unsupported header type")
    arrays = {name: _digests(sections, name, _count(header, name, what), what)
              for name in _DELTA_SECTIONS}
    delta = Delta(list=check_list_name(header.get("list")),
                  from_version=_count(header, "from_version", what),
                  to_version=_count(header, "to_version", what),
                  created=_count(header, "created", what),
                  checksum=_field(header, "checksum", str, what),
                  subtree_markers=_flag(header, "subtree_markers", what), **arrays)
    if delta.to_version <= delta.from_version:
        raise FormatError(f"{what}: to_version must be greater than from_version")
    return delta


def diff(list_name: str, old: Snapshot, new: Snapshot, created: int) -> Delta:
    """The delta that turns `old`'s digest set into `new`'s."""
    old_e, new_e = set(old.entries), set(new.entries)
    old_h, new_h = set(old.hosts), set(new.hosts)
    return Delta(list=list_name, from_version=old.version, to_version=new.version,
                 created=created, checksum=new.checksum,
                 entries_added=digest_array(new_e - old_e),
                 entries_removed=digest_array(old_e - new_e),
                 hosts_added=digest_array(new_h - old_h),
                 hosts_removed=digest_array(old_h - new_h), subtree_markers=new.subtree_markers)


# ----------------------------------------------------------------------------- manifest

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
        "type": MANIFEST_TYPE, "spec_version": FORMAT_VERSION, "version": manifest.version,
        "created": manifest.created, "expires": manifest.expires,
        "lists": {name: {"version": ref.version, "checksum": ref.checksum, "entries": ref.entries,
                         "snapshot": _ref_json(ref.snapshot),
                         "deltas": [dict(_ref_json(d), **{"from": d.from_version, "to": d.to_version})
                                    for d in ref.deltas]}
                  for name, ref in sorted(manifest.lists.items())},
        "key_chain": [{"new_key": r.new_key, "signed_by": r.signed_by, "sig": r.sig}
                      for r in manifest.key_chain],
    }


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
    doc = _loads(data, what)
    signed = _field(doc, "signed", dict, what)
    signatures = _field(doc, "signatures", list, what)
    if signed.get("type") != MANIFEST_TYPE or signed.get("spec_version") != FORMAT_VERSION:
        raise FormatError(f"{what}: not a version {FORMAT_VERSION} blocklist manifest")
    chain = tuple(_rotation(item, what) for item in _field(signed, "key_chain", list, what))
    trusted = follow_key_chain(keys, chain)
    message = canonical_json(signed)
    signer, errors = "", []
    for item in signatures:
        try:
            kid = _field(item, "key_id", str, what)
            sig = base64.b64decode(_field(item, "sig", str, what), validate=True)
            _verify(trusted, kid, sig, message)
        except (SignatureError, FormatError, binascii.Error, ValueError) as exc:
            errors.append(str(exc))
            continue
        signer = kid
        break
    if not signer:
        raise SignatureError(f"{what}: no valid signature by a trusted key ({'; '.join(errors) or 'unsigned'})")
    lists = _field(signed, "lists", dict, what)
    return Manifest(version=_count(signed, "version", what), created=_count(signed, "created", what),
                    expires=_count(signed, "expires", what),
                    lists={check_list_name(name): _list_ref(ref, f"{what}: list {name}")
                           for name, ref in lists.items()},
                    key_chain=chain, signed_by=signer)


def _rotation(item: Any, what: str) -> KeyRotation:
    return KeyRotation(new_key=_field(item, "new_key", str, what),
                       signed_by=_field(item, "signed_by", str, what),
                       sig=_field(item, "sig", str, what))


def _file_ref(item: Any, what: str) -> FileRef:
    path = _field(item, "path", str, what)
    if path.startswith("/") or ".." in path.split("/") or "\\" in path or len(path) > 512:
        raise FormatError(f"{what}: unsafe path {path!r}")
    sha = _field(item, "sha256", str, what)
    if len(sha) != 64 or not all(c in "0123456789abcdef" for c in sha):
        raise FormatError(f"{what}: bad sha256")
    return FileRef(path=path, size=_count(item, "size", what), sha256=sha)


def _list_ref(item: Any, what: str) -> ListRef:
    deltas = []
    for d in _field(item, "deltas", list, what):
        ref = _file_ref(d, what)
        deltas.append(DeltaRef(path=ref.path, size=ref.size, sha256=ref.sha256,
                               from_version=_count(d, "from", what), to_version=_count(d, "to", what)))
    return ListRef(version=_count(item, "version", what), checksum=_field(item, "checksum", str, what),
                   entries=_count(item, "entries", what), snapshot=_file_ref(_field(item, "snapshot", dict, what), what),
                   deltas=tuple(deltas))


def check_file(ref: FileRef, data: bytes, what: str) -> None:
    """Mix-and-match and endless-data defence: the bytes are exactly what the manifest named."""
    if len(data) != ref.size:
        raise SizeError(f"{what}: {len(data)} bytes, manifest says {ref.size}")
    if hashlib.sha256(data).hexdigest() != ref.sha256:
        raise ChecksumError(f"{what}: SHA-256 differs from the manifest")
