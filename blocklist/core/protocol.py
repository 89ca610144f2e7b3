"""The poll headers: what a plugin tells `blocklist serve` on every manifest request, and back.

    X-Blocklist-Node: <node id>          printable, at most MAX_NODE_ID characters
    X-Blocklist-Have: iwf=3,other=5      the versions the node enforces, at most
                                         MAX_LISTS_REPORTED items; malformed items are dropped
    X-Blocklist-Wait: <seconds>          request: how long the server may hold a poll whose
                                         ETag still matches (long-poll); answer: the wait applied,
                                         so a plugin knows the source long-polls

Both sides parse and format them here and nowhere else.
"""

from __future__ import annotations

__all__ = ["HAVE", "MAX_LISTS_REPORTED", "MAX_NODE_ID", "NODE", "WAIT", "clean_node_id", "format_have",
           "parse_have"]

NODE = "X-Blocklist-Node"
HAVE = "X-Blocklist-Have"
WAIT = "X-Blocklist-Wait"
MAX_NODE_ID = 128
MAX_LISTS_REPORTED = 64


def parse_have(header: str) -> dict[str, int]:
    """"iwf=3,other=5" -> {"iwf": 3, "other": 5}; malformed items are dropped."""
    versions: dict[str, int] = {}
    for item in header.split(",")[:MAX_LISTS_REPORTED]:
        name, sep, version = item.strip().partition("=")
        if sep and version.isdigit() and 0 < len(name) <= 64 and len(version) <= 12:
            versions[name] = int(version)
    return versions


def format_have(versions: dict[str, int]) -> str:
    return ",".join(f"{name}={version}" for name, version in sorted(versions.items()))


def clean_node_id(node_id: str) -> str | None:
    node_id = node_id.strip()
    if not node_id or len(node_id) > MAX_NODE_ID or not node_id.isprintable():
        return None
    return node_id
