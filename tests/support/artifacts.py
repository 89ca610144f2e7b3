"""Signed artifacts for tests: snapshots, manifests and filters built in memory; a publish dir checked."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from blocklist.core.digests import Reach, Scope, entry_digests, make_entry, subtree_markers
from blocklist.core.format.artifacts import Snapshot, read_snapshot
from blocklist.core.format.bloom import build_bloom
from blocklist.core.format.digestset import digest_array, set_checksum
from blocklist.core.format.keys import key_id
from blocklist.core.format.manifest import DeltaRef, ListRef, Manifest, check_file, file_ref
from blocklist.core.matcher import ListFilter
from blocklist.home import Home
from blocklist.publish import current_manifest

if TYPE_CHECKING:
    from tests.conftest import Hotline

KEY = Ed25519PrivateKey.generate()
KEYS = {key_id(KEY.public_key()): KEY.public_key()}
SALT = b"0123456789abcdef"


def make_snapshot(version: int, entries: list[int], hosts: list[int], rate: float = 1e-6) -> Snapshot:
    e, h = digest_array(entries), digest_array(hosts)
    return Snapshot(list="iwf", version=version, created=1000 + version, expires=2000 + version,
                    salt=b"s" * 16, checksum=set_checksum(e, h), entry_bloom=build_bloom(e, rate),
                    host_bloom=build_bloom(h, rate), entries=e, hosts=h, counts={"page": len(e)})


def manifest(version: int = 1) -> Manifest:
    ref = file_ref("lists/iwf/snapshot-1", b"abc")
    return Manifest(version=version, created=10, expires=20, lists={
        "iwf": ListRef(version=1, checksum="c" * 64, entries=3, snapshot=ref,
                       deltas=(DeltaRef(ref.path, 3, ref.sha256, 0, 1),))})


def make_filter(entries: list[tuple[str, Scope]] | list[tuple[str, Scope, Reach]], name: str = "iwf",
                version: int = 1, rate: float = 1e-6, bloom: bool = True, markers: bool = True) -> ListFilter:
    """A filter as publish compiles it; markers=False: as published before subtree markers.

    Entries are (url, scope) with the default reach, or (url, scope, reach).
    """
    e, h = set(), set()
    for url, scope, *reach in entries:
        entry = make_entry(url, scope, *reach)
        d, hd = entry_digests(SALT, entry)
        if d is not None:
            e.add(d)
        h.add(hd)
        if markers:
            h.update(subtree_markers(SALT, entry.host))
    ea, ha = digest_array(e), digest_array(h)
    return ListFilter(name, version, SALT, ea, ha,
                      build_bloom(ea, rate) if bloom else None,
                      build_bloom(ha, rate) if bloom else None, subtree_markers=markers)


def published_state(hotline: Hotline) -> tuple[int, int]:
    """Check publish/ is one consistent signed version; returns (manifest version, list version)."""
    home = Home(hotline.home)
    key = home.signing_key()
    keys = {key_id(key.public_key()): key.public_key()}
    manifest = current_manifest(home, key)
    assert manifest is not None
    ref = manifest.lists["default"]
    for part in (ref.snapshot, *ref.deltas):
        data = (home.publish_dir / part.path).read_bytes()
        check_file(part, data, part.path)
    snap = read_snapshot((home.publish_dir / ref.snapshot.path).read_bytes(), keys)
    assert snap.version == ref.version and snap.checksum == ref.checksum
    leftovers = [p for p in home.publish_dir.rglob(".*tmp*")]
    assert len(leftovers) <= 1  # at most the temp file of the write that was killed
    return manifest.version, ref.version
