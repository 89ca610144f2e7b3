"""Registered nodes for tests: a node added to a hotline's fleet store and its token file, as an operator makes them."""

from __future__ import annotations

import time
from pathlib import Path

from blocklist.core.protocol import HAVE, NODE, PROOF, make_proof, report_key
from blocklist.home import Home
from blocklist.nodes import FleetStore


def enroll(home: Path, node_id: str, folder: Path) -> Path:
    """Register `node_id` with the hotline at `home` (once) and write its token to folder/<node_id>.token, 0600."""
    path = folder / f"{node_id}.token"
    if not path.exists():
        store = FleetStore(Home(home).fleet_path)
        try:
            token = store.add_node(node_id)
        finally:
            store.close()
        folder.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(token + "\n")
    return path


def poll_headers(token: str, node: str, have: str, millis: int | None = None) -> dict[str, str]:
    """The headers of one manifest poll by `node` holding `token`, proven as sync proves them."""
    millis = int(time.time() * 1000) if millis is None else millis
    return {NODE: node, HAVE: have, PROOF: make_proof(report_key(token), node, have, millis).header()}
