"""Fuzzing every format reader: random and mutated bytes raise FormatError and are never accepted."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings, strategies as st

from blocklist.core.errors import BlocklistError, FormatError
from blocklist.core.format.artifacts import diff, read_delta, read_snapshot, write_delta, write_snapshot
from blocklist.core.format.manifest import read_manifest, write_manifest
from tests.support.artifacts import KEY, KEYS, make_snapshot, manifest

SNAP = write_snapshot(make_snapshot(1, list(range(1, 40)), [5, 6, 7]), KEY)
DELTA = write_delta(diff("iwf", make_snapshot(1, [1, 2], [5]), make_snapshot(2, [2, 3], [5, 6]), 9), KEY)
MANIFEST = write_manifest(manifest(), [KEY])
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

mutation = st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)),
                    min_size=1, max_size=8)


def mutate(data: bytes, changes: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for pos, value in changes:
        out[pos % len(out)] = value
    return bytes(out)


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes_are_rejected_by_every_reader(data: bytes) -> None:
    for reader in (read_snapshot, read_delta, read_manifest):
        try:
            reader(data, KEYS)
        except FormatError:
            continue
        raise AssertionError(f"{reader.__name__} accepted random bytes")


@FUZZ
@given(mutation)
def test_mutated_snapshot_is_rejected(changes: list[tuple[int, int]]) -> None:
    data = mutate(SNAP, changes)
    if data == SNAP:
        return
    try:
        read_snapshot(data, KEYS)
    except FormatError:
        return
    raise AssertionError("a mutated snapshot was accepted")


@FUZZ
@given(mutation)
def test_mutated_delta_is_rejected(changes: list[tuple[int, int]]) -> None:
    data = mutate(DELTA, changes)
    if data == DELTA:
        return
    try:
        read_delta(data, KEYS)
    except FormatError:
        return
    raise AssertionError("a mutated delta was accepted")


@FUZZ
@given(st.integers(min_value=0, max_value=len(SNAP)), st.binary(max_size=64))
def test_truncated_or_extended_snapshot_is_rejected(cut: int, tail: bytes) -> None:
    data = SNAP[:cut] + tail
    if data == SNAP:
        return
    try:
        read_snapshot(data, KEYS)
    except FormatError:
        return
    raise AssertionError("a truncated or extended snapshot was accepted")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20)


@FUZZ
@given(st.sampled_from(["version", "lists", "expires", "key_chain", "type", "created"]), json_values)
def test_manifest_with_changed_fields_is_rejected(field: str, value: object) -> None:
    doc = json.loads(MANIFEST)
    if doc["signed"].get(field) == value:
        return
    doc["signed"][field] = value
    try:
        read_manifest(json.dumps(doc).encode(), KEYS)
    except FormatError:
        return
    raise AssertionError("a manifest with a changed signed field was accepted")


@FUZZ
@given(json_values)
def test_manifest_of_arbitrary_json_never_crashes(value: object) -> None:
    try:
        read_manifest(json.dumps(value).encode(), KEYS)
    except BlocklistError:
        return
    raise AssertionError("arbitrary JSON was accepted as a manifest")
