"""Entry scopes and reaches, entry keys and the salted digests both sides compute from them.

An entry is a canonical URL plus a scope. Its *key* is the text that is hashed:

    page    host + path [+ "?" + query]   that page; any query when the entry has none
    folder  host + path ending in "/"     that path and everything below it, at any depth
    domain  host                          the host and all its subdomains

A page or folder entry also has a *reach*, the hosts it applies on:

    twin        (the default) the host and its www. twins: every name that is the same
                once its leading "www." labels are removed (www_base), so an entry on
                example.org also covers www.example.org and the reverse; the key's host
                is that base name
    subdomains  the base name and every name below it, as Safe Browsing's host
                suffixes do; the key's host is the base name
    exact       the host as listed, nothing else (files before the twin rule hold only these)

Digests are SHA-256(salt || kind || 0x00 || key), truncated to DIGEST_SIZE bytes and
read as a big-endian unsigned integer. `kind` names the scope and reach ("page",
"twin-page", "sub-folder", ...), or a host-level record: "host", "twin-host" or
"sub-host" for "this name carries page or folder entries of that reach", "tree" for
the subtree marker "this name, or a name below it, carries an entry". The salt is
per list, so digests of one list say nothing about another.

Two digest sets make a list (docs/FORMAT.md):
    hosts    the host-level digests of every name with page/folder entries, domain
             digests, and a subtree marker for every suffix (down to two labels) of the
             www base of every listed host
    entries  page and folder digests
A URL is looked up in `hosts` first and only goes on to `entries` when its host
carries entries: most traffic stops there. The host lookup walks the host's
suffixes shortest first and stops at the first one without a subtree marker, so an
unlisted host costs one digest for its registered domain, and a fresh name under a
known parent ("x1.cdn.example") none at all. A name that starts with "www." has no
marker of its own: its base's marker speaks for it.
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
from typing import NamedTuple

from blocklist.core.errors import InvalidURL
from blocklist.core.listable import browser_host, check_listable_host
from blocklist.core.urls import CanonicalURL, canonicalize, host_suffixes, path_prefixes

DIGEST_SIZE = 8


class Scope(str, enum.Enum):
    PAGE = "page"
    FOLDER = "folder"
    DOMAIN = "domain"

    def __str__(self) -> str:
        return self.value


class Reach(str, enum.Enum):
    """The hosts a page or folder entry applies on (a domain entry is always EXACT)."""

    EXACT = "exact"
    TWIN = "twin"
    SUBDOMAINS = "subdomains"

    def __str__(self) -> str:
        return self.value


HOST_KIND = b"host"
TREE_KIND = b"tree"
_KINDS = {
    (Scope.PAGE, Reach.EXACT): b"page", (Scope.FOLDER, Reach.EXACT): b"folder",
    (Scope.DOMAIN, Reach.EXACT): b"domain",
    (Scope.PAGE, Reach.TWIN): b"twin-page", (Scope.FOLDER, Reach.TWIN): b"twin-folder",
    (Scope.PAGE, Reach.SUBDOMAINS): b"sub-page", (Scope.FOLDER, Reach.SUBDOMAINS): b"sub-folder",
}
_HOST_KINDS = {Reach.EXACT: HOST_KIND, Reach.TWIN: b"twin-host", Reach.SUBDOMAINS: b"sub-host"}


class Entry(NamedTuple):
    """A canonical entry: what the store keeps and the compiler hashes."""

    scope: Scope
    key: str
    host: str  # the name the entry is filed under: as listed (exact, domain) or its www base
    url: str  # canonical URL as listed (hotline-private)
    reach: Reach


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


def www_base(host: str) -> str:
    """A canonical host without its leading "www." labels: the name its www. twins share.

    A label is removed only while two labels stay and the rest is no IPv4 address, so
    "www.example" and "www.1.2.3.4" are their own base; an IP address has no twin.
    """
    while host.startswith("www.") and host.count(".") >= 2:
        rest = host[4:]
        if rest.replace(".", "").isdigit() and is_ip(rest):
            break
        host = rest
    return host


def make_entry(url: str, scope: Scope, reach: Reach = Reach.TWIN) -> Entry:
    """Canonicalize `url` as an entry of `scope` and `reach`; raise InvalidURL if it cannot be one.

    A domain entry already covers every name below its host: its reach is EXACT
    unless SUBDOMAINS is asked for, which it refuses as meaningless.
    """
    c = canonicalize(url)
    if scope is Scope.DOMAIN:
        if reach is Reach.SUBDOMAINS:
            raise InvalidURL("a domain entry already covers every subdomain (subdomains is for page "
                             "and folder entries)")
        if c.path != "/" or c.query is not None:
            raise InvalidURL("a domain entry names a host only (no path or query)")
        if "." not in c.host and not is_ip(c.host):
            raise InvalidURL(f"a domain entry needs at least two labels: {c.host!r}")
        return Entry(scope, c.host, c.host, f"{c.scheme}://{c.host}/", Reach.EXACT)
    host = c.host if reach is Reach.EXACT else www_base(c.host)
    if scope is Scope.FOLDER:
        if c.query is not None:
            raise InvalidURL("a folder entry has no query string")
        path = c.path if c.path.endswith("/") else c.path + "/"
        return Entry(scope, host + path, host, f"{c.scheme}://{c.host}{path}", reach)
    key = host + c.path + ("" if c.query is None else "?" + c.query)
    return Entry(scope, key, host, str(c), reach)


def make_new_entry(url: str, scope: Scope, reach: Reach = Reach.TWIN) -> Entry:
    """make_entry for an entry being listed (add, import): its host must be one a browser reaches.

    A label a browser maps to punycode and canonicalization keeps as bytes (an emoji)
    is listed in the form the browser sends (blocklist.core.listable).
    """
    c = canonicalize(url)
    mapped = browser_host(c.host)
    if mapped is not None:
        c = c._replace(host=mapped)
        url = str(c)
    check_listable_host(c.host)
    return make_entry(url, scope, reach)


def entry_digests(salt: bytes, entry: Entry) -> tuple[int | None, int]:
    """(entry digest or None for domain entries, host-level digest) of one entry."""
    if entry.scope is Scope.DOMAIN:
        return None, digest(salt, _KINDS[Scope.DOMAIN, Reach.EXACT], entry.key)
    return (digest(salt, _KINDS[entry.scope, entry.reach], entry.key),
            digest(salt, _HOST_KINDS[entry.reach], entry.host))


def domain_keys(host: str) -> list[str]:
    """Hosts whose domain entry covers `host`: itself and every parent."""
    return host_suffixes(host)


def page_tails(c: CanonicalURL) -> list[str]:
    """What follows the host in every page key that covers `c`: with its query, then without."""
    return [c.path] if c.query is None else [f"{c.path}?{c.query}", c.path]


def folder_tails(c: CanonicalURL) -> list[str]:
    """What follows the host in every folder key that covers `c`, the shortest first."""
    prefixes = path_prefixes(c.path)
    if not c.path.endswith("/"):
        prefixes.append(c.path + "/")  # folder "/a/" also covers the URL "/a"
    return prefixes


def entry_keys(c: CanonicalURL) -> list[tuple[Scope, str]]:
    """Every page and folder key of an exact-reach entry that would cover the canonical URL `c`."""
    keys = [(Scope.PAGE, c.host + t) for t in page_tails(c)]
    keys.extend((Scope.FOLDER, c.host + t) for t in folder_tails(c))
    return keys


def lookup_digests(salt: bytes, c: CanonicalURL) -> list[int]:
    """The digest of every entry, of any scope and reach, that would cover the canonical URL `c`.

    The hotline uses it to find the store rows behind a match; the matcher looks up
    the same keys, but only those of the names the host set says carry entries.
    """
    domain = _KINDS[Scope.DOMAIN, Reach.EXACT]
    values = [digest(salt, domain, h) for h in domain_keys(c.host)]
    names = [(Reach.EXACT, c.host), (Reach.TWIN, www_base(c.host))]
    names += [(Reach.SUBDOMAINS, h) for h in domain_keys(c.host) if www_base(h) == h]
    for reach, name in names:
        values += [digest(salt, _KINDS[Scope.PAGE, reach], name + t) for t in page_tails(c)]
        values += [digest(salt, _KINDS[Scope.FOLDER, reach], name + t) for t in folder_tails(c)]
    return values


def kind_of(scope: Scope, reach: Reach = Reach.EXACT) -> bytes:
    return _KINDS[scope, reach]


def host_kind(reach: Reach) -> bytes:
    """The host-level kind of "this name carries page or folder entries of `reach`"."""
    return _HOST_KINDS[reach]


def subtree_markers(salt: bytes, host: str) -> list[int]:
    """The subtree markers a listed `host` (of any entry) puts in the host set: one per suffix of its base."""
    return [digest(salt, TREE_KIND, suffix) for suffix in host_suffixes(www_base(host))]
