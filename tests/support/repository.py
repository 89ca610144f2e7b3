"""An in-memory hotline and source: real signed artifacts, served to Syncer through the Fetcher interface.

`RepositorySimulator` plays both sides of the wire that tests/test_sync.py
needs a server thread for. As the hotline it holds the root keys, the online
key, every root document (root/<N>.json) and the rotations of both kinds
(`rotate_key`, `rotate_root`), each list's URLs and every version published,
re-signs the manifest for freshness (`refresh`), and compiles the lists
with the publisher's own code (blocklist.publish.compile_snapshot, the
digests the store computes, format.diff and the format writers). As the
source it is a resolver_plugin.distribution.sync.Fetcher over a dict of
path -> bytes, with the HTTP fetcher's contract: ETag and 304, SizeError past
the cap, SyncError kinds "http", "timeout" and "network".

Attacks are staged on the source, never on the hotline's record of what it
published (`files`, `manifests`): `serve` and `tamper` replace what one path
returns, `fail`, `time_out`, `disconnect` and `endless` make it misbehave,
`sign_manifest` forges a manifest with any key, version or lists, and
`heal` puts the genuine files back; `root_document` signs a root with any keys.
`requests` records every GET.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from multidict import CIMultiDict, CIMultiDictProxy

from blocklist.core.digests import Scope, entry_digests, make_entry, subtree_markers
from blocklist.core.errors import ErrorKind, SizeError
from blocklist.core.format.artifacts import Snapshot, diff, write_delta, write_snapshot
from blocklist.core.format.digestset import digest_array
from blocklist.core.format.keys import key_id
from blocklist.core.format.manifest import DeltaRef, ListRef, Manifest, file_ref, write_manifest
from blocklist.core.format.root import Root, make_root, read_root, write_root
from blocklist.publish import MANIFEST_NAME, compile_snapshot
from blocklist.store import ListInfo
from resolver_plugin.config import PluginConfig, load_config
from resolver_plugin.distribution.fetch import CHUNK, Fetched, SyncError

DAY = 86400
SOURCE = "http://hotline.invalid/"  # never resolved: the simulator is the source


@dataclass(frozen=True)
class Request:
    """One GET as the simulated source received it."""

    path: str
    headers: CIMultiDict[str]  # case-insensitive, as over HTTP
    limit: int
    wait: float


def etag_of(data: bytes) -> str:
    """A strong ETag of the bytes, as `blocklist serve` makes them."""
    return f'"{hashlib.sha256(data).hexdigest()[:32]}"'


def flip_last_byte(data: bytes) -> bytes:
    """The same length, another SHA-256: what a tampering mirror sends."""
    return data[:-1] + bytes([data[-1] ^ 1])


class RepositorySimulator:
    """A hotline's state in memory, and the source that serves what it published (a sync Fetcher)."""

    def __init__(self, lists: tuple[str, ...] = ("default",), *, lifetime: int = DAY,
                 error_rate: float = 1e-4, root_keys: int = 1, threshold: int = 1) -> None:
        self.key = Ed25519PrivateKey.generate()  # the online key
        self.retired: list[Ed25519PrivateKey] = []  # online keys replaced by a rotation, oldest first
        self.root_keys = [Ed25519PrivateKey.generate() for _ in range(root_keys)]
        self.root = make_root(1, int(time.time()), [k.public_key() for k in self.root_keys], threshold,
                              [self.key.public_key()])
        self.roots: dict[int, bytes] = {}  # every root document, by version
        self.lifetime = lifetime
        self.infos = {name: ListInfo(i, name, bytes([i]) * 16, error_rate, 0) for i, name in enumerate(lists, 1)}
        self.urls: dict[str, dict[str, Scope]] = {name: {} for name in lists}
        self.snapshots: dict[tuple[str, int], Snapshot] = {}
        self.lists: dict[str, ListRef] = {}      # the lists of the newest manifest
        self.version = 0                          # the newest manifest's version
        self.manifests: dict[int, bytes] = {}     # every manifest published, by version
        self.lists_of: dict[int, dict[str, ListRef]] = {}  # the lists of each manifest version
        self.files: dict[str, bytes] = {}         # every file published, by path (never pruned)
        # the source: what differs from the genuine files, and how paths misbehave
        self.overrides: dict[str, bytes] = {}
        self.faults: dict[str, str | int] = {}   # path -> "timeout" | "network" | "endless" | HTTP status
        self.etags = True                         # False: a plain mirror, no ETag and never 304
        self.long_poll = False                    # answers carry X-Blocklist-Wait
        self.requests: list[Request] = []
        self.sent: dict[str, int] = {}           # bytes an endless body got to hand out, by path
        self._publish_root(self.root, [*self.root_keys, self.key])

    # -- the hotline

    def add(self, *urls: str, list_name: str = "default", scope: Scope = Scope.PAGE) -> None:
        for url in urls:
            self.urls[list_name][url] = scope

    def remove(self, *urls: str, list_name: str = "default") -> None:
        for url in urls:
            del self.urls[list_name][url]

    def compile(self, name: str, version: int, now: int, expires: int) -> Snapshot:
        """List `name`'s current URLs as the publisher compiles them into a snapshot."""
        info = self.infos[name]
        entries, hosts, counts = set(), set(), {}
        for url, scope in self.urls[name].items():
            entry = make_entry(url, scope)
            digest, host_digest = entry_digests(info.salt, entry)
            if digest is not None:
                entries.add(digest)
            hosts.add(host_digest)
            hosts.update(subtree_markers(info.salt, entry.host))
            counts[scope.value] = counts.get(scope.value, 0) + 1
        return compile_snapshot(info, digest_array(entries), digest_array(hosts), counts, version, now, expires)

    def publish(self, *, now: int | None = None, expires: int | None = None, reissue: bool = False) -> int:
        """Publish every list whose URLs changed (all of them with `reissue`) and a new manifest.

        Snapshots and deltas are signed by the current key; returns the manifest version.
        """
        now = int(time.time()) if now is None else now
        expires = now + self.lifetime if expires is None else expires
        for name in self.infos:
            before = self.lists.get(name)
            version = before.version + 1 if before else 1
            snap = self.compile(name, version, now, expires)
            if before is not None and before.checksum == snap.checksum and not reissue:
                continue
            data = write_snapshot(snap, self.key)
            path = f"lists/{name}/snapshot-{version}"
            self.files[path] = data
            self.snapshots[(name, version)] = snap
            deltas = list(before.deltas) if before else []
            if before is not None:
                delta = write_delta(diff(name, self.snapshots[(name, before.version)], snap, now), self.key)
                ref = file_ref(f"lists/{name}/delta-{before.version}-{version}", delta)
                self.files[ref.path] = delta
                deltas.append(DeltaRef(ref.path, ref.size, ref.sha256, before.version, version))
            self.lists[name] = ListRef(version, snap.checksum, sum(snap.counts.values()),
                                       file_ref(path, data), tuple(deltas))
        self.version += 1
        self.manifests[self.version] = self.sign_manifest(created=now, expires=expires)
        self.lists_of[self.version] = dict(self.lists)
        self.files[MANIFEST_NAME] = self.manifests[self.version]
        return self.version

    def sign_manifest(self, *, version: int | None = None, created: int | None = None,
                      expires: int | None = None, lists: Mapping[str, ListRef] | None = None,
                      root_version: int | None = None, keys: list[Ed25519PrivateKey] | None = None) -> bytes:
        """A manifest of the current state, each field replaceable, signed by `keys` (the online key).

        Serves nothing: a test passes the bytes to `serve` to stage a forgery.
        """
        created = int(time.time()) if created is None else created
        manifest = Manifest(version=self.version if version is None else version, created=created,
                            expires=created + self.lifetime if expires is None else expires,
                            lists=dict(self.lists if lists is None else lists),
                            root_version=self.root.version if root_version is None else root_version)
        return write_manifest(manifest, keys or [self.key])

    def refresh(self, *, now: int | None = None, expires: int | None = None) -> bytes:
        """What `blocklist refresh` does: the newest manifest version re-signed, created now."""
        now = int(time.time()) if now is None else now
        self.manifests[self.version] = self.sign_manifest(created=now, expires=expires)
        self.files[MANIFEST_NAME] = self.manifests[self.version]
        return self.files[MANIFEST_NAME]

    def root_document(self, version: int, root_keys: list[Ed25519PublicKey], threshold: int,
                      online: list[Ed25519PublicKey], signers: list[Ed25519PrivateKey]) -> tuple[Root, bytes]:
        """A root document signed by `signers`, any of them; publishes nothing."""
        root = make_root(version, int(time.time()), root_keys, threshold, online)
        return root, write_root(root, signers)

    def _publish_root(self, root: Root, signers: list[Ed25519PrivateKey]) -> None:
        self.root = root
        self.roots[root.version] = write_root(root, signers)
        self.files[f"root/{root.version}.json"] = self.roots[root.version]

    def rotate_key(self, *, now: int | None = None) -> Ed25519PrivateKey:
        """What `blocklist key rotate` does: a new online key named by root N+1 (signed by the root
        keys), every list re-issued as its next version signed by it, a manifest under root N+1."""
        new = Ed25519PrivateKey.generate()
        root = make_root(self.root.version + 1, int(time.time()), list(self.root.root_keys.values()),
                         self.root.root.threshold, [new.public_key()])
        self._publish_root(root, self.root_keys)
        self.retired.append(self.key)
        self.key = new
        self.publish(now=now, reissue=True)
        return new

    def forge_list(self, name: str, version: int, key: Ed25519PrivateKey, *urls: str) -> ListRef:
        """A snapshot of `urls` (none: an empty list) at `version`, signed by `key` and served at
        its path: what someone holding an online key publishes. The hotline's record is untouched."""
        info = self.infos[name]
        hosts = {entry_digests(info.salt, make_entry(u, Scope.PAGE))[1] for u in urls}
        pages = {entry_digests(info.salt, make_entry(u, Scope.PAGE))[0] for u in urls}
        now = int(time.time())
        snap = compile_snapshot(info, digest_array(d for d in pages if d is not None), digest_array(hosts),
                                {"page": len(urls)}, version, now, now + self.lifetime)
        data = write_snapshot(snap, key)
        ref = file_ref(f"lists/{name}/snapshot-{version}", data)
        self.serve(ref.path, data)
        return ListRef(version, snap.checksum, len(urls), ref)

    def rotate_root(self, count: int = 1, threshold: int = 1) -> list[Ed25519PrivateKey]:
        """What `blocklist key rotate-root` does: new root keys named by root N+1, signed by the old
        root keys and the new ones, and the manifest's next version under root N+1."""
        new_keys = [Ed25519PrivateKey.generate() for _ in range(count)]
        root = make_root(self.root.version + 1, int(time.time()), [k.public_key() for k in new_keys], threshold,
                         list(self.root.online_keys.values()))
        self._publish_root(root, [*self.root_keys, *new_keys])
        self.root_keys = new_keys
        self.publish()
        return new_keys

    @property
    def key_id(self) -> str:
        return key_id(self.key.public_key())

    # -- staging attacks on the source

    def serve(self, path: str, data: bytes) -> None:
        """Answer `path` with `data` instead of the genuine file (a replay, a mix, a forgery)."""
        self.overrides[path] = data

    def tamper(self, path: str, change: Callable[[bytes], bytes] = flip_last_byte) -> None:
        """Answer `path` with its genuine bytes changed by `change`."""
        self.overrides[path] = change(self.files[path])

    def fail(self, path: str, status: int = 503) -> None:
        """Answer `path` with an HTTP error status."""
        self.faults[path] = status

    def time_out(self, path: str) -> None:
        """A source that never finishes answering `path` (slow retrieval, a hanging server)."""
        self.faults[path] = "timeout"

    def disconnect(self, path: str) -> None:
        """A connection refused or cut while asking for `path`."""
        self.faults[path] = "network"

    def endless(self, path: str) -> None:
        """A body that never ends and announces no length."""
        self.faults[path] = "endless"

    def heal(self) -> None:
        """Serve the genuine files again, with no faults."""
        self.overrides.clear()
        self.faults.clear()

    def fetched(self, prefix: str = "") -> list[str]:
        """The paths GET so far (starting with `prefix`), in order."""
        return [r.path for r in self.requests if r.path.startswith(prefix)]

    # -- the source: resolver_plugin.distribution.sync.Fetcher

    async def get(self, path: str, limit: int, headers: Mapping[str, str] | None = None,
                  wait: float = 0.0) -> Fetched:
        received: CIMultiDict[str] = CIMultiDict(headers or {})
        self.requests.append(Request(path, received, limit, wait))
        fault = self.faults.get(path)
        if fault == "timeout":
            raise SyncError(ErrorKind.TIMEOUT, f"{path}: timed out (simulated source, wait {wait:g}s)")
        if fault == "network":
            raise SyncError(ErrorKind.NETWORK, f"{path}: ServerDisconnectedError: simulated source")
        if isinstance(fault, int):
            raise SyncError(ErrorKind.HTTP, f"{path}: HTTP {fault}")
        if fault == "endless":
            return Fetched(200, self._read_capped(path, limit), None, self._headers(None, wait))
        data = self.overrides.get(path, self.files.get(path))
        if data is None:
            raise SyncError(ErrorKind.HTTP, f"{path}: HTTP 404")
        etag = etag_of(data) if self.etags else None
        if etag is not None and received.get("If-None-Match") == etag:
            return Fetched(304, b"", etag, self._headers(etag, wait))
        if len(data) > limit:
            raise SizeError(f"{path}: the server announces {len(data)} bytes, more than the {limit} expected")
        return Fetched(200, data, etag, self._headers(etag, wait))

    def _read_capped(self, path: str, limit: int) -> bytes:
        """Read an endless body as HttpFetcher does: chunk by chunk, aborted once past `limit`."""
        body = bytearray()
        for chunk in _endless():
            body += chunk
            self.sent[path] = len(body)
            if len(body) > limit:
                raise SizeError(f"{path}: the server sent more than the {limit} bytes expected; "
                                "download aborted")
        raise AssertionError("unreachable: the body never ends")

    def _headers(self, etag: str | None, wait: float) -> CIMultiDictProxy[str]:
        headers: CIMultiDict[str] = CIMultiDict()
        if etag is not None:
            headers["ETag"] = etag
        if self.long_poll:  # as `blocklist serve`: the wait it accepted (none is spent: no clock here)
            headers["X-Blocklist-Wait"] = f"{wait:g}"
        return CIMultiDictProxy(headers)

    # -- a plugin of this hotline

    def plugin_config(self, folder: Path, lists: tuple[str, ...] | None = None, *, anchor: int = 1,
                      bare_key: bool = False, **extra: object) -> PluginConfig:
        """A plugin.yaml in `folder` that pins root version `anchor` (as `blocklist key export` printed
        it then), or with `bare_key` the first online key as plugins did before roots; loaded by the
        real loader."""
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "hotline-root.json").write_bytes(self.roots[anchor])
        pin: dict[str, object] = {"public_key_file": "hotline-root.json"}
        if bare_key:
            first = next(iter(read_root(self.roots[1]).online_keys.values()))
            raw = first.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            pin = {"public_key": base64.b64encode(raw).decode()}
        doc = {"source": SOURCE, **pin,
               "lists": list(lists or self.infos), "cache_dir": "cache", "node_id": "sim-node",
               "long_poll": 0, "admin": {"listen": None}, **extra}
        (folder / "plugin.yaml").write_text(yaml.safe_dump(doc))
        return load_config(folder / "plugin.yaml")


class DirectorySource:
    """A static mirror of a publish directory for Syncer (a Fetcher): files read when asked, ETag, 304."""

    def __init__(self, root: Path) -> None:
        self.root = root

    async def get(self, path: str, limit: int, headers: Mapping[str, str] | None = None,
                  wait: float = 0.0) -> Fetched:
        try:
            data = (self.root / path).read_bytes()
        except OSError:
            raise SyncError(ErrorKind.HTTP, f"{path}: HTTP 404") from None
        etag = etag_of(data)
        if CIMultiDict(headers or {}).get("If-None-Match") == etag:
            return Fetched(304, b"", etag, CIMultiDictProxy(CIMultiDict(ETag=etag)))
        if len(data) > limit:
            raise SizeError(f"{path}: {len(data)} bytes, more than the {limit} expected")
        return Fetched(200, data, etag, CIMultiDictProxy(CIMultiDict(ETag=etag)))


def _endless() -> Iterator[bytes]:
    while True:
        yield b"\0" * CHUNK
