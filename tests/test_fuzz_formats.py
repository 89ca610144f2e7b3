"""Fuzzing every format reader: random and mutated bytes raise FormatError and are never accepted."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blocklist.core.errors import BlocklistError, FormatError
from blocklist.core.format.artifacts import diff, read_delta, read_snapshot, write_delta, write_snapshot
from blocklist.core.format.compiled import read_compiled, write_compiled
from blocklist.core.format.manifest import read_manifest, write_manifest
from blocklist.core.matcher import ListFilter
from tests.support.artifacts import KEY, KEYS, make_snapshot, manifest
from tests.support.properties import Branches

SNAP = write_snapshot(make_snapshot(1, list(range(1, 40)), [5, 6, 7]), KEY)
DELTA = write_delta(diff("iwf", make_snapshot(1, [1, 2], [5]), make_snapshot(2, [2, 3], [5, 6]), 9), KEY)
MANIFEST = write_manifest(manifest(), [KEY])
COMPILED_OF = ListFilter.from_snapshot(read_snapshot(SNAP, KEYS))
COMPILED = write_compiled(COMPILED_OF.compiled())
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

mutation = st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)),
                    min_size=1, max_size=8)


def mutate(data: bytes, changes: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for pos, value in changes:
        out[pos % len(out)] = value
    return bytes(out)


def test_random_bytes_are_rejected_by_every_reader() -> None:
    ran = Branches()

    @FUZZ
    @given(st.binary(max_size=2048))
    def prop(data: bytes) -> None:
        for reader in (read_snapshot, read_delta, read_manifest):
            with pytest.raises(FormatError):
                reader(data, KEYS)
            ran(reader.__name__)

    prop()
    assert ran["read_snapshot"] and ran["read_delta"] and ran["read_manifest"], ran


@pytest.mark.parametrize("original, reader", [(SNAP, read_snapshot), (DELTA, read_delta)],
                         ids=["snapshot", "delta"])
def test_mutated_container_is_rejected(original: bytes, reader) -> None:
    ran = Branches()

    @FUZZ
    @given(mutation)
    def prop(changes: list[tuple[int, int]]) -> None:
        data = mutate(original, changes)
        if data == original:
            ran("unchanged")
            return
        with pytest.raises(FormatError):
            reader(data, KEYS)
        ran("mutated")

    prop()
    assert ran["mutated"] > 100, ran


def test_truncated_or_extended_snapshot_is_rejected() -> None:
    ran = Branches()

    @FUZZ
    @given(st.integers(min_value=0, max_value=len(SNAP)), st.binary(max_size=64))
    def prop(cut: int, tail: bytes) -> None:
        data = SNAP[:cut] + tail
        if data == SNAP:
            return
        with pytest.raises(FormatError):
            read_snapshot(data, KEYS)
        ran("truncated" if len(data) < len(SNAP) else "extended" if cut == len(SNAP) else "both")

    prop()
    assert ran["truncated"] and ran["extended"], ran


def test_mutated_truncated_or_random_compiled_files_are_rejected() -> None:
    ran = Branches()
    expected = (COMPILED_OF.name, COMPILED_OF.version, COMPILED_OF.checksum)

    @FUZZ
    @given(mutation, st.integers(min_value=0, max_value=len(COMPILED)), st.binary(max_size=64))
    def prop(changes: list[tuple[int, int]], cut: int, tail: bytes) -> None:
        for label, data in (("mutated", mutate(COMPILED, changes)), ("cut", COMPILED[:cut] + tail),
                            ("random", tail)):
            if data == COMPILED:
                continue
            with pytest.raises(FormatError):
                read_compiled(data, *expected)
            ran(label)

    prop()
    assert read_compiled(COMPILED, *expected).checksum == COMPILED_OF.checksum
    assert ran["mutated"] > 100 and ran["cut"] > 100 and ran["random"], ran


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20)


def test_manifest_with_changed_fields_is_rejected() -> None:
    ran = Branches()

    @FUZZ
    @given(st.sampled_from(["version", "lists", "expires", "root_version", "type", "created"]), json_values)
    def prop(field: str, value: object) -> None:
        doc = json.loads(MANIFEST)
        if doc["signed"].get(field) == value:
            return
        doc["signed"][field] = value
        with pytest.raises(FormatError):
            read_manifest(json.dumps(doc).encode(), KEYS)
        ran(field)

    prop()
    assert len(ran) == 6, ran


def test_manifest_of_arbitrary_json_never_crashes() -> None:
    ran = Branches()

    @FUZZ
    @given(json_values)
    def prop(value: object) -> None:
        with pytest.raises(BlocklistError):
            read_manifest(json.dumps(value).encode(), KEYS)
        ran(type(value).__name__)

    prop()
    assert ran["dict"] and ran["list"], ran
