"""A node's local policy and monitored lists, combined with the enforced lists: pure decisions.

The ISP's own entries (plugin.yaml `local.allow`, `local.block`) are plaintext at the
node. Each set becomes an in-memory ListFilter under a fixed salt (`local_filter`), so
scopes, canonicalization, lookup expressions, subtree markers and the server's reading
of an escaped "?" are exactly the matcher's: there is no second matching code.

Precedence, for URLs and for hosts alike:
1. `allow` wins over every list and over `block`: a URL it covers, or a host it allows
   whole (domain scope), is never blocked or steered on this node;
2. the enforced lists, in their configured order;
3. `block` (shown and counted under the label LOCAL_LIST).
A monitored list never changes an answer; what it would have blocked (or, at stage 1,
steered) is reported as a `Note`. Notes name a list or a local policy and a scope, never
the URL or the entry. A page or folder `allow` on a host a list blocks whole leaves
that host blocked at stage 1 (and for tunnels, which cannot see URLs): only a domain
`allow` opens a whole host.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from blocklist.core.digests import Entry, Scope, entry_digests, subtree_markers
from blocklist.core.format.digestset import digest_array
from blocklist.core.matcher import ALLOWED, HOST_PASS, HostAction, HostVerdict, ListFilter, Matcher, Verdict
from blocklist.core.urls import CanonicalURL, canonicalize_host

__all__ = ["LOCAL_LIST", "Note", "Policy", "local_filter"]

LOCAL_LIST = "local"  # the list name a local block is shown and counted under
_SALT = b"blocklist local policy"  # in memory only: nothing salted with it leaves the process


def local_filter(name: str, entries: Iterable[Entry]) -> ListFilter:
    """An in-memory ListFilter of plaintext `entries`, with the digest sets a publish would compute."""
    found: list[int] = []
    hosts: list[int] = []
    for entry in entries:
        entry_digest, host_digest = entry_digests(_SALT, entry)
        if entry_digest is not None:
            found.append(entry_digest)
        hosts.append(host_digest)
        hosts.extend(subtree_markers(_SALT, entry.host))
    return ListFilter(name, 0, _SALT, digest_array(found), digest_array(hosts), subtree_markers=True)


@dataclass(frozen=True)
class Note:
    """Something a check did that the shell counts and logs.

    kind "allow" or "block" (a local entry decided), or "monitor" (`list` would have
    blocked; `action` PROXY when it would only have steered the host to the proxy).
    """

    kind: str
    list: str | None
    scope: Scope | None
    action: HostAction = HostAction.BLOCK


class Policy:
    """The enforced lists, the monitored ones and the local entries; answers with notes."""

    def __init__(self, lists: Matcher, monitored: Iterable[ListFilter] = (),
                 allow: Iterable[Entry] = (), block: Iterable[Entry] = (), owner: object = None) -> None:
        self.lists = lists
        self.owner = owner  # what the policy was built with (the shell's matcher of every list)
        self.monitors = tuple(Matcher([f]) for f in monitored)
        allow, block = tuple(allow), tuple(block)
        self.allow = Matcher([local_filter("local-allow", allow)]) if allow else None
        self.block = Matcher([local_filter(LOCAL_LIST, block)]) if block else None
        # What stage 1's quick path may skip: names below which no list, monitored list or
        # local block names anything (a local allow only ever passes more).
        local = self.block.filters if self.block is not None else ()
        self.quick = Matcher([*lists.filters, *(m.filters[0] for m in self.monitors), *local])
        self.allow_entries, self.block_entries = len(allow), len(block)

    def clear_suffix(self, host: str) -> str | None:
        return self.quick.clear_suffix(host)

    def check(self, url: str | CanonicalURL, notes: list[Note]) -> Verdict:
        """The verdict for `url`, appending what to count to `notes`; raises InvalidURL."""
        verdict = self.lists.check(url)
        for monitor in self.monitors:
            seen = monitor.check(url)
            if seen.blocked:
                notes.append(Note("monitor", seen.list, seen.scope))
        if self.allow is not None:
            allowed = self.allow.check(url)
            if allowed.blocked:
                if verdict.blocked or (self.block is not None and self.block.check(url).blocked):
                    notes.append(Note("allow", None, allowed.scope, HostAction.PASS))
                return ALLOWED
        if verdict.blocked or self.block is None:
            return verdict
        local = self.block.check(url)
        if local.blocked:
            notes.append(Note("block", None, local.scope))
        return local

    def check_host(self, host: str, notes: list[Note]) -> HostVerdict:
        """Stage 1's answer for `host`, appending what to count to `notes`; raises InvalidURL."""
        canonical = canonicalize_host(host)
        verdict = self.lists.check_host(canonical)
        for monitor in self.monitors:
            seen = monitor.check_host(canonical)
            if seen.action is not HostAction.PASS:
                scope = Scope.DOMAIN if seen.action is HostAction.BLOCK else None
                notes.append(Note("monitor", seen.list, scope, seen.action))
        local = self.block.check_host(canonical) if self.block is not None else HOST_PASS
        if self.allow is not None and self.allow.check_host(canonical).action is HostAction.BLOCK:
            if verdict.action is not HostAction.PASS or local.action is not HostAction.PASS:
                notes.append(Note("allow", None, Scope.DOMAIN, HostAction.PASS))
            return HOST_PASS  # allowed whole
        if verdict.action is HostAction.BLOCK or local.action is HostAction.PASS:
            return verdict
        if local.action is HostAction.BLOCK:
            notes.append(Note("block", None, Scope.DOMAIN))
            return local
        return verdict if verdict.action is HostAction.PROXY else local  # a local page/folder block
