"""Snapshots and deltas: their headers and sections in the signed container, and `diff`.

A snapshot is a list's whole digest set at one version, with a Bloom filter over
each half; a delta is the digests added and removed between two versions.
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pybloom_live import BloomFilter

from blocklist.core.errors import ChecksumError, FormatError
from blocklist.core.format.bloom import bloom_bytes, bloom_from, bloom_params
from blocklist.core.format.container import (
    FORMAT_VERSION,
    KIND_DELTA,
    KIND_SNAPSHOT,
    pack_container,
    section,
    unpack_container,
)
from blocklist.core.format.digestset import array_bytes, array_from, digest_array, set_checksum
from blocklist.core.format.keys import Keyring
from blocklist.core.format.strictjson import check_list_name, count_field, typed_field

__all__ = ["Snapshot", "Delta", "write_snapshot", "read_snapshot", "write_delta", "read_delta", "diff"]


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
    entries: array[int]  # sorted page/folder digests
    hosts: array[int]    # sorted host, domain and parent-marker digests
    counts: dict[str, int] = field(default_factory=dict)  # entries by scope, informational
    subtree_markers: bool = False  # `hosts` holds subtree markers (blocklist.core.digests); publish sets it
    format_version: int = FORMAT_VERSION  # of the file it was read from; written: always the current one


def write_snapshot(snap: Snapshot, private_key: Ed25519PrivateKey) -> bytes:
    header = {"type": "snapshot", "list": check_list_name(snap.list), "version": snap.version,
              "created": snap.created, "expires": snap.expires, "salt": snap.salt.hex(),
              "checksum": snap.checksum, "entries": len(snap.entries), "hosts": len(snap.hosts),
              "counts": snap.counts, "digest_size": 8, "subtree_markers": snap.subtree_markers,
              "entry_bloom": bloom_params(snap.entry_bloom),
              "host_bloom": bloom_params(snap.host_bloom)}
    return pack_container(KIND_SNAPSHOT, header, [
        ("entry_bloom", bloom_bytes(snap.entry_bloom)),
        ("host_bloom", bloom_bytes(snap.host_bloom)),
        ("entries", array_bytes(snap.entries)),
        ("hosts", array_bytes(snap.hosts)),
    ], private_key)


def read_snapshot(data: bytes, keys: Keyring, max_size: int = 2**31) -> Snapshot:
    what = "snapshot"
    header, sections, version = unpack_container(data, KIND_SNAPSHOT, keys, max_size, what)
    if header.get("type") != "snapshot" or header.get("digest_size") != 8:
        raise FormatError(f"{what}: unsupported header type or digest size")
    salt = _hex(typed_field(header, "salt", str, what), what)
    entries = _digests(sections, "entries", count_field(header, "entries", what), what)
    hosts = _digests(sections, "hosts", count_field(header, "hosts", what), what)
    snap = Snapshot(
        list=check_list_name(header.get("list")), version=count_field(header, "version", what),
        created=count_field(header, "created", what), expires=count_field(header, "expires", what),
        salt=salt, checksum=typed_field(header, "checksum", str, what),
        entry_bloom=bloom_from(header.get("entry_bloom"), section(sections, "entry_bloom", what), what),
        host_bloom=bloom_from(header.get("host_bloom"), section(sections, "host_bloom", what), what),
        entries=entries, hosts=hosts, counts=_counts(header.get("counts", {}), what),
        subtree_markers=_flag(header, "subtree_markers", what), format_version=version)
    if set_checksum(entries, hosts) != snap.checksum:
        raise ChecksumError(f"{what}: digest set does not match its checksum")
    return snap


def _digests(sections: Mapping[str, bytes], name: str, count: int, what: str) -> array[int]:
    data = section(sections, name, what)
    if len(data) != count * 8:
        raise FormatError(f"{what}: section {name!r} holds {len(data) // 8} digests, header says {count}")
    return array_from(data, f"{what}: {name}")


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


@dataclass(frozen=True)
class Delta:
    list: str
    from_version: int
    to_version: int
    created: int
    checksum: str  # of the resulting set
    entries_added: array[int]
    entries_removed: array[int]
    hosts_added: array[int]
    hosts_removed: array[int]
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
    return pack_container(KIND_DELTA, header,
                          [(name, array_bytes(getattr(delta, name))) for name in _DELTA_SECTIONS],
                          private_key)


def read_delta(data: bytes, keys: Keyring, max_size: int = 2**31) -> Delta:
    what = "delta"
    header, sections, _ = unpack_container(data, KIND_DELTA, keys, max_size, what)
    if header.get("type") != "delta":
        raise FormatError(f"{what}: unsupported header type")
    arrays = {name: _digests(sections, name, count_field(header, name, what), what)
              for name in _DELTA_SECTIONS}
    delta = Delta(list=check_list_name(header.get("list")),
                  from_version=count_field(header, "from_version", what),
                  to_version=count_field(header, "to_version", what),
                  created=count_field(header, "created", what),
                  checksum=typed_field(header, "checksum", str, what),
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
