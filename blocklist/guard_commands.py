"""`blocklist protect ...` and `blocklist revert`: the command line of the guard rails against a bad publish."""

from __future__ import annotations

import json
from pathlib import Path

import click

from blocklist import protect as protection
from blocklist.context import Context, pass_ctx, plural, when
from blocklist.core.table import render
from blocklist.preview import render_text
from blocklist.revert import dry_run as revert_dry_run
from blocklist.revert import revert as run_revert
from blocklist.store import Refused


def _reason(value: str, required: bool) -> str:
    if required and not value.strip():
        raise click.BadParameter("say why", param_hint="'--reason'")
    return value.strip()


@click.group()
def protect() -> None:
    """Protected hosts: no entry may block one, or a name below it, whole.

    `add`, `import` and `revert` refuse a domain entry on a protected host, on a
    parent of it or on a name below it, and a folder entry at "/" of it or of a
    name below it, unless forced with --force --reason (audited). Pages and
    folders below "/" are accepted; `publish --dry-run` flags them, because
    stage 1 then steers that whole host through the filtering proxy.

    \b
    Example:
      blocklist protect add wikipedia.org bbc.co.uk --reason "top sites"
      blocklist protect import top-sites.csv
      blocklist protect ls
    """


@protect.command("add")
@click.argument("hosts", nargs=-1, required=True)
@click.option("--reason", required=True, help="Why they are protected (kept in the store and the audit log).")
@pass_ctx
def protect_add(c: Context, hosts: tuple[str, ...], reason: str) -> None:
    """Protect hosts and every name below them (all of them or none).

    \b
    Example:
      blocklist protect add wikipedia.org www.bbc.co.uk --reason "top sites"
    """
    reason = _reason(reason, required=True)
    canonical = [protection.canonical_host(h) for h in hosts]
    with c.store.transaction():
        added, already = protection.add(c.store, canonical, reason, c.actor)
        if already:
            raise Refused(f"already protected: {', '.join(already)}; nothing added")
        warnings = protection.blocked_already(c.store, added)
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"protected {plural(len(added), 'host', 'hosts')}: {', '.join(added)}")


@protect.command("remove")
@click.argument("hosts", nargs=-1, required=True)
@click.option("--reason", default="", help="Why the protection goes (kept in the audit log).")
@pass_ctx
def protect_remove(c: Context, hosts: tuple[str, ...], reason: str) -> None:
    """Stop protecting hosts (all of them or none).

    \b
    Example:
      blocklist protect remove old-partner.example --reason "contract ended"
    """
    canonical = [protection.canonical_host(h) for h in hosts]
    with c.store.transaction():
        removed = protection.remove(c.store, canonical, c.actor, _reason(reason, required=False))
    click.echo(f"unprotected {plural(removed, 'host', 'hosts')}")


@protect.command("ls")
@click.option("--json", "as_json", is_flag=True, help="One JSON document, for scripts.")
@pass_ctx
def protect_ls(c: Context, as_json: bool) -> None:
    """List the protected hosts, with why, when and by whom.

    \b
    Example:
      blocklist protect ls --json | jq -r '.[].host'
    """
    rows = protection.protections(c.store)
    if as_json:
        click.echo(json.dumps([r.as_json() for r in rows], indent=1))
        return
    click.echo(render(["HOST", "REASON", "ADDED", "BY"], [[r.host, r.reason, when(r.added_at), r.added_by]
                                                           for r in rows]))
    click.echo(plural(len(rows), "protected host", "protected hosts"))


@protect.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--reason", default="", help="Why they are protected (default: the file's name).")
@pass_ctx
def protect_import(c: Context, file: Path, reason: str) -> None:
    """Protect every host of a file: all or nothing; every bad line is named as FILE:LINE.

    One host a line; "#" starts a comment; a line "RANK,HOST", as in top-sites
    lists, gives HOST. Hosts already protected are counted, not refused.

    \b
    Example:
      blocklist protect import top-sites.csv --reason "top 10,000 sites"
    """
    hosts = protection.parse_file(file)
    with c.store.transaction():
        added, already = protection.add(c.store, hosts, _reason(reason, required=False) or f"imported from {file.name}",
                                        c.actor, source=str(file))
        warnings = protection.blocked_already(c.store, added)
    for warning in warnings[:50]:
        click.echo(f"warning: {warning}", err=True)
    if len(warnings) > 50:
        click.echo(f"warning: ... and {len(warnings) - 50} more", err=True)
    click.echo(f"protected {plural(len(added), 'host', 'hosts')} from {file}"
               + (f" ({len(already)} already protected)" if already else ""))


@click.command()
@click.argument("list_name", metavar="LIST")
@click.option("--to", "version", type=click.IntRange(min=1), required=True,
              help="The published version whose entries LIST gets back.")
@click.option("--dry-run", is_flag=True, help="Show what the revert and its publish would change; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document, for scripts.")
@click.option("--force", is_flag=True, help="Restore entries that block a protected host whole (needs --reason).")
@click.option("--reason", default="", help="Why (kept in the audit record; required with --force).")
@pass_ctx
def revert(c: Context, list_name: str, version: int, dry_run: bool, as_json: bool, force: bool, reason: str) -> None:
    """Give LIST back the entries of a published VERSION and publish them at once.

    One transaction: the entries become exactly those VERSION held (with their
    reason, reference and author), one audit record says so, and the list is
    published as a new version, which is printed as "LIST VERSION". Refused
    (exit 1): a version never published, one published before blocklist kept a
    record of each version's entries, a revert that would change nothing, and
    entries that would block a protected host whole (unless --force --reason).

    \b
    Example:
      blocklist revert iwf --to 41 --dry-run
      blocklist revert iwf --to 41 --reason "the import in 42 was the wrong file"
    """
    reason = _reason(reason, required=force)
    if dry_run:
        plan, preview = revert_dry_run(c.store, list_name, version)
        if as_json:
            click.echo(json.dumps({"dry_run": True, "list": list_name, "to_version": version,
                                   "restore": [r.entry.url for r in plan.restore],
                                   "remove": [r.entry.url for r in plan.drop],
                                   "publish": preview.as_json()}, indent=1))
        else:
            click.echo(f"revert {list_name} to version {version}: the store would get back "
                       f"{plural(len(plan.restore))} and lose {plural(len(plan.drop))}")
            click.echo(render_text([preview]))
            click.echo("dry run: nothing written", err=True)
        return
    c.store  # noqa: B018 - opens and checks the home first
    result = run_revert(c.home, c.store, c.actor, list_name, version, force, reason,
                        progress=lambda msg: click.echo(msg, err=True))
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    plan = result.plan
    if as_json:
        click.echo(json.dumps({"list": list_name, "to_version": version, "version": result.version,
                               "published": result.published, "restored": len(plan.restore),
                               "removed": len(plan.drop)}))
    else:
        click.echo(f"{list_name} {result.version}")
    click.echo(f"reverted {list_name} to the entries of version {version} ({len(plan.restore)} restored, "
               f"{len(plan.drop)} removed); " + (f"published as version {result.version}" if result.published else
                                                 f"version {result.version} already publishes them"), err=True)
