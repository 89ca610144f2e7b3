"""Why a URL is blocked or allowed: which list, version, scope, reach and stage decided it.

For an ISP's support desk (`blocklist-plugin check URL --explain`). The answer is
what the node knows, never an entry's plaintext (the node has none): for each list,
the host-stage action, how many digests were looked up, how many the Bloom filter
hit and how many of those the exact digests refuted, and the digest that decided.
The hotline can find the entry behind a digest; nobody else learns more from it
than from the published snapshot.

It runs the matcher's own code (blocklist.core.matcher) on copies of the lists that
record every lookup, so an explanation cannot disagree with a verdict.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pybloom_live import BloomFilter

from blocklist.core.format.bloom import bloom_key
from blocklist.core.matcher import HostAction, ListFilter, Matcher, Verdict
from blocklist.core.urls import CanonicalURL, canonicalize

__all__ = ["Explanation", "ListExplanation", "Lookup", "explain"]

_ENTRY_KINDS = {"page", "folder", "twin-page", "twin-folder", "sub-page", "sub-folder"}


@dataclass(frozen=True)
class Lookup:
    """One digest looked up: its kind, whether the Bloom filter hit, whether the exact digests hold it."""

    kind: str
    digest: int
    bloom_hit: bool | None  # None: the list has no Bloom filter (exact digests only)
    confirmed: bool


@dataclass
class ListExplanation:
    name: str
    version: int
    host: HostAction  # what stage 1 (DNS) answers for the URL's host with this list
    lookups: list[Lookup] = field(default_factory=list)
    verdict: Verdict | None = None  # this list's own answer, when it blocks

    @property
    def decided_by(self) -> Lookup | None:
        """The confirmed lookup behind this list's block: a domain digest or an entry digest."""
        if self.verdict is None:
            return None
        kinds = {"domain"} if self.verdict.reach is None else _ENTRY_KINDS
        return next((x for x in reversed(self.lookups) if x.confirmed and x.kind in kinds), None)

    def as_json(self) -> dict[str, Any]:
        decided = self.decided_by
        return {"list": self.name, "version": self.version, "stage1": self.host.value,
                "blocked": self.verdict is not None,
                "scope": self.verdict.scope.value if self.verdict and self.verdict.scope else None,
                "reach": self.verdict.reach.value if self.verdict and self.verdict.reach else None,
                "stage": _stage(self.verdict),
                "digest": f"{decided.digest:016x}" if decided else None,
                "bloom": _bloom_words(decided) if decided else None,
                "lookups": len(self.lookups), "bloom_hits": sum(x.bloom_hit is True for x in self.lookups),
                "bloom_refuted": sum(x.bloom_hit is True and not x.confirmed for x in self.lookups)}


@dataclass
class Explanation:
    verdict: Verdict
    stage1: HostAction  # what stage 1 answers for the host across every list
    lists: list[ListExplanation]

    def as_json(self) -> dict[str, Any]:
        v = self.verdict
        return {"blocked": v.blocked, "list": v.list, "version": v.version,
                "scope": v.scope.value if v.scope else None, "reach": v.reach.value if v.reach else None,
                "stage": _stage(v) if v.blocked else None, "stage1": self.stage1.value,
                "lists": [x.as_json() for x in self.lists]}

    def lines(self) -> list[str]:
        """The explanation for a person, one line a fact."""
        v = self.verdict
        out = []
        if v.blocked and v.scope is not None:
            reach = f", {_REACH_WORDS[v.reach.value]}" if v.reach is not None else ""
            out.append(f"blocked by {v.list} v{v.version}: {v.scope.value} entry{reach}, "
                       f"{_STAGE_WORDS[_stage(v) or '']}")
        else:
            out.append("allowed: no list has an entry that covers this URL")
        out.append(f"stage 1 (DNS) for this host: {self.stage1.value}")
        for x in self.lists:
            decided = x.decided_by
            text = (f"  {x.name} v{x.version}: stage 1 {x.host.value}; digests looked up {len(x.lookups)}, "
                    f"Bloom hits {sum(y.bloom_hit is True for y in x.lookups)}, refuted by the exact digests "
                    f"{sum(y.bloom_hit is True and not y.confirmed for y in x.lookups)}")
            if x.verdict is not None and x.verdict.scope is not None:
                text += f"; blocks: {x.verdict.scope.value} entry"
                if decided is not None:
                    text += f", digest {decided.digest:016x} ({_bloom_words(decided)})"
            out.append(text)
        return out


_REACH_WORDS = {"exact": "on that host only", "twin": "on the host and its www. twin",
                "subdomains": "on the host and every subdomain"}
_STAGE_WORDS = {"host": "decided at the host stage (the host is listed whole: stage 1 blocks it too)",
                "entry": "decided at the entry stage (stage 2: the proxy or Squid checks the URL)", "": ""}


def _stage(verdict: Verdict | None) -> str | None:
    if verdict is None or not verdict.blocked or verdict.scope is None:
        return None
    return "host" if verdict.reach is None else "entry"


def _bloom_words(lookup: Lookup) -> str:
    if lookup.bloom_hit is None:
        return "found in the exact digests (no Bloom filter)"
    return "a Bloom filter hit, confirmed by the exact digests"


class _Tracing(ListFilter):
    """A copy of a list that records every lookup (no caches shared with the original)."""

    def __init__(self, f: ListFilter) -> None:
        super().__init__(f.name, f.version, f.salt, f.entries, f.hosts, f.entry_bloom, f.host_bloom,
                         f.created, f.expires, f.checksum, f.subtree_markers)
        self.lookups: list[Lookup] = []
        self._kinds: dict[int, bytes] = {}

    def _digest(self, kind: bytes, key: str) -> int:
        value = super()._digest(kind, key)
        self._kinds[value] = kind
        return value

    def _member(self, bloom: BloomFilter | None, exact: Sequence[int], value: int) -> bool:
        hit = None if bloom is None else bloom_key(value) in bloom
        found = super()._member(bloom, exact, value)
        self.lookups.append(Lookup(self._kinds.get(value, b"?").decode("ascii"), value, hit, found))
        return found


def explain(matcher: Matcher, url: str | CanonicalURL) -> Explanation:
    """The verdict of `matcher` for `url`, and how each list, asked alone, answers it."""
    tracing = [_Tracing(f) for f in matcher.filters]
    matching = Matcher(tracing)
    verdict = matching.check(url)
    host = (url if isinstance(url, CanonicalURL) else canonicalize(url)).host
    lists = []
    for f in matcher.filters:
        alone = _Tracing(f)
        own = Matcher([alone]).check(url)
        lists.append(ListExplanation(f.name, f.version, alone.host_stage(host)[0], alone.lookups,
                                     own if own.blocked else None))
    return Explanation(verdict, matching.check_host(host).action, lists)
