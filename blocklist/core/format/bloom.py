"""pybloom-live Bloom filters as the format carries them: key strings, bit arrays, parameters.

The filters are pybloom-live 4.0.0's, so its hashing is part of the format and
the bits written are exactly the bits it sets. Building a filter from a file's
parameters needs one private method of the library; it is called here and
nowhere else.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Collection, Mapping
from typing import Any

import bitarray
from pybloom_live import BloomFilter

from blocklist.core.errors import FormatError
from blocklist.core.format.strictjson import count_field, typed_field

__all__ = [
    "bloom_key", "build_bloom", "add_to_bloom", "grow_bloom", "bloom_params", "bloom_bytes",
    "bloom_from", "bloom_over",
]


def bloom_key(value: int) -> str:
    """The key a digest is stored under in a pybloom-live filter: 16 lowercase hex digits."""
    return format(value, "016x")


def build_bloom(values: array[int], error_rate: float) -> BloomFilter:
    bloom = BloomFilter(capacity=max(len(values), 1), error_rate=error_rate)
    add_to_bloom(bloom, values)
    return bloom


def add_to_bloom(bloom: BloomFilter, values: Collection[int]) -> None:
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


def _unfilled(error_rate: float, num_slices: int, bits_per_slice: int, capacity: int,
              count: int) -> BloomFilter:
    """A filter with exactly these parameters and no bit array yet."""
    bloom = BloomFilter.__new__(BloomFilter)
    # The one private access. BloomFilter() and BloomFilter.copy() derive num_slices and
    # bits_per_slice from capacity and error rate (copy() also resets count), but a file
    # names its own parameters and a grown filter keeps its own: both are kept as given.
    # The public BloomFilter.fromfile would take them, at the price of a copy of the bits
    # in a file object, a throwaway filter and the padding bits left in place. _setup is
    # what all of these call: it sets the parameters and derives make_hashes from them.
    bloom._setup(error_rate, num_slices, bits_per_slice, capacity, count)
    return bloom


def grow_bloom(bloom: BloomFilter, values: Collection[int]) -> BloomFilter:
    """A copy of `bloom` with `values` added; `bloom` itself is not changed."""
    grown = _unfilled(bloom.error_rate, bloom.num_slices, bloom.bits_per_slice, bloom.capacity,
                      bloom.count)
    grown.bitarray = bloom.bitarray.copy()
    add_to_bloom(grown, values)
    return grown


def bloom_params(bloom: BloomFilter) -> dict[str, Any]:
    """The header object describing a filter's section."""
    return {"error_rate": bloom.error_rate, "num_slices": bloom.num_slices,
            "bits_per_slice": bloom.bits_per_slice, "capacity": bloom.capacity,
            "count": bloom.count}


def bloom_bytes(bloom: BloomFilter) -> bytes:
    """The filter's section: its bits, least significant first, padded to whole bytes."""
    data: bytes = bloom.bitarray.tobytes()
    return data


def _checked_params(params: Any, length: int, what: str) -> tuple[float, int, int, int, int]:
    """The parameters of a filter whose bits take `length` bytes, checked."""
    if not isinstance(params, Mapping):
        raise FormatError(f"{what}: bloom parameters missing")
    rate = typed_field(params, "error_rate", float, what)
    slices = count_field(params, "num_slices", what, 64)
    per_slice = count_field(params, "bits_per_slice", what, 2**36)
    capacity = count_field(params, "capacity", what)
    count = count_field(params, "count", what)
    if not (0 < rate < 1) or slices < 1 or per_slice < 1 or capacity < 1:
        raise FormatError(f"{what}: bloom parameters out of range")
    if length != math.ceil(slices * per_slice / 8):
        raise FormatError(f"{what}: bloom section has {length} bytes, "
                          f"parameters need {math.ceil(slices * per_slice / 8)}")
    return rate, slices, per_slice, capacity, count


def bloom_from(params: Any, data: bytes, what: str) -> BloomFilter:
    """The filter that `bloom_params` and `bloom_bytes` describe, checked before it is built."""
    rate, slices, per_slice, capacity, count = _checked_params(params, len(data), what)
    bloom = _unfilled(rate, slices, per_slice, capacity, count)
    bits = bitarray.bitarray(endian="little")
    bits.frombytes(data)
    del bits[slices * per_slice:]  # the last byte's padding
    bloom.bitarray = bits
    return bloom


def bloom_over(params: Any, buffer: Any, start: int, end: int, what: str) -> BloomFilter:
    """Like bloom_from, but the filter's bits are `buffer[start:end]` itself (e.g. a read-only
    mapping), not a copy; the view is made only once the parameters passed their checks.

    The bit array keeps the last byte's padding bits: lookups never reach them (each
    slice's index is below bits_per_slice). grow_bloom copies it into a writable one.
    """
    rate, slices, per_slice, capacity, count = _checked_params(params, end - start, what)
    bloom = _unfilled(rate, slices, per_slice, capacity, count)
    bloom.bitarray = bitarray.bitarray(buffer=memoryview(buffer)[start:end], endian="little")
    return bloom
