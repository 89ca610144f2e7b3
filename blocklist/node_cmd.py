"""`blocklist node add | ls | remove`: the nodes whose polls `blocklist serve` records for the fleet.

A group of its own so that cli.py stays a readable size; cli.py adds it to
`blocklist`, whose context object (home, actor, store) it uses.
"""

from __future__ import annotations

import json
import time
from typing import Any

import click

from blocklist.core.table import render
from blocklist.nodes import FleetStore, valid_node_id


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) + "Z" if ts else "never"


def remove_nodes(c: Any, node_ids: tuple[str, ...]) -> None:
    """Remove registered nodes (credential and records), all or none, audited in the hotline store."""
    c.home.require()
    fleet = FleetStore(c.home.fleet_path)
    try:
        with c.store.transaction():
            c.store.audit(c.actor, "node-remove", "", {"nodes": list(node_ids)})
            fleet.remove_nodes(node_ids)
    finally:
        fleet.close()


@click.group("node")
def node() -> None:
    """Register the ISP nodes whose polls the fleet view records.

    Only registered nodes appear in `blocklist fleet`, and only polls that prove
    the node's token are recorded; everyone else is served the public files.
    """


@node.command("add")
@click.argument("node_id")
@click.pass_obj
def node_add(c: Any, node_id: str) -> None:
    """Register NODE_ID and print its token, once, alone on stdout.

    Only a hash of the token is kept: save the output, give it to the node
    (node_token_file in its plugin.yaml, mode 0600) and keep no other copy.

    \b
    Example:
      blocklist node add isp1-proxy-3 > isp1-proxy-3.token
    """
    c.home.require()
    valid_node_id(node_id)
    fleet = FleetStore(c.home.fleet_path)
    try:
        with c.store.transaction():
            c.store.audit(c.actor, "node-add", "", {"node": node_id})
            token = fleet.add_node(node_id)
    finally:
        fleet.close()
    click.echo(token)
    click.echo(f"registered node {node_id}; its token (above, on stdout) is shown only this once: put it in "
               "the file plugin.yaml's node_token_file names, mode 0600", err=True)


@node.command("ls")
@click.option("--json", "as_json", is_flag=True, help="One JSON document, for scripts.")
@click.pass_obj
def node_ls(c: Any, as_json: bool) -> None:
    """List the registered nodes: when registered, their last verified poll.

    \b
    Example:
      blocklist node ls --json | jq -r '.[] | select(.last_report == null) | .node_id'
    """
    c.home.require()
    fleet = FleetStore(c.home.fleet_path)
    try:
        records = fleet.nodes()
    finally:
        fleet.close()
    if as_json:
        click.echo(json.dumps([{"node_id": r.node_id, "created": r.created, "last_report": r.last_seen or None,
                                "polls": r.polls, "remote": r.remote or None} for r in records], indent=1))
        return
    click.echo(render(["NODE", "CREATED", "LAST REPORT", "POLLS", "FROM"],
                      [[r.node_id, _when(r.created), _when(r.last_seen), str(r.polls), r.remote or "-"]
                       for r in records]))
    click.echo(f"{len(records)} node{'' if len(records) == 1 else 's'} registered")


@node.command("remove")
@click.argument("node_ids", nargs=-1, required=True)
@click.pass_obj
def node_remove(c: Any, node_ids: tuple[str, ...]) -> None:
    """Remove nodes: their token stops working and their records go (all or none).

    \b
    Example:
      blocklist node remove old-proxy-7
    """
    remove_nodes(c, node_ids)
    click.echo(f"removed {len(node_ids)} node{'' if len(node_ids) == 1 else 's'}: {', '.join(node_ids)}")
