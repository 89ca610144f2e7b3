"""The signed container that snapshots and deltas share: prefix, header, sections, signature.

    magic        4 bytes  b"BLKL"
    kind         1 byte   b"S" snapshot, b"D" delta
    format       1 byte   2 (1: written before www twins and subdomain reach; still read)
    reserved     2 bytes  zero
    header_len   u32 BE   at most MAX_HEADER bytes
    header       header_len bytes of canonical JSON (UTF-8, sorted keys, no spaces)
    sections     the byte strings named by header["sections"], in order
    signature    64 bytes Ed25519 over every byte before it, by header["key_id"]

The reader checks the size limit and every length against the file, and the
signature before it trusts any other header field.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from blocklist.core.errors import FormatError, SizeError
from blocklist.core.format.keys import Keyring, key_id, verify_signature
from blocklist.core.format.strictjson import canonical_json, strict_loads, typed_field

__all__ = [
    "MAGIC", "FORMAT_VERSION", "READABLE_VERSIONS", "KIND_SNAPSHOT", "KIND_DELTA", "PREFIX", "SIG_SIZE", "MAX_HEADER",
    "pack_container", "unpack_container", "section", "signer_of",
]

MAGIC = b"BLKL"
# 2: the digest kinds of www twins and subdomain reach, and subtree markers of www bases
# (blocklist.core.digests). A version-1 reader would miss those entries, so it must refuse
# these files; a version-1 file holds none of them and reads by the same rules.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
KIND_SNAPSHOT = b"S"
KIND_DELTA = b"D"
PREFIX = struct.Struct(">4sc B 2s I")  # magic, kind, format, reserved, header_len
SIG_SIZE = 64
MAX_HEADER = 64 * 1024


def pack_container(kind: bytes, header: dict[str, Any], sections: list[tuple[str, bytes]],
                   private_key: Ed25519PrivateKey) -> bytes:
    """The signed file; `header` gains "key_id" and the "sections" table."""
    header = dict(header, key_id=key_id(private_key.public_key()),
                  sections=[[name, len(data)] for name, data in sections])
    head = canonical_json(header)
    body = b"".join([PREFIX.pack(MAGIC, kind, FORMAT_VERSION, b"\0\0", len(head)), head]
                    + [data for _, data in sections])
    return body + private_key.sign(body)


def unpack_container(data: bytes, kind: bytes, keys: Keyring, max_size: int, what: str
                     ) -> tuple[dict[str, Any], dict[str, bytes], int]:
    """The verified header, the sections by name and the format version."""
    if len(data) > max_size:
        raise SizeError(f"{what}: {len(data)} bytes exceeds the limit of {max_size}")
    if len(data) < PREFIX.size + SIG_SIZE:
        raise FormatError(f"{what}: truncated ({len(data)} bytes)")
    magic, got_kind, version, _, head_len = PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise FormatError(f"{what}: not a blocklist file (bad magic)")
    if got_kind != kind:
        raise FormatError(f"{what}: wrong kind {got_kind!r}, expected {kind!r}")
    if version > FORMAT_VERSION:
        raise FormatError(f"{what}: format version {version} is newer than this reader understands "
                          f"(up to {FORMAT_VERSION}): upgrade blocklist-plugin; the last good list stays in force")
    if version not in READABLE_VERSIONS:
        raise FormatError(f"{what}: unsupported format version {version}")
    if head_len > MAX_HEADER or PREFIX.size + head_len + SIG_SIZE > len(data):
        raise FormatError(f"{what}: header length {head_len} out of range")
    header = strict_loads(data[PREFIX.size:PREFIX.size + head_len], what)
    if not isinstance(header, dict):
        raise FormatError(f"{what}: header is not an object")
    kid = typed_field(header, "key_id", str, what)
    verify_signature(keys, kid, data[-SIG_SIZE:], data[:-SIG_SIZE])
    layout = typed_field(header, "sections", list, what)
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
    return header, sections, version


def section(sections: Mapping[str, bytes], name: str, what: str) -> bytes:
    """The section called `name`, which must be there."""
    if name not in sections:
        raise FormatError(f"{what}: missing section {name!r}")
    return sections[name]


def signer_of(head: bytes) -> str:
    """The key id a container's header names, from its first PREFIX.size + MAX_HEADER bytes.

    Not a verification: it tells a reader which key to expect (the cache
    replaces files a retired key signed); unpack_container verifies.
    """
    if len(head) < PREFIX.size:
        raise FormatError("container: truncated")
    magic, _, _, _, head_len = PREFIX.unpack_from(head)
    if magic != MAGIC or head_len > MAX_HEADER or PREFIX.size + head_len > len(head):
        raise FormatError("container: not a blocklist file")
    header = strict_loads(head[PREFIX.size:PREFIX.size + head_len], "container")
    return typed_field(header, "key_id", str, "container") if isinstance(header, dict) else ""
