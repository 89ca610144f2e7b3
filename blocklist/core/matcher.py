"""Answers `check(url)` and `check_host(host)` against loaded lists: Bloom first, then exact.

A `ListFilter` is one list at one version, immutable once built: a delta makes a
new one (`apply`), and shells swap a whole `Matcher` by reference, so a request
is always answered by exactly one version of every list.

Lookup order for a URL (see blocklist.core.digests for the keys and reaches):
1. host level, in the host Bloom filter, every hit confirmed against the exact
   sorted host digests: the host's suffixes, the shortest first, each by its
   subtree marker (absent: nothing is listed at or below it; a "www." name has
   none and goes on), its domain digest (present: blocked) and its sub-host
   digest (present: its subdomain-reach entries apply to the URL); then the host's
   own host digest (exact entries) and its www base's twin-host digest (twin
   entries). No name that carries entries: the URL is allowed.
2. entry level, only for hosts that carry entries: page and folder digests of
   each name found in step 1, in the entry Bloom filter, confirmed against the
   exact entry digests.
A Bloom hit that the exact digests refute never blocks; it is counted.
A URL whose escaped "?" the spec reads as the query start is also checked as a
server reads it (blocklist.core.urls.server_view), on hosts that carry entries.
The host-level answer depends only on the host, so it is cached per filter, and so
are its suffixes' answers (a fresh name under a known parent costs dict lookups); and
a plain URL authority ("www.example.com:8080") whose host no list names is
remembered per Matcher, so most traffic is answered without canonicalizing.
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

from pybloom_live import BloomFilter

from blocklist.core.digests import (
    TREE_KIND,
    Reach,
    Scope,
    domain_keys,
    folder_tails,
    host_kind,
    kind_of,
    www_base,
)
from blocklist.core.errors import ChecksumError, FormatError
from blocklist.core.format.artifacts import Delta, Snapshot
from blocklist.core.format.bloom import bloom_key, grow_bloom
from blocklist.core.format.compiled import CompiledList
from blocklist.core.format.digestset import contains, merge_sorted, set_checksum
from blocklist.core.urls import MAX_URL_LENGTH, CanonicalURL, canonicalize, canonicalize_host, server_view

__all__ = ["ALLOWED", "HOST_PASS", "Carrier", "FailClosedHostVerdict", "FailClosedVerdict", "HostAction", "HostVerdict",
           "ListFilter", "Matcher", "Verdict"]

HOST_CACHE_SIZE = 65536
AUTHORITY_CACHE_SIZE = 131072
# An http(s) URL whose authority is plain lower-case ASCII: its canonical host is a function
# of the authority alone (no escapes, userinfo or brackets that canonicalization would read).
_PLAIN = re.compile(r"https?://([a-z0-9.-]{1,253}(?::[0-9]{1,5})?)(?:[/?#]|$)")


_DOMAIN = kind_of(Scope.DOMAIN)
_SUB_HOST, _TWIN_HOST, _EXACT_HOST = host_kind(Reach.SUBDOMAINS), host_kind(Reach.TWIN), host_kind(Reach.EXACT)


class Carrier(NamedTuple):
    """A name whose page and folder entries of one reach apply to the host being checked."""

    page_kind: bytes
    folder_kind: bytes
    name: str
    reach: Reach


def _carrier(reach: Reach, name: str) -> Carrier:
    return Carrier(kind_of(Scope.PAGE, reach), kind_of(Scope.FOLDER, reach), name, reach)


# What check_entries found: one constant per scope and reach, so a block allocates nothing more.
_PAGE_FOUND = {reach: (Scope.PAGE, reach) for reach in Reach}
_FOLDER_FOUND = {reach: (Scope.FOLDER, reach) for reach in Reach}
# How specific a scope is, for naming one list when several block a URL.
_RANK = {Scope.DOMAIN: 0, Scope.FOLDER: 1, Scope.PAGE: 2}


class HostAction(str, enum.Enum):
    PASS = "pass"    # nothing listed on this host
    PROXY = "proxy"  # the host carries page or folder entries: send it to stage 2
    BLOCK = "block"  # the host is listed whole (domain scope)


@dataclass(frozen=True)
class Verdict:
    """What a check found. It names the list, never the matched entry."""

    # True only in a FailClosedVerdict. A class attribute, not a field: a verdict costs
    # no more to make than before, and the check's answer carries the state in its type.
    fail_closed: ClassVar[bool] = False
    blocked: bool
    list: str | None = None
    version: int | None = None
    scope: Scope | None = None
    reach: Reach | None = None  # of a page or folder entry


@dataclass(frozen=True)
class FailClosedVerdict(Verdict):
    """Blocked because no list is loaded and the plugin fails closed; `list` is the label
    the block is shown and counted under, not the name of a list."""

    fail_closed: ClassVar[bool] = True


@dataclass(frozen=True)
class HostVerdict:
    """Stage 1's answer for a host; `fail_closed` as in Verdict."""

    fail_closed: ClassVar[bool] = False
    action: HostAction
    list: str | None = None
    version: int | None = None


@dataclass(frozen=True)
class FailClosedHostVerdict(HostVerdict):
    """No list is loaded and the plugin fails closed: the host goes to stage 2 (PROXY), and
    a tunnel to it, whose URLs stage 2 could not check, is refused; `list` as in FailClosedVerdict."""

    fail_closed: ClassVar[bool] = True


ALLOWED = Verdict(False)
HOST_PASS = HostVerdict(HostAction.PASS)
# The host-level answer: the action, the scope of a block, and the names whose entries apply.
HostAnswer = tuple[HostAction, Scope | None, tuple[Carrier, ...]]
_PASS: HostAnswer = (HostAction.PASS, None, ())
_BLOCK_DOMAIN: HostAnswer = (HostAction.BLOCK, Scope.DOMAIN, ())
# What a host suffix says (ListFilter._suffix): nothing at or below it, listed whole, carrier of
# subdomain-reach entries, or none of these.
_CLEAR, _LISTED, _SUBS, _MARKED = "clear", "listed", "subdomains", "marked"


class ListFilter:
    """One list at one version: salt, two Bloom filters and two exact digest sets."""

    def __init__(self, name: str, version: int, salt: bytes, entries: Sequence[int], hosts: Sequence[int],
                 entry_bloom: BloomFilter | None = None, host_bloom: BloomFilter | None = None,
                 created: int = 0, expires: int = 0, checksum: str | None = None,
                 subtree_markers: bool = False) -> None:
        self.name, self.version, self.salt = name, version, salt
        # hosts holds subtree markers: a name without one has nothing listed at or below it
        self.subtree_markers = subtree_markers
        # arrays('Q'), or memoryviews of a compiled list file's mapping (from_compiled): the
        # mapping is unmapped when the last filter holding its views is dropped
        self.entries, self.hosts = entries, hosts
        self.entry_bloom, self.host_bloom = entry_bloom, host_bloom
        self.created, self.expires = created, expires
        self.checksum = checksum if checksum is not None else set_checksum(entries, hosts)
        self._base = hashlib.sha256(salt)
        self._host_cache: dict[str, HostAnswer] = {}
        self._suffix_cache: dict[str, str] = {}
        self.bloom_confirmed = 0
        self.bloom_refuted = 0

    @classmethod
    def from_snapshot(cls, snap: Snapshot) -> ListFilter:
        return cls(snap.list, snap.version, snap.salt, snap.entries, snap.hosts,
                   snap.entry_bloom, snap.host_bloom, snap.created, snap.expires, snap.checksum,
                   snap.subtree_markers)

    @classmethod
    def from_compiled(cls, c: CompiledList) -> ListFilter:
        """The filter over a compiled list (blocklist.core.format.compiled), its views not copied."""
        return cls(c.list, c.version, c.salt, c.entries, c.hosts, c.entry_bloom, c.host_bloom,
                   c.created, c.expires, c.checksum, c.subtree_markers)

    def compiled(self) -> CompiledList:
        """What the compiled list file of this filter holds."""
        return CompiledList(self.name, self.version, self.created, self.expires, self.salt, self.checksum,
                            self.subtree_markers, self.entry_bloom, self.host_bloom, self.entries, self.hosts)

    def apply(self, delta: Delta) -> ListFilter:
        """A new filter at `delta.to_version`; raises if the delta does not fit this one."""
        if delta.list != self.name or delta.from_version != self.version:
            raise FormatError(f"delta {delta.list} {delta.from_version}->{delta.to_version} "
                              f"does not apply to {self.name} version {self.version}")
        entries = merge_sorted(self.entries, delta.entries_added, delta.entries_removed)
        hosts = merge_sorted(self.hosts, delta.hosts_added, delta.hosts_removed)
        checksum = set_checksum(entries, hosts)
        if checksum != delta.checksum:
            raise ChecksumError(f"delta {delta.from_version}->{delta.to_version} of {self.name}: "
                                "resulting set does not match the announced checksum")
        # Removed digests stay set in the Bloom filters: they become refuted hits.
        entry_bloom, host_bloom = self.entry_bloom, self.host_bloom
        if entry_bloom is not None and delta.entries_added:
            entry_bloom = grow_bloom(entry_bloom, delta.entries_added)
        if host_bloom is not None and delta.hosts_added:
            host_bloom = grow_bloom(host_bloom, delta.hosts_added)
        return ListFilter(self.name, delta.to_version, self.salt, entries, hosts, entry_bloom,
                          host_bloom, delta.created, self.expires, checksum, delta.subtree_markers)

    def __len__(self) -> int:
        return len(self.entries) + len(self.hosts)

    def _digest(self, kind: bytes, key: str) -> int:
        h = self._base.copy()
        h.update(kind + b"\x00" + key.encode("utf-8"))
        return int.from_bytes(h.digest()[:8], "big")

    def _member(self, bloom: BloomFilter | None, exact: Sequence[int], value: int) -> bool:
        if bloom is not None and bloom_key(value) not in bloom:
            return False
        if contains(exact, value):
            self.bloom_confirmed += 1
            return True
        if bloom is not None:
            self.bloom_refuted += 1
        return False

    def host_stage(self, host: str) -> HostAnswer:
        """The host-level answer for a canonical host (cached, and so are its parents' answers)."""
        cached = self._host_cache.get(host)
        if cached is None:
            cached = self._host_answer(host)
            if len(self._host_cache) >= HOST_CACHE_SIZE:
                self._host_cache.clear()
            self._host_cache[host] = cached
        return cached

    def _host_answer(self, host: str) -> HostAnswer:
        # The suffixes, the shortest first, the host last: one listed whole blocks; one without
        # a subtree marker has nothing at or below it, so the walk stops there; each carrier of
        # subdomain-reach entries on the way applies to the host. The walk's steps are cached,
        # so a fresh name under a known parent costs no digest.
        carriers: list[Carrier] = []
        for name in domain_keys(host)[::-1]:
            state = self._suffix(name)
            if state is _CLEAR:
                break
            if state is _LISTED:
                return _BLOCK_DOMAIN
            if state is _SUBS:
                carriers.append(_carrier(Reach.SUBDOMAINS, name))
        else:
            if self._member(self.host_bloom, self.hosts, self._digest(_EXACT_HOST, host)):
                carriers.append(_carrier(Reach.EXACT, host))
            base = www_base(host)
            if self._member(self.host_bloom, self.hosts, self._digest(_TWIN_HOST, base)):
                carriers.append(_carrier(Reach.TWIN, base))
        return (HostAction.PROXY, None, tuple(carriers)) if carriers else _PASS

    def clear_suffix(self, host: str) -> str | None:
        """The shortest suffix of the canonical `host` with nothing listed at or below it, if any.

        Every name below that suffix passes the host stage. None when the subtree
        markers do not show one (or a suffix is listed whole or carries subdomain-reach
        entries, which apply to every name below it).
        """
        dot = host.rfind(".")
        if dot < 0 or host.startswith("[") or host[dot + 1:].isdigit():
            return self._clear_suffix_slow(host)  # one label, or an IP address (or its look-alike)
        # domain_keys(host) shortest first, without building them all: most names stop at two labels
        dot = host.rfind(".", 0, dot)
        while True:
            name = host[dot + 1:]
            state = self._suffix(name)
            if state is not _MARKED:
                return name if state is _CLEAR else None
            if dot < 0:
                return None
            dot = host.rfind(".", 0, dot)

    def _clear_suffix_slow(self, host: str) -> str | None:
        for name in domain_keys(host)[::-1]:
            if "." not in name and not name.startswith("["):
                return None  # markers stop at two labels: one label's has no word on names below it
            state = self._suffix(name)
            if state is not _MARKED:
                return name if state is _CLEAR else None
        return None

    def _suffix(self, name: str) -> str:
        """_CLEAR, _LISTED, _SUBS or _MARKED for one suffix (cached).

        A "www." name has no marker of its own (its base's speaks for it, and the walk
        met the base first), so it is never _CLEAR, and no entry is filed under it but
        exact and domain ones.
        """
        state = self._suffix_cache.get(name)
        if state is None:
            base = not name.startswith("www.") or www_base(name) == name
            if base and self.subtree_markers and not self._member(self.host_bloom, self.hosts,
                                                                  self._digest(TREE_KIND, name)):
                state = _CLEAR
            elif self._member(self.host_bloom, self.hosts, self._digest(_DOMAIN, name)):
                state = _LISTED
            elif base and self._member(self.host_bloom, self.hosts, self._digest(_SUB_HOST, name)):
                state = _SUBS
            else:
                state = _MARKED
            if len(self._suffix_cache) >= HOST_CACHE_SIZE:
                self._suffix_cache.clear()
            self._suffix_cache[name] = state
        return state

    def check_canonical(self, url: CanonicalURL) -> Scope | None:
        """The scope of the entry that covers `url`, or None."""
        action, scope, carriers = self.host_stage(url.host)
        if action is HostAction.PROXY:
            found = self.check_entries(url, carriers)
            return None if found is None else found[0]
        return scope

    def check_entries(self, url: CanonicalURL, carriers: tuple[Carrier, ...]) -> tuple[Scope, Reach] | None:
        """Stage 2 for a host that carries entries: the page, else the folder entry covering `url`."""
        member, digest, bloom, entries = self._member, self._digest, self.entry_bloom, self.entries
        path, query = url.path, url.query
        for page_kind, _, name, reach in carriers:
            if query is not None and member(bloom, entries, digest(page_kind, f"{name}{path}?{query}")):
                return _PAGE_FOUND[reach]
            if member(bloom, entries, digest(page_kind, name + path)):
                return _PAGE_FOUND[reach]
        tails = folder_tails(url)
        for _, folder_kind, name, reach in carriers:
            for tail in tails:
                if member(bloom, entries, digest(folder_kind, name + tail)):
                    return _FOLDER_FOUND[reach]
        return None


class Matcher:
    """Every enforced list together.

    A URL is checked against every list: the most specific entry that covers it names the
    verdict (page over folder over domain), the first list in order on a tie, and a page
    entry ends the search. Stage 1 (`check_host`) answers BLOCK from the first list that
    lists the host whole, else PROXY from the first that carries entries under it.
    """

    def __init__(self, filters: Iterable[ListFilter] = ()) -> None:
        self.filters: tuple[ListFilter, ...] = tuple(filters)
        # URL authorities ("www.example.com", "a.example:8080") whose verdict does not depend on
        # the path: no list names the host (ALLOWED), or the lists that name it list it whole
        # (their block). Such a URL is answered without canonicalizing it.
        self._authority_verdicts: dict[str, Verdict] = {}

    def __bool__(self) -> bool:
        return bool(self.filters)

    def versions(self) -> dict[str, int]:
        return {f.name: f.version for f in self.filters}

    @property
    def remembered(self) -> Mapping[str, Verdict]:
        """The verdicts check() remembers per plain authority: a URL whose authority (as `_PLAIN`
        reads it) is here gets this verdict, whatever its path."""
        return self._authority_verdicts

    def replace(self, new: ListFilter) -> Matcher:
        """A matcher with `new` in place of the filter of the same list (or added)."""
        kept = [new if f.name == new.name else f for f in self.filters]
        if not any(f.name == new.name for f in self.filters):
            kept.append(new)
        return Matcher(kept)

    def check(self, url: str | CanonicalURL) -> Verdict:
        """Whether `url` is listed; raises InvalidURL if it cannot be canonicalized."""
        authority = None
        if isinstance(url, CanonicalURL):
            canonical = url
        else:
            plain = _PLAIN.match(url) if len(url) <= MAX_URL_LENGTH else None  # its authority, if plain
            if plain is not None:
                authority = plain.group(1)
                known = self._authority_verdicts.get(authority)
                if known is not None:
                    return known
            canonical = canonicalize(url)
        host_listed = path_matters = False
        best: Verdict | None = None
        best_rank = -1
        for f in self.filters:
            action, scope, carriers = f.host_stage(canonical.host)
            if action is HostAction.PASS:
                continue
            host_listed = True
            reach = None
            if action is HostAction.PROXY:
                path_matters = True
                found = f.check_entries(canonical, carriers)
                if found is None:
                    continue
                scope, reach = found
            if scope is not None and _RANK[scope] > best_rank:
                # Several lists may block a URL: the most specific entry names it, the first list on a tie.
                best, best_rank = Verdict(True, f.name, f.version, scope, reach), _RANK[scope]
                if scope is Scope.PAGE:
                    break
        if authority is not None and not path_matters:
            if len(self._authority_verdicts) >= AUTHORITY_CACHE_SIZE:
                self._authority_verdicts.clear()
            self._authority_verdicts[authority] = best or ALLOWED
        if best is not None:
            return best
        if host_listed and not isinstance(url, CanonicalURL) and "%" in url:
            # An escaped "?" the spec reads as the query: a server may read it as a path
            # character ("/x%3F/../page.html" is "/page.html" to nginx). Check that reading too.
            alternative = server_view(url)
            if alternative is not None:
                return self.check(alternative)
        return ALLOWED

    def clear_suffix(self, host: str) -> str | None:
        """A suffix of the canonical `host` below which every name passes stage 1 in every list."""
        if len(self.filters) == 1:  # the usual case; the same answer as below
            return self.filters[0].clear_suffix(host)
        found = [f.clear_suffix(host) for f in self.filters]
        suffixes = [s for s in found if s is not None]
        if not found or len(suffixes) < len(found):
            return None
        return max(suffixes, key=len)  # suffixes of one host: the longest is below all the others

    def check_host(self, host: str) -> HostVerdict:
        """Stage 1: BLOCK a host listed whole, PROXY one that carries entries, else PASS."""
        canonical = canonicalize_host(host)
        proxy: HostVerdict | None = None
        for f in self.filters:
            action, _, _ = f.host_stage(canonical)
            if action is HostAction.BLOCK:
                return HostVerdict(action, f.name, f.version)
            if action is HostAction.PROXY and proxy is None:
                proxy = HostVerdict(action, f.name, f.version)
        return proxy or HOST_PASS
