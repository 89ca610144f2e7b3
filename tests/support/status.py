"""Node status as sync writes it, for tests of `blocklist-plugin status`, the admin endpoint and its page."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from resolver_plugin.operations.node_status import ListStatus, ManifestStatus, NodeStatus

if TYPE_CHECKING:
    from tests.conftest import Plugin

HOUR, DAY = 3600, 86400
SOURCE = "http://127.0.0.1:9/"


def node_status(now: float, errors: dict[str, int] | None = None, **fields: Any) -> NodeStatus:
    """A status as sync writes it for list "default", in sync at version 1 unless `fields` say otherwise."""
    values: dict[str, Any] = dict(version=1, entries=2, checksum="c", expires=now + 7 * DAY, newest_seen=1,
                                  newest_seen_at=now - 600, last_success=now - 30, last_attempt=now - 30)
    values.update(fields)
    return NodeStatus(node_id="test-node", source=SOURCE,
                      manifest=ManifestStatus(version=4, expires=values["expires"], signed_by="ab12",
                                              fetched_at=now - 30),
                      lists={"default": ListStatus(**values)}, errors_total=errors or {})


def publish(plugin: Plugin, *urls: str) -> None:
    plugin.hotline.run("add", *urls)
    plugin.hotline.run("publish")
