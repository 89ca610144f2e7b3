"""The file formats: round trips, and every kind of damage rejected with our error."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from blocklist.core.errors import ChecksumError, FormatError, SignatureError, SizeError
from blocklist.core.format.artifacts import (
    Delta,
    diff,
    read_delta,
    read_snapshot,
    write_delta,
    write_snapshot,
)
from blocklist.core.format.digestset import digest_array, set_checksum
from blocklist.core.format.keys import key_id, load_public_key, public_key_text
from blocklist.core.format.manifest import (
    ListRef,
    Manifest,
    check_file,
    file_ref,
    read_manifest,
    sign_rotation,
    write_manifest,
)
from tests.support.artifacts import KEY, KEYS, make_snapshot, manifest


def test_snapshot_round_trip() -> None:
    snap = make_snapshot(3, [5, 1, 2**64 - 1], [7, 9])
    back = read_snapshot(write_snapshot(snap, KEY), KEYS)
    assert (back.list, back.version, back.salt, back.checksum) == ("iwf", 3, b"s" * 16, snap.checksum)
    assert list(back.entries) == [1, 5, 2**64 - 1] and list(back.hosts) == [7, 9]
    assert back.entry_bloom.bitarray == snap.entry_bloom.bitarray
    assert back.counts == {"page": 1 * 3}


def test_empty_snapshot_round_trip() -> None:
    back = read_snapshot(write_snapshot(make_snapshot(1, [], []), KEY), KEYS)
    assert len(back.entries) == 0 and len(back.hosts) == 0


def _repacked(data: bytes, kind: bytes, **changes: object) -> bytes:
    """`data` re-signed with header fields changed (None: removed), as another writer could."""
    from blocklist.core.format.container import pack_container, unpack_container
    header, sections, _ = unpack_container(data, kind, KEYS, 2**31, "test")
    header = {k: v for k, v in dict(header, **changes).items() if v is not None}
    del header["key_id"], header["sections"]
    return pack_container(kind, header, list(sections.items()), KEY)


def test_subtree_markers_flag_round_trips_and_defaults_to_absent() -> None:
    from dataclasses import replace

    from blocklist.core.format.container import KIND_DELTA, KIND_SNAPSHOT
    old, new = make_snapshot(1, [1], [10]), replace(make_snapshot(2, [1], [10, 11]), subtree_markers=True)
    assert read_snapshot(write_snapshot(new, KEY), KEYS).subtree_markers is True
    assert read_snapshot(write_snapshot(old, KEY), KEYS).subtree_markers is False
    delta = diff("iwf", old, new, 5)
    assert delta.subtree_markers is True and read_delta(write_delta(delta, KEY), KEYS).subtree_markers is True
    # written before the flag existed: no markers, the matcher walks every suffix
    data = write_snapshot(new, KEY)
    assert read_snapshot(_repacked(data, KIND_SNAPSHOT, subtree_markers=None), KEYS).subtree_markers is False
    with pytest.raises(FormatError, match="subtree_markers"):
        read_snapshot(_repacked(data, KIND_SNAPSHOT, subtree_markers="yes"), KEYS)
    with pytest.raises(FormatError, match="subtree_markers"):
        read_delta(_repacked(write_delta(delta, KEY), KIND_DELTA, subtree_markers=1), KEYS)


def test_delta_round_trip_and_diff() -> None:
    old, new = make_snapshot(1, [1, 2, 3], [10]), make_snapshot(2, [2, 3, 4], [10, 11])
    delta = diff("iwf", old, new, 5)
    back = read_delta(write_delta(delta, KEY), KEYS)
    assert (list(back.entries_added), list(back.entries_removed)) == ([4], [1])
    assert (list(back.hosts_added), list(back.hosts_removed)) == ([11], [])
    assert (back.from_version, back.to_version, back.checksum) == (1, 2, new.checksum)


@pytest.mark.parametrize("position", [0, 5, 14, 40, -70, -1])
def test_any_flipped_byte_is_rejected(position: int) -> None:
    data = bytearray(write_snapshot(make_snapshot(1, [1, 2], [3]), KEY))
    data[position] ^= 0x01
    with pytest.raises(FormatError):
        read_snapshot(bytes(data), KEYS)


@pytest.mark.parametrize("cut", [0, 3, 20, 100, 1])
def test_truncated_file_is_rejected(cut: int) -> None:
    data = write_snapshot(make_snapshot(1, [1, 2], [3]), KEY)
    with pytest.raises(FormatError):
        read_snapshot(data[: len(data) - cut] if cut else b"", KEYS)


def test_wrong_key_is_rejected() -> None:
    other = Ed25519PrivateKey.generate()
    data = write_snapshot(make_snapshot(1, [1], [2]), other)
    with pytest.raises(SignatureError, match="unknown key"):
        read_snapshot(data, KEYS)


def test_snapshot_is_not_a_delta() -> None:
    with pytest.raises(FormatError, match="wrong kind"):
        read_delta(write_snapshot(make_snapshot(1, [1], [2]), KEY), KEYS)


def test_size_limit_is_checked_before_parsing() -> None:
    data = write_snapshot(make_snapshot(1, list(range(100)), [2]), KEY)
    with pytest.raises(SizeError):
        read_snapshot(data, KEYS, max_size=100)


def test_manifest_round_trip() -> None:
    back = read_manifest(write_manifest(manifest(4), [KEY]), KEYS)
    assert back.version == 4 and back.lists["iwf"].deltas[0].to_version == 1
    assert back.signed_by == key_id(KEY.public_key())


def test_manifest_tampering_is_rejected() -> None:
    doc = json.loads(write_manifest(manifest(), [KEY]))
    doc["signed"]["lists"]["iwf"]["version"] = 9
    with pytest.raises(SignatureError):
        read_manifest(json.dumps(doc).encode(), KEYS)


def test_manifest_unsafe_path_is_rejected() -> None:
    m = manifest()
    bad = Manifest(1, 1, 2, {"iwf": ListRef(1, "c", 0, file_ref("../../etc/passwd", b""))})
    with pytest.raises(FormatError, match="unsafe path"):
        read_manifest(write_manifest(bad, [KEY]), KEYS)
    assert m.lists


def test_key_rotation_is_followed_and_revokes_the_old_key() -> None:
    new = Ed25519PrivateKey.generate()
    chain = (sign_rotation(KEY, new.public_key()),)
    back = read_manifest(write_manifest(manifest(2, chain), [new]), KEYS)
    assert back.signed_by == key_id(new.public_key())
    # after the rotation the old key alone no longer signs a valid manifest
    with pytest.raises(SignatureError):
        read_manifest(write_manifest(manifest(3, chain), [KEY]), KEYS)


def test_manifest_signed_only_by_unknown_key_is_refused() -> None:
    stranger = Ed25519PrivateKey.generate()
    with pytest.raises(SignatureError, match="no valid signature"):
        read_manifest(write_manifest(manifest(), [stranger]), KEYS)


def test_forged_rotation_is_refused() -> None:
    stranger, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    forged = sign_rotation(stranger, new.public_key())
    # a link signed by a key we never trusted is ignored: the manifest needs our key
    with pytest.raises(SignatureError):
        read_manifest(write_manifest(manifest(2, (forged,)), [new]), KEYS)


def test_check_file_detects_mix_and_match() -> None:
    ref = file_ref("x", b"hello")
    check_file(ref, b"hello", "x")
    with pytest.raises(SizeError):
        check_file(ref, b"hello!", "x")
    with pytest.raises(ChecksumError):
        check_file(ref, b"jello", "x")


def test_public_key_text_round_trip() -> None:
    text = public_key_text(KEY.public_key())
    assert key_id(load_public_key(text)) == key_id(KEY.public_key())
    with pytest.raises(SignatureError):
        load_public_key("not a key")


def test_delta_versions_must_increase() -> None:
    e = digest_array([])
    bad = Delta("iwf", 3, 3, 0, set_checksum(e, e), e, e, e, e)
    with pytest.raises(FormatError, match="greater"):
        read_delta(write_delta(bad, KEY), KEYS)


def test_format_versions_a_reader_knows_and_one_it_does_not(monkeypatch) -> None:
    """Files are written in format 2; format 1 files still read; a newer one is refused, saying so."""
    from blocklist.core.format import container
    data = write_snapshot(make_snapshot(1, [1], [10]), KEY)
    delta = write_delta(Delta("iwf", 1, 2, 0, "c" * 64, *([digest_array([])] * 4)), KEY)
    assert data[5] == delta[5] == container.FORMAT_VERSION == 2 and read_snapshot(data, KEYS).format_version == 2
    monkeypatch.setattr(container, "FORMAT_VERSION", 1)
    old = write_snapshot(make_snapshot(1, [1], [10]), KEY)
    assert old[5] == 1
    with pytest.raises(FormatError, match="format version 2 is newer than this reader understands .*upgrade"):
        read_snapshot(data, KEYS)  # a reader of format 1: the plugin before www twins
    monkeypatch.setattr(container, "READABLE_VERSIONS", (1,))
    with pytest.raises(FormatError, match="format version 2 is newer"):
        read_delta(delta, KEYS)
    monkeypatch.undo()
    assert read_snapshot(old, KEYS).format_version == 1
    newer = bytearray(data)
    newer[5] = 3
    with pytest.raises(FormatError, match="format version 3 is newer"):
        read_snapshot(bytes(newer), KEYS)
