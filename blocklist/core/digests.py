"""Entry scopes, entry keys and the salted digests both sides compute from them.

An entry is a canonical URL plus a scope. Its *key* is the text that is hashed:

    page    host + path [+ "?" + query]   that page; any query when the entry has none
    folder  host + path ending in "/"     that path and everything below it, at any depth
    domain  host                          the host and all its subdomains

Digests are SHA-256(salt || kind || 0x00 || key), truncated to DIGEST_SIZE bytes and
read as a big-endian unsigned integer. `kind` is the scope's name in ASCII, "host"
for the stage-1 record "this host carries page or folder entries", or "tree" for
the subtree marker "this name, or a name below it, carries an entry". The salt is
per list, so digests of one list say nothing about another.

Two digest sets make a list (docs/FORMAT.md):
    hosts    host digests of every host with page/folder entries, domain digests, and
             a subtree marker for every suffix (down to two labels) of every listed host
    entries  page and folder digests
A URL is looked up in `hosts` first and only goes on to `entries` when its host
carries entries: most traffic stops there. The host lookup walks the host's
suffixes shortest first and stops at the first one without a subtree marker, so an
unlisted host costs one digest for its registered domain, and a fresh name under a
known parent ("x1.cdn.example") none at all.
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
from typing import NamedTuple

from blocklist.core.errors import InvalidURL
from blocklist.core.urls import CanonicalURL, canonicalize, host_suffixes, path_prefixes

DIGEST_SIZE = 8


class Scope(str, enum.Enum):
    PAGE = "page"
    FOLDER = "folder"
    DOMAIN = "domain"

    def __str__(self) -> str:
        return self.value


HOST_KIND = b"host"
TREE_KIND = b"tree"
_KINDS = {Scope.PAGE: b"page", Scope.FOLDER: b"folder", Scope.DOMAIN: b"domain"}


class Entry(NamedTuple):
    """A canonical entry: what the store keeps and the compiler hashes."""

    scope: Scope
    key: str
    host: str
    url: str  # canonical URL as listed (hotline-private)


def digest(salt: bytes, kind: bytes, key: str) -> int:
    """The truncated salted digest of one key, as an unsigned integer."""
    raw = hashlib.sha256(salt + kind + b"\x00" + key.encode("utf-8")).digest()
    return int.from_bytes(raw[:DIGEST_SIZE], "big")


def is_ip(host: str) -> bool:
    if host.startswith("["):
        return True
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


def make_entry(url: str, scope: Scope) -> Entry:
    """Canonicalize `url` as an entry of `scope`; raise InvalidURL if it cannot be one."""
    c = canonicalize(url)
    if scope is Scope.DOMAIN:
        if c.path != "/" or c.query is not None:
            raise InvalidURL("a domain entry names a host only (no path or query)")
        if "." not in c.host and not is_ip(c.host):
            raise InvalidURL(f"a domain entry needs at least two labels: {c.host!r}")
        return Entry(scope, c.host, c.host, f"{c.scheme}://{c.host}/")
    if scope is Scope.FOLDER:
        if c.query is not None:
            raise InvalidURL("a folder entry has no query string")
        path = c.path if c.path.endswith("/") else c.path + "/"
        return Entry(scope, c.host + path, c.host, f"{c.scheme}://{c.host}{path}")
    key = c.host + c.path + ("" if c.query is None else "?" + c.query)
    return Entry(scope, key, c.host, str(c))


def entry_digests(salt: bytes, entry: Entry) -> tuple[int | None, int]:
    """(entry digest or None for domain entries, host-level digest) of one entry."""
    if entry.scope is Scope.DOMAIN:
        return None, digest(salt, _KINDS[Scope.DOMAIN], entry.key)
    return digest(salt, _KINDS[entry.scope], entry.key), digest(salt, HOST_KIND, entry.host)


def domain_keys(host: str) -> list[str]:
    """Hosts whose domain entry covers `host`: itself and every parent."""
    return host_suffixes(host)


def entry_keys(c: CanonicalURL) -> list[tuple[Scope, str]]:
    """Every page and folder key that would cover the canonical URL `c`."""
    keys: list[tuple[Scope, str]] = []
    if c.query is not None:
        keys.append((Scope.PAGE, f"{c.host}{c.path}?{c.query}"))
    keys.append((Scope.PAGE, c.host + c.path))
    prefixes = path_prefixes(c.path)
    if not c.path.endswith("/"):
        prefixes.append(c.path + "/")  # folder "/a/" also covers the URL "/a"
    keys.extend((Scope.FOLDER, c.host + p) for p in prefixes)
    return keys


def kind_of(scope: Scope) -> bytes:
    return _KINDS[scope]


def subtree_markers(salt: bytes, host: str) -> list[int]:
    """The subtree markers a listed `host` (of any entry) puts in the host set: one per suffix."""
    return [digest(salt, TREE_KIND, suffix) for suffix in host_suffixes(host)]
