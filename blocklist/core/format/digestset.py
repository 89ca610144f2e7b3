"""Digest sets: sorted, unique arrays of 8-byte digests, their big-endian bytes, their checksum."""

from __future__ import annotations

import hashlib
import itertools
import operator
import struct
import sys
from array import array
from bisect import bisect_left
from collections.abc import Collection, Iterable, Sequence

from blocklist.core.errors import FormatError

__all__ = ["digest_array", "contains", "merge_sorted", "array_bytes", "array_from", "set_checksum"]


def digest_array(values: Iterable[int]) -> array[int]:
    """A sorted, duplicate-free array('Q') of digests."""
    return array("Q", sorted(set(values)))


def contains(values: Sequence[int], value: int) -> bool:
    """Membership in a sorted digest array (binary search); an array('Q') or a memoryview cast to 'Q'."""
    i = bisect_left(values, value)
    return i < len(values) and values[i] == value


def merge_sorted(base: Sequence[int], added: Collection[int], removed: Collection[int]) -> array[int]:
    """`base` minus `removed` plus `added`, sorted and unique; `base` is not changed (nor copied
    when it is an array and nothing changes)."""
    if not added and not removed and isinstance(base, array):
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


def array_bytes(values: Sequence[int]) -> bytes:
    """The digests as the format stores them: 8 bytes each, big-endian."""
    out = array("Q", values)
    if sys.byteorder == "little":
        out.byteswap()
    return out.tobytes()


def array_from(data: bytes, what: str) -> array[int]:
    """The digests stored in `data`, which must be sorted and unique."""
    if len(data) % 8:
        raise FormatError(f"{what}: length is not a multiple of 8")
    out = array("Q")
    out.frombytes(data)
    if sys.byteorder == "little":
        out.byteswap()
    if not all(map(operator.lt, out, itertools.islice(out, 1, None))):
        raise FormatError(f"{what}: digests are not sorted and unique")
    return out


def set_checksum(entries: Sequence[int], hosts: Sequence[int]) -> str:
    """SHA-256 of the whole digest set, the value deltas and manifests announce."""
    h = hashlib.sha256()
    h.update(struct.pack(">Q", len(entries)))
    h.update(array_bytes(entries))
    h.update(struct.pack(">Q", len(hosts)))
    h.update(array_bytes(hosts))
    return h.hexdigest()
