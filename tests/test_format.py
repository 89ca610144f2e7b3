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
from blocklist.core.format.envelope import MAX_SIGNATURES, seal
from blocklist.core.format.keys import key_id, load_public_key, public_key_text
from blocklist.core.format.manifest import (
    ListRef,
    Manifest,
    check_file,
    file_ref,
    manifest_signed,
    read_manifest,
    root_version_hint,
    write_manifest,
)
from blocklist.core.format.root import bare_key_root, make_root, read_anchor, read_next_root, read_root, write_root
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


def test_manifest_signed_only_by_unknown_key_is_refused() -> None:
    stranger = Ed25519PrivateKey.generate()
    with pytest.raises(SignatureError, match="no valid signature"):
        read_manifest(write_manifest(manifest(), [stranger]), KEYS)


def test_a_manifest_names_its_root_version_and_a_format_1_manifest_says_what_to_do() -> None:
    data = write_manifest(manifest(2), [KEY])
    assert root_version_hint(data) == 1 and read_manifest(data, KEYS).root_version == 1
    assert json.loads(data)["signed"]["spec_version"] == 2  # a format-1 reader refuses it by its version
    old = manifest_signed(manifest(2)) | {"spec_version": 1, "key_chain": []}
    del old["root_version"]
    with pytest.raises(FormatError, match="format 1, from a hotline older than root keys"):
        read_manifest(seal(old, [KEY]), KEYS)
    assert read_manifest(seal(old, [KEY]), KEYS, allow_format_1=True).root_version == 0  # the hotline's upgrade


def test_root_round_trip_and_the_rules_of_the_next_root() -> None:
    old_keys = [Ed25519PrivateKey.generate() for _ in range(3)]
    root = make_root(1, 5, [k.public_key() for k in old_keys], 2, [KEY.public_key()])
    data = write_root(root, old_keys[:2])
    assert read_root(data) == root and read_anchor(b"\n " + data) == root
    assert read_root(data).online_keys.keys() == KEYS.keys()
    with pytest.raises(SignatureError, match="1 valid of the 2 signatures needed"):
        read_root(write_root(root, old_keys[:1]))
    new_keys = [Ed25519PrivateKey.generate() for _ in range(2)]
    nxt = make_root(2, 6, [k.public_key() for k in new_keys], 2, [KEY.public_key()])
    assert read_next_root(root, write_root(nxt, [*old_keys[1:], *new_keys])) == nxt
    with pytest.raises(SignatureError, match="root keys of version 1"):  # too few of the old
        read_next_root(root, write_root(nxt, [old_keys[0], *new_keys]))
    with pytest.raises(SignatureError, match="its own root keys"):      # too few of its own
        read_next_root(root, write_root(nxt, [*old_keys, new_keys[0]]))
    with pytest.raises(FormatError, match="expected root version 3"):   # no replay, no skipping
        read_next_root(nxt, write_root(nxt, [*old_keys, *new_keys]))


def test_a_damaged_root_is_refused() -> None:
    root_key = Ed25519PrivateKey.generate()
    doc = json.loads(write_root(make_root(1, 5, [root_key.public_key()], 1, [KEY.public_key()]), [root_key]))
    swapped = json.loads(json.dumps(doc))
    swapped["signed"]["keys"][key_id(KEY.public_key())] = swapped["signed"]["keys"][key_id(root_key.public_key())]
    with pytest.raises(FormatError, match="does not match its key"):
        read_root(json.dumps(swapped).encode())
    doc["signed"]["roles"]["online"]["threshold"] = 0
    with pytest.raises(FormatError, match="threshold 0"):
        read_root(json.dumps(doc).encode())
    doc["signed"]["roles"]["online"]["threshold"] = 1
    doc["signatures"] = doc["signatures"] * (MAX_SIGNATURES + 1)
    with pytest.raises(SignatureError, match="more than the 32"):
        read_root(json.dumps(doc).encode())


def test_a_bare_key_is_a_root_of_version_0_with_one_key_for_both_roles() -> None:
    root = read_anchor(public_key_text(KEY.public_key()).encode())
    assert root == bare_key_root(KEY.public_key()) and root.version == 0 and root.bare_key
    assert root.online_keys == root.root_keys == KEYS
    with pytest.raises(SignatureError, match="neither a root document"):
        read_anchor(b"hello")


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
