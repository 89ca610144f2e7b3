"""The compiled list file: one list version laid out so enforcing processes map it and look up in place.

Written by the plugin's `sync` into its cache after it verified the signed snapshot
and deltas; never on the wire. Every enforcing process of a node (Squid helpers,
proxy workers, the Unbound module) maps the same file read-only, so the node holds
one copy of each list in the page cache instead of one parsed copy per process.

    offset  size        field
    0       8           magic b"BLKLMAP1"
    8       2   u16 BE  layout version: 1
    10      2           reserved, zero
    12      4   u32 BE  header_len, at most MAX_HEADER
    16      8   u64 BE  file_len: the whole file, in bytes
    24      32          SHA-256 of every byte from offset 56 to file_len
    56      header_len  header: canonical JSON object (list, version, salt, checksum, sections)
    ...                 zero padding, then the sections, each at an offset that is a multiple
                        of ALIGN, zero padding between them

Sections: `entry_bloom` and `host_bloom` hold a pybloom-live filter's bits exactly as
the snapshot does (bitarray "little" bit order, padded to whole bytes); `entries` and
`hosts` hold the sorted, unique 8-byte digests in the byte order the header names
(the writer's native order, so a reader casts them to uint64 without a copy).

A reader (`read_compiled`) checks, before it trusts any field: the magic, the layout
version, header_len, file_len against the buffer's size (a truncated file), the
SHA-256 (a damaged one), then every section's offset, alignment and length against
the file, the byte order, and the list name, version and set checksum the caller
expects. It does not verify signatures or recompute the set checksum: sync did that
before it wrote the file (docs/RELIABILITY.md states the trade-off); the header names
the key ids that signed what sync verified, for the caller to hold against the keys
it trusts. It raises
FormatError for anything else and copies nothing: the result's digest arrays are
memoryviews and its Bloom filters' bits are bitarrays over the caller's buffer.
"""

from __future__ import annotations

import hashlib
import struct
import sys
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pybloom_live import BloomFilter

from blocklist.core.errors import FormatError
from blocklist.core.format.bloom import bloom_bytes, bloom_over, bloom_params
from blocklist.core.format.strictjson import canonical_json, check_list_name, count_field, strict_loads, typed_field

__all__ = ["MAGIC", "LAYOUT_VERSION", "ALIGN", "PREFIX", "CompiledList", "write_compiled", "read_compiled"]

MAGIC = b"BLKLMAP1"
LAYOUT_VERSION = 1
ALIGN = 64  # a cache line; and a multiple of 8, so the digest sections cast to uint64 in place
PREFIX = struct.Struct(">8s H 2s I Q 32s")  # magic, layout, reserved, header_len, file_len, sha256
MAX_HEADER = 64 * 1024
_BLOOMS = ("entry_bloom", "host_bloom")
_DIGESTS = ("entries", "hosts")


@dataclass(frozen=True)
class CompiledList:
    """One list version as the compiled file holds it; the sequences may be views of a mapping."""

    list: str
    version: int
    created: int
    expires: int
    salt: bytes
    checksum: str  # the set checksum (blocklist.core.format.digestset.set_checksum)
    subtree_markers: bool
    entry_bloom: BloomFilter | None
    host_bloom: BloomFilter | None
    entries: Sequence[int]  # sorted page/folder digests: array('Q') or memoryview('Q')
    hosts: Sequence[int]    # sorted host digests
    # key ids that signed the snapshot and deltas the writer verified: a reader maps the file
    # only for a source that trusts them (a list of one source is never read as another's)
    signers: tuple[str, ...] = ()


def _native(values: Sequence[int]) -> bytes:
    if isinstance(values, memoryview):
        return values.tobytes()
    return array("Q", values).tobytes()


def _pad(length: int) -> int:
    return -length % ALIGN


def write_compiled(c: CompiledList) -> bytes:
    """The compiled file's bytes for `c` (lists without Bloom filters are not compiled)."""
    if c.entry_bloom is None or c.host_bloom is None:
        raise FormatError(f"compiled {c.list}: a list without Bloom filters is not compiled")
    bodies = [bloom_bytes(c.entry_bloom), bloom_bytes(c.host_bloom), _native(c.entries), _native(c.hosts)]
    header: dict[str, Any] = {
        "type": "compiled", "list": check_list_name(c.list), "version": c.version, "created": c.created,
        "expires": c.expires, "salt": c.salt.hex(), "checksum": c.checksum,
        "subtree_markers": c.subtree_markers, "byte_order": sys.byteorder, "digest_size": 8,
        "signers": sorted(set(c.signers)),
    }
    # The offsets depend on the header's length and the header holds the offsets: reserve
    # room for the section table (1 KiB, far more than its longest form) and pad to it.
    placeholder = len(canonical_json(header)) + 1024
    offset = PREFIX.size + placeholder + _pad(PREFIX.size + placeholder)
    sections: dict[str, dict[str, Any]] = {}
    for name, data, bloom in zip(_BLOOMS, bodies[:2], (c.entry_bloom, c.host_bloom), strict=True):
        sections[name] = dict(bloom_params(bloom), offset=offset, length=len(data))
        offset += len(data) + _pad(len(data))
    for name, data in zip(_DIGESTS, bodies[2:], strict=True):
        sections[name] = {"offset": offset, "count": len(data) // 8}
        offset += len(data) + _pad(len(data))
    head = canonical_json(dict(header, sections=sections))
    if len(head) > placeholder or len(head) > MAX_HEADER:
        raise FormatError(f"compiled {c.list}: header too long")
    parts = [head, b"\0" * (placeholder - len(head) + _pad(PREFIX.size + placeholder))]
    for data in bodies:
        parts += [data, b"\0" * _pad(len(data))]
    rest = b"".join(parts)
    file_len = PREFIX.size + len(rest)
    assert file_len == offset
    return PREFIX.pack(MAGIC, LAYOUT_VERSION, b"\0\0", len(head), file_len, hashlib.sha256(rest).digest()) + rest


def read_compiled(buf: Any, name: str, version: int, checksum: str, what: str = "compiled") -> CompiledList:
    """The list in `buf` (bytes, or a read-only mmap), which must be `name` at `version` with `checksum`.

    Views into `buf` are made only once every check passed, so on FormatError the
    caller may close its mapping at once.
    """
    size = len(buf)
    if size < PREFIX.size:
        raise FormatError(f"{what}: truncated ({size} bytes)")
    magic, layout, reserved, head_len, file_len, body_hash = PREFIX.unpack(buf[:PREFIX.size])
    if magic != MAGIC or reserved != b"\0\0":
        raise FormatError(f"{what}: not a compiled list file (bad magic)")
    if layout != LAYOUT_VERSION:
        raise FormatError(f"{what}: layout version {layout}, this reader knows {LAYOUT_VERSION}")
    if file_len != size:
        raise FormatError(f"{what}: truncated or extended: {size} bytes, the header says {file_len}")
    if head_len > MAX_HEADER or PREFIX.size + head_len > size:
        raise FormatError(f"{what}: header length {head_len} out of range")
    with memoryview(buf) as view, view[PREFIX.size:] as rest:
        if hashlib.sha256(rest).digest() != body_hash:
            raise FormatError(f"{what}: damaged (SHA-256 of the body does not match)")
    header = strict_loads(bytes(buf[PREFIX.size:PREFIX.size + head_len]), what)
    if not isinstance(header, dict) or header.get("type") != "compiled" or header.get("digest_size") != 8:
        raise FormatError(f"{what}: unsupported header")
    if header.get("byte_order") != sys.byteorder:
        raise FormatError(f"{what}: written in {header.get('byte_order')!r} byte order, this host is {sys.byteorder}")
    got = (check_list_name(header.get("list")), count_field(header, "version", what),
           typed_field(header, "checksum", str, what))
    if got != (name, version, checksum):
        raise FormatError(f"{what}: holds {got[0]} version {got[1]}, the cache's state names {name} version {version}")
    sections = typed_field(header, "sections", dict, what)
    spans = _spans(sections, PREFIX.size + head_len, size, what)
    try:
        salt = bytes.fromhex(typed_field(header, "salt", str, what))
    except ValueError:
        raise FormatError(f"{what}: bad salt") from None
    subtree = header.get("subtree_markers")
    if not isinstance(subtree, bool):
        raise FormatError(f"{what}: subtree_markers must be true or false")
    signers = typed_field(header, "signers", list, what)
    if not all(isinstance(k, str) for k in signers):
        raise FormatError(f"{what}: bad signers")
    # Every check passed but the Bloom parameters', which bloom_over makes before its view.
    blooms = [bloom_over(sections[n], buf, spans[n][0], spans[n][1], what) for n in _BLOOMS]
    digests = [memoryview(buf)[spans[n][0]:spans[n][1]].cast("Q") for n in _DIGESTS]
    return CompiledList(name, version, count_field(header, "created", what), count_field(header, "expires", what),
                        salt, checksum, subtree, blooms[0], blooms[1], digests[0], digests[1], tuple(signers))


def _spans(sections: Mapping[str, Any], start: int, size: int, what: str) -> dict[str, tuple[int, int]]:
    """Each section's [begin, end) in the file, checked: aligned, in order, inside the file, no overlap."""
    spans: dict[str, tuple[int, int]] = {}
    for name in (*_BLOOMS, *_DIGESTS):
        item = sections.get(name)
        if not isinstance(item, Mapping):
            raise FormatError(f"{what}: missing section {name!r}")
        offset = count_field(item, "offset", what)
        length = count_field(item, "length", what) if name in _BLOOMS else 8 * count_field(item, "count", what)
        if offset % ALIGN or offset < start or offset + length > size:
            raise FormatError(f"{what}: section {name!r} out of range")
        start = offset + length
        spans[name] = (offset, offset + length)
    return spans
