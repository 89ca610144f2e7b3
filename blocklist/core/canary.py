"""The canary: a reserved test URL compiled into every published list, so a node can prove it blocks.

Both sides compute it from the list name alone (docs/FORMAT.md, "The canary"):

    zone     blocklist-canary.invalid
    canary   http://l<h>.blocklist-canary.invalid/canary     a page entry of twin reach,
             h = the first 16 hex digits of SHA-256("blocklist-canary" || 0x00 || list name)
    control  http://control.blocklist-canary.invalid/control  in no list, ever

`.invalid` is reserved by RFC 6761 (section 6.4): no real site can have such a name, so
the canary blocks nothing anyone could visit, and a request for it that leaks past the
filter fails to resolve. The label is a hash so that every list name (any of a-z A-Z 0-9
- _ .) gives one valid DNS label and two lists never share a canary host.

The hotline adds the canary's digests to each snapshot it compiles (blocklist.publish),
under the list's salt like an entry; the store never holds it, so `blocklist ls`, the
entry counts, the dry run, the history and revert never show it. The plugin sends the
canary and the control through its stages (`blocklist-plugin selftest`): a stage that
blocks the canary and passes the control enforces the list. A page entry makes its host
one that stage 1 (the Unbound module) sends to the proxy, and stage 2 (the proxy, the
Squid helper) blocks the full URL: one entry exercises every stage.

Hits on the canary are counted apart from real blocks (`CanaryVerdict`), so block counts
and ratios are not skewed by the selftest.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from blocklist.core.digests import Entry, Reach, Scope, entry_digests, make_entry, subtree_markers
from blocklist.core.format.digestset import contains, digest_array, merge_sorted
from blocklist.core.listable import CANARY_ZONE
from blocklist.core.matcher import HostVerdict, Verdict

__all__ = ["CANARY_PATH", "CANARY_ZONE", "CONTROL_HOST", "CONTROL_URL", "CanaryHostVerdict", "CanaryVerdict",
           "canary_digests", "canary_entry", "canary_host", "canary_url", "has_canary", "is_canary_host",
           "is_canary_url", "with_canary", "ZONE_LINE"]

CANARY_PATH = "/canary"
# Unbound answers .invalid itself (a default local-zone, static) before any module runs: this
# line in unbound.conf lets the canary zone through to the plugin's module (docs/OPERATIONS.md).
ZONE_LINE = f'local-zone: "{CANARY_ZONE}." transparent'
CONTROL_HOST = f"control.{CANARY_ZONE}"
CONTROL_URL = f"http://{CONTROL_HOST}/control"
_LABEL_CONTEXT = b"blocklist-canary\x00"


def canary_host(list_name: str) -> str:
    """The host of list `list_name`'s canary: one label made from the name, under CANARY_ZONE."""
    label = hashlib.sha256(_LABEL_CONTEXT + list_name.encode("utf-8")).hexdigest()[:16]
    return f"l{label}.{CANARY_ZONE}"


def canary_url(list_name: str) -> str:
    """The canary URL of a list, as a client requests it (already canonical)."""
    return f"http://{canary_host(list_name)}{CANARY_PATH}"


def canary_entry(list_name: str) -> Entry:
    """The canary as the page entry the hotline compiles (never stored)."""
    return make_entry(canary_url(list_name), Scope.PAGE, Reach.TWIN)


def canary_digests(list_name: str, salt: bytes) -> tuple[array[int], array[int]]:
    """(entry digests, host-level digests) the canary adds to a list: sorted, unique."""
    entry = canary_entry(list_name)
    page, host = entry_digests(salt, entry)
    assert page is not None  # a page entry always has its own digest
    return digest_array([page]), digest_array([host, *subtree_markers(salt, entry.host)])


def with_canary(list_name: str, salt: bytes, entries: array[int], hosts: array[int]) -> tuple[array[int], array[int]]:
    """A list's digest sets (sorted, unique) with its canary added: what a snapshot holds."""
    canary_entries, canary_hosts = canary_digests(list_name, salt)
    return merge_sorted(entries, canary_entries, ()), merge_sorted(hosts, canary_hosts, ())


def has_canary(list_name: str, salt: bytes, entries: Sequence[int], hosts: Sequence[int]) -> bool:
    """Whether a list's digest sets carry its canary (a snapshot published before canaries does not)."""
    canary_entries, canary_hosts = canary_digests(list_name, salt)
    return (all(contains(entries, v) for v in canary_entries)
            and all(contains(hosts, v) for v in canary_hosts))


def is_canary_host(host: str) -> bool:
    """Whether a canonical host lies in the canary zone (a canary or the control)."""
    return host == CANARY_ZONE or host.endswith("." + CANARY_ZONE)


def is_canary_url(url: str) -> bool:
    """A cheap test, for counting: does `url` name a host in the canary zone? (No canonicalization:
    an escaped form of the canary is counted as a real block, which errs on the safe side.)"""
    url = url.lower()
    if CANARY_ZONE not in url:
        return False
    rest = url.split("://", 1)[-1]
    host = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0].rsplit("@", 1)[-1].split(":", 1)[0]
    return is_canary_host(host.rstrip("."))


@dataclass(frozen=True)
class CanaryVerdict(Verdict):
    """A block of the canary: counted and logged as a canary hit, never as a real block."""

    canary: ClassVar[bool] = True


@dataclass(frozen=True)
class CanaryHostVerdict(HostVerdict):
    """Stage 1's answer for a canary host; counted apart like CanaryVerdict."""

    canary: ClassVar[bool] = True
