"""`blocklist revert`: give a list back the entries of a published version, and publish them at once.

Everything happens in publish's one transaction: the list's entries become exactly
those the version held (blocklist.history), with their original reason, reference
and author, under one "revert" audit record; then the list is published as a new
version. A failure anywhere leaves the store and the manifest as they were. Entries
that come back face the protected hosts as `blocklist add` does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from blocklist.history import (
    HistoryRow,
    current_entries,
    entries_at,
    is_recorded,
    published_versions,
    recorded_versions,
)
from blocklist.home import Home
from blocklist.preview import ListPreview, preview_list
from blocklist.protect import guard_entries
from blocklist.publish import publish
from blocklist.store import ListInfo, Refused, Store

AUDITED_URLS = 100  # URLs the revert's audit record names of each kind; the history has them all


@dataclass(frozen=True)
class RevertPlan:
    name: str                  # the list
    to_version: int
    target: list[HistoryRow]   # the entries of to_version
    restore: list[HistoryRow]  # in to_version, not in the list now
    drop: list[HistoryRow]     # in the list now, not in to_version


@dataclass
class RevertResult:
    plan: RevertPlan
    version: int = 0         # the version that publishes the reverted entries
    published: bool = False  # False: the last published version already held them
    notes: list[str] = field(default_factory=list)


def plan_revert(store: Store, info: ListInfo, version: int) -> RevertPlan:
    """What reverting the list to `version` changes; Refused if it cannot or would change nothing."""
    published = published_versions(store, info)
    if version not in published:
        known = f"published: {_ranges(published)}" if published else "nothing published yet"
        raise Refused(f"{info.name} never published version {version} ({known})")
    if not is_recorded(store, info, version):
        recorded = recorded_versions(store, info)
        raise Refused(f"no record of the entries of {info.name} version {version}: it was published before "
                      "blocklist kept one" + (f" (versions with a record: {_ranges(recorded)})" if recorded else ""))
    target = entries_at(store, info, version)
    current = current_entries(store, info)
    target_keys = {(r.entry.scope, r.entry.reach, r.entry.key) for r in target}
    current_keys = {(r.entry.scope, r.entry.reach, r.entry.key) for r in current}
    restore = [r for r in target if (r.entry.scope, r.entry.reach, r.entry.key) not in current_keys]
    drop = [r for r in current if (r.entry.scope, r.entry.reach, r.entry.key) not in target_keys]
    if not restore and not drop:
        raise Refused(f"nothing to revert: {info.name} already holds the entries of version {version}")
    return RevertPlan(info.name, version, target, restore, drop)


def revert(home: Home, store: Store, actor: str, list_name: str, version: int, force: bool = False,
           reason: str = "", progress: Callable[[str], None] = lambda msg: None) -> RevertResult:
    """Revert the list to `version` and publish it, in one transaction."""
    results: list[RevertResult] = []

    def prepare() -> None:
        info = store.require_list(list_name)
        plan = plan_revert(store, info, version)
        result = RevertResult(plan)
        result.notes = guard_entries(store, info, [("", r.entry) for r in plan.restore], actor, force, reason)
        for row in plan.drop:
            store.remove_entry(info, row.entry, actor, audit=False)
        store.restore_entries(info, ((r.entry, r.added_by, r.added_at, r.reason, r.ref) for r in plan.restore))
        store.audit(actor, "revert", info.name, {
            "to_version": version, "from_version": store.last_published(info), "reason": reason,
            "restored": len(plan.restore), "removed": len(plan.drop),
            "restored_urls": [r.entry.url for r in plan.restore[:AUDITED_URLS]],
            "removed_urls": [r.entry.url for r in plan.drop[:AUDITED_URLS]]})
        results.append(result)

    published = publish(home, store, actor, [list_name], progress=progress, prepare=prepare)
    result = results[0]
    result.published = list_name in published.published
    result.version = published.published.get(list_name) or published.unchanged.get(list_name, 0)
    return result


def dry_run(store: Store, list_name: str, version: int) -> tuple[RevertPlan, ListPreview]:
    """The revert's plan and what its publish would change; writes nothing."""
    with store.transaction():
        info = store.require_list(list_name)
        plan = plan_revert(store, info, version)
        return plan, preview_list(store, info, plan.target)


def _ranges(versions: list[int]) -> str:
    """"1-3, 5, 7-9" for [1, 2, 3, 5, 7, 8, 9]."""
    spans: list[list[int]] = []
    for v in versions:
        if spans and v == spans[-1][1] + 1:
            spans[-1][1] = v
        else:
            spans.append([v, v])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)
