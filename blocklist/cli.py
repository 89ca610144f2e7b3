"""`blocklist`: the hotline's command line. A shell: parse, call the core, print.

Exit codes: 0 success (for `check`: listed), 1 not listed / nothing done where a
script may care / refused by a guard rail, 2 usage or input error (click's
convention), 3 store or key error. The guard-rail commands (`protect`, `revert`)
live in blocklist/guard_commands.py.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from blocklist import __version__
from blocklist.context import Context, pass_ctx, plural, when
from blocklist.core.digests import Entry, Reach, Scope, lookup_digests, make_entry, make_new_entry
from blocklist.core.errors import BlocklistError, InvalidURL, StoreError
from blocklist.core.logs import LogFormat, LogLevel, setup_logging
from blocklist.core.matcher import ListFilter, Matcher
from blocklist.core.table import render
from blocklist.core.urls import canonicalize
from blocklist.guard_commands import protect, revert
from blocklist.home import HotlineConfig, default_home
from blocklist.importer import ImportFileError, parse_file
from blocklist.node_cmd import node, remove_nodes
from blocklist.preview import preview_list, render_text
from blocklist.protect import guard_entries
from blocklist.publish import publish as run_publish
from blocklist.store import Refused, Store, default_actor
from blocklist.trust_cli import expires_in_option, key, refresh_cmd, threshold_options

DEFAULT_LIST = "default"
SCOPES = click.Choice([s.value for s in Scope])


def _fail(message: str, code: int = 3) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


class BlocklistGroup(click.Group):
    """Turns our errors into one clear line and an exit code; never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ImportFileError as exc:
            for problem in exc.problems[:50]:
                click.echo(problem, err=True)
            if len(exc.problems) > 50:
                click.echo(f"... and {len(exc.problems) - 50} more", err=True)
            _fail(str(exc), 2)
        except Refused as exc:
            for line in exc.details[:50]:
                click.echo(line, err=True)
            if len(exc.details) > 50:
                click.echo(f"... and {len(exc.details) - 50} more", err=True)
            _fail(str(exc), 1)
        except InvalidURL as exc:
            _fail(str(exc), 2)
        except BlocklistError as exc:
            _fail(str(exc))
        except OSError as exc:  # a full disk, a permission: say which file, change nothing more
            _fail(f"{exc.filename or 'I/O'}: {exc.strerror or exc}")


@click.group(cls=BlocklistGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), default=default_home,
              show_default="$BLOCKLIST_HOME or ~/.local/share/blocklist", help="Hotline home directory.")
@click.option("--actor", default=default_actor, show_default="$BLOCKLIST_ACTOR or $USER",
              help="Who makes the change, for the audit log.")
@click.option("--log-format", type=click.Choice([f.value for f in LogFormat]), default=LogFormat.TEXT.value,
              show_default=True, help="`serve`'s log lines as text, or as JSON objects one a line for a SIEM "
                                      "(docs/OPERATIONS.md, Logs).")
@click.option("--log-level", type=click.Choice([v.value for v in LogLevel]), default=LogLevel.INFO.value,
              show_default=True, help="`serve` logs this level and above.")
@click.version_option(__version__)
@click.pass_context
def main(ctx: click.Context, home: Path, actor: str, log_format: str, log_level: str) -> None:
    """Maintain and publish URL blocklists (the hotline side).

    \b
    Example:
      blocklist init
      blocklist add http://bad.example/page.html --reason "report 123"
      blocklist publish
      blocklist serve --port 8080
    """
    ctx.obj = Context(home, actor, LogFormat(log_format), LogLevel(log_level))


main.add_command(protect)
main.add_command(revert)


@main.command()
@click.option("--list", "list_name", default=DEFAULT_LIST, show_default=True, help="First list to create.")
@click.option("--error-rate", type=float, default=None, help="Its Bloom false-positive rate (default 1e-6).")
@click.option("--root-dir", "root_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the root keys go, outside the home (default: <home>-root-keys beside it).")
@threshold_options
@pass_ctx
def init(c: Context, list_name: str, error_rate: float | None, root_dir: Path | None, root_keys: int,
         threshold: int) -> None:
    """Create the home: store, online key (mode 0600), config, a first list, and the root keys.

    The root keys (k of n) sign root version 1, which names the online key;
    they belong offline. On a home from before root keys, it adds them.

    \b
    Example:
      blocklist --home /srv/hotline init --list iwf --root-dir /media/usb/root-keys --root-keys 3 --threshold 2
    """
    from blocklist.keys import check_threshold, init_root

    check_threshold(root_keys, threshold)
    created = c.home.init(HotlineConfig())
    config = c.home.config()
    with c.store.transaction():
        if c.store.get_list(list_name) is None:
            c.store.create_list(list_name, error_rate or config.default_error_rate, c.actor)
        if created:
            c.store.audit(c.actor, "init", "", {"home": str(c.home.root)})
    click.echo(f"{'initialized' if created else 'already initialized'}: {c.home.root}")
    click.echo(f"lists: {', '.join(info.name for info in c.store.lists())}")
    click.echo(f"online key: {c.home.key_path}")
    if not c.home.root_version():
        root_dir = root_dir or c.home.default_root_dir()
        init_root(c.home, root_dir, root_keys, threshold, c.actor)
        click.echo(f"root keys: {root_dir} ({threshold} of {root_keys} sign a new root). They belong "
                   "OFFLINE: move them to offline media now; only `blocklist key rotate` and "
                   "`key rotate-root` need them")
    click.echo("trust anchor for plugins: `blocklist key export > hotline-root.json`")


def _force_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--force", is_flag=True, help="List it even where it blocks a protected host whole "
                        "(needs --reason; audited).")(f)


def _check_force(force: bool, reason: str) -> None:
    if force and not reason.strip():
        raise click.UsageError("--force needs --reason TEXT: say why the protection is overridden")


def _list_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--list", "list_name", default=DEFAULT_LIST, show_default=True,
                        help="The list to change or read.")(f)


def _reach_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--subdomains and --exact-host: the hosts a page or folder entry applies on."""
    f = click.option("--exact-host", is_flag=True,
                     help="Page and folder entries apply on the host as written only, not its www. twin "
                          "(for a twin that serves other content).")(f)
    return click.option("--subdomains", is_flag=True,
                        help="Page and folder entries apply on every subdomain too, as Safe Browsing's "
                             "host suffixes do. Overblocks on a shared host (one name, many sites).")(f)


def _reach(subdomains: bool, exact_host: bool) -> Reach:
    if subdomains and exact_host:
        raise click.UsageError("--subdomains and --exact-host exclude each other")
    return Reach.SUBDOMAINS if subdomains else Reach.EXACT if exact_host else Reach.TWIN


@main.command()
@click.argument("urls", nargs=-1, required=True)
@_list_option
@click.option("--scope", type=SCOPES, default="page", show_default=True,
              help="page: that page; folder: that path and below; domain: the host and subdomains.")
@_reach_options
@click.option("--reason", default="", help="Why it is listed (kept in the store, never published).")
@click.option("--ref", default="", help="External reference, e.g. a report number.")
@click.option("--create-list", is_flag=True, help="Create the list if it does not exist.")
@_force_option
@pass_ctx
def add(c: Context, urls: tuple[str, ...], list_name: str, scope: str, subdomains: bool, exact_host: bool,
        reason: str, ref: str, create_list: bool, force: bool) -> None:
    """Add URLs to a list (all of them or none).

    A page or folder entry applies on its host and the host's www. twin
    (example.org and www.example.org, either way round): a twin that serves
    other content is blocked too, unless --exact-host. --subdomains extends it
    to every name below the host, which on a shared host (many sites under one
    name) blocks the same path on every one of them.

    Refused (exit 1) when an entry would block a protected host whole
    (`blocklist protect --help`), unless --force --reason.

    \b
    Example:
      blocklist add http://bad.example/a.html http://bad.example/b.html --ref R-17
      blocklist add http://bad.example/ --scope domain --reason "whole site"
      blocklist add http://bad.example/kit/ --scope folder --subdomains
    """
    _check_force(force, reason)
    reach = _reach(subdomains, exact_host)
    entries = [make_new_entry(url, Scope(scope), reach) for url in urls]
    with c.store.transaction():
        info = c.store.get_list(list_name)
        if info is None:
            if not create_list:
                raise StoreError(f"no list named {list_name!r}; pass --create-list to create it")
            info = c.store.create_list(list_name, c.home.config().default_error_rate, c.actor)
        dupes = [e.url for e in entries if c.store.has_entry(info, e)]
        if dupes:
            raise StoreError(f"already listed in {list_name} as {scope}: {', '.join(dupes)}; nothing added")
        notes = guard_entries(c.store, info, [("", e) for e in entries], c.actor, force, reason)
        added, _ = c.store.add_entries(info, [(e, reason, ref) for e in entries], c.actor)
    for note in notes:
        click.echo(f"note: {note}", err=True)
    click.echo(f"added {added} {scope} entr{'y' if added == 1 else 'ies'} to {list_name}; "
               "run `blocklist publish` to distribute")


@main.command()
@click.argument("urls", nargs=-1, required=True)
@_list_option
@click.option("--scope", type=SCOPES, default=None, help="Only remove the entry of this scope.")
@pass_ctx
def remove(c: Context, urls: tuple[str, ...], list_name: str, scope: str | None) -> None:
    """Remove URLs from a list (all of them or none).

    Without --scope, every entry of the URL in any scope is removed, of any
    reach: removing www.example.org/a removes the twin entry example.org/a.

    \b
    Example:
      blocklist remove http://bad.example/a.html
    """
    scopes = [Scope(scope)] if scope else list(Scope)
    with c.store.transaction():
        info = c.store.require_list(list_name)
        missing, removed = [], 0
        for url in urls:
            candidates: list[Entry] = []
            for s in scopes:
                try:
                    candidates.extend({make_entry(url, s, r) for r in Reach if not (
                        s is Scope.DOMAIN and r is Reach.SUBDOMAINS)})
                except InvalidURL:
                    if scope:
                        raise
            hits = [e for e in candidates if c.store.remove_entry(info, e, c.actor)]
            removed += len(hits)
            if not hits:
                missing.append(url)
        if missing:
            raise StoreError(f"not listed in {list_name}: {', '.join(missing)}; nothing removed")
    click.echo(f"removed {removed} entr{'y' if removed == 1 else 'ies'} from {list_name}; "
               "run `blocklist publish` to distribute")


@main.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_list_option
@click.option("--scope", type=SCOPES, default="page", show_default=True,
              help="Scope of lines (or CSV rows) that do not name one.")
@_reach_options
@click.option("--reason", default="", help="Reason for rows that give none.")
@click.option("--create-list", is_flag=True, help="Create the list if it does not exist.")
@_force_option
@pass_ctx
def import_(c: Context, file: Path, list_name: str, scope: str, subdomains: bool, exact_host: bool,
            reason: str, create_list: bool, force: bool) -> None:
    """Import a file of URLs: all or nothing; every bad line is named as FILE:LINE.

    Text files hold one URL a line ("#" starts a comment). CSV files have a
    header row with `url` and optionally `scope`, `subdomains` (true/false: that
    row's page or folder entry applies on every subdomain), `reason`, `ref`.
    Entries apply on the host and its www. twin unless --exact-host; see
    `blocklist add --help` for what twins and subdomains overblock. Refused
    (exit 1, FILE:LINE of each) when an entry would block a protected host
    whole, unless --force --reason.

    \b
    Example:
      blocklist import reports.txt --list iwf
      blocklist import reports.csv --scope folder
    """
    _check_force(force, reason)
    total = sum(1 for _ in file.open("rb"))
    with click.progressbar(length=total, label=f"checking {file.name}", file=sys.stderr) as bar:
        items = parse_file(file, Scope(scope), bar.update, _reach(subdomains, exact_host))
    with c.store.transaction():
        info = c.store.get_list(list_name)
        if info is None:
            if not create_list:
                raise StoreError(f"no list named {list_name!r}; pass --create-list to create it")
            info = c.store.create_list(list_name, c.home.config().default_error_rate, c.actor)
        notes = guard_entries(c.store, info, [(f"{file}:{i.line}", i.entry) for i in items], c.actor,
                              force, reason)
        with click.progressbar(items, label=f"importing into {list_name}", file=sys.stderr) as bar:
            added, already = c.store.add_entries(
                info, ((i.entry, i.reason or reason, i.ref) for i in bar), c.actor, source=str(file))
    if notes:
        click.echo(f"note: {plural(len(notes))} below protected hosts, e.g. {notes[0]}", err=True)
    click.echo(f"imported {added} entr{'y' if added == 1 else 'ies'} into {list_name}"
               + (f" ({already} already listed)" if already else "")
               + "; run `blocklist publish` to distribute")


@main.command("ls")
@click.option("--list", "list_name", default=None, help="Only this list.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document, for scripts.")
@pass_ctx
def ls(c: Context, list_name: str | None, as_json: bool) -> None:
    """List entries (hotline-private: shows plaintext URLs).

    \b
    Example:
      blocklist ls --list iwf --json | jq '.[].url'
    """
    if list_name:
        c.store.require_list(list_name)
    rows = list(c.store.entries(list_name))
    if as_json:
        click.echo(json.dumps([r.as_json() for r in rows], indent=1))
        return
    click.echo(render(["LIST", "SCOPE", "REACH", "URL", "ADDED", "BY", "REASON", "REF"],
                      [[r.list, r.scope.value, "-" if r.scope is Scope.DOMAIN else r.reach.value, r.url,
                        when(r.added_at), r.added_by, r.reason, r.ref] for r in rows]))
    click.echo(f"{len(rows)} entr{'y' if len(rows) == 1 else 'ies'}")


@main.command()
@click.argument("url")
@click.option("--list", "list_name", default=None, help="Only this list (default: all).")
@click.option("--json", "as_json", is_flag=True, help="One JSON document, for scripts.")
@pass_ctx
def check(c: Context, url: str, list_name: str | None, as_json: bool) -> None:
    """Is URL listed now (in the store, published or not)? Exit 0 listed, 1 not.

    \b
    Example:
      blocklist check 'http://BAD.example:80/a.html#x' && echo listed
    """
    infos = [c.store.require_list(list_name)] if list_name else c.store.lists()
    filters = []
    for info in infos:
        entries, hosts = c.store.digest_sets(info)
        filters.append(ListFilter(info.name, c.store.last_published(info), info.salt, entries, hosts,
                                  subtree_markers=True))
    verdict = Matcher(filters).check(url)
    matched: list[dict[str, Any]] = []
    if verdict.blocked:
        info = next(i for i in infos if i.name == verdict.list)
        matched = [r.as_json() for r in _explain(c.store, info, url)]
    if as_json:
        click.echo(json.dumps({"url": url, "listed": verdict.blocked, "list": verdict.list,
                               "scope": verdict.scope and verdict.scope.value,
                               "reach": verdict.reach and verdict.reach.value, "entries": matched}))
    elif verdict.blocked and verdict.scope is not None:
        click.echo(f"listed in {verdict.list} ({verdict.scope.value} entry"
                   + (f", {verdict.reach.value}" if verdict.reach is not None else "")
                   + (f" {matched[0]['url']}" if matched else "") + ")")
    else:
        click.echo("not listed")
    sys.exit(0 if verdict.blocked else 1)


def _explain(store: Store, info: Any, url: str) -> list[Any]:
    """The store rows behind a match (the hotline may see its own plaintext)."""
    rows = []
    for value in lookup_digests(info.salt, canonicalize(url)):
        rows.extend(store.entries_with_digest(info, value))
    return rows


@main.command()
@click.option("--list", "list_name", default=None, help="Only changes to this list.")
@click.option("-n", "--limit", type=int, default=50, show_default=True, help="Newest N records (0: all).")
@click.option("--json", "as_json", is_flag=True, help="One JSON document, for scripts.")
@pass_ctx
def log(c: Context, list_name: str | None, limit: int, as_json: bool) -> None:
    """Show the audit log: who changed what, when.

    \b
    Example:
      blocklist log -n 20 --list iwf
    """
    rows = c.store.log(limit or None, list_name)
    if as_json:
        click.echo(json.dumps([{"id": r.id, "at": r.at, "actor": r.actor, "action": r.action,
                                "list": r.list, "detail": r.detail} for r in rows], indent=1))
        return
    click.echo(render(["#", "WHEN", "ACTOR", "ACTION", "LIST", "DETAIL"],
                      [[r.id, when(r.at), r.actor, r.action, r.list,
                        " ".join(f"{k}={v}" for k, v in sorted(r.detail.items()))] for r in rows]))


@main.command("publish")
@click.option("--list", "list_names", multiple=True, help="Only these lists (repeatable; default all).")
@click.option("--dry-run", is_flag=True, help="Show what a publish would change, per list; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="With --dry-run: one JSON document, for scripts.")
@expires_in_option
@pass_ctx
def publish_cmd(c: Context, list_names: tuple[str, ...], dry_run: bool, as_json: bool,
                expires_in: int | None) -> None:
    """Compile changed lists into snapshots and deltas and sign a new manifest.

    Prints the new version of each published list. Publishes nothing, and says
    so, when nothing changed (but re-signs the manifest with a fresh expiry once
    half of its lifetime has passed; see also `blocklist refresh`).

    --dry-run shows, per list, the entries added and removed since the last
    publish, hosts newly blocked whole, hosts stage 1 would newly steer to the
    filtering proxy and protected hosts touched (plaintext: hotline-private),
    and writes nothing.

    \b
    Example:
      blocklist publish --dry-run | less
      blocklist publish --dry-run --json | jq '.lists[].protected_touched'
      blocklist publish && rsync -a ~/.local/share/blocklist/publish/ mirror:/srv/www/
    """
    if as_json and not dry_run:
        raise click.UsageError("--json goes with --dry-run")
    if dry_run:
        with c.store.transaction():  # one consistent view; nothing is written
            infos = [c.store.require_list(n) for n in list_names] if list_names else c.store.lists()
            previews = [preview_list(c.store, info) for info in infos]
        if as_json:
            click.echo(json.dumps({"dry_run": True, "lists": [p.as_json() for p in previews]}, indent=1))
        else:
            click.echo(render_text(previews))
            click.echo("dry run: nothing written", err=True)
        return
    c.store  # noqa: B018 - opens and checks the home first
    result = run_publish(c.home, c.store, c.actor, list(list_names) or None,
                         progress=lambda msg: click.echo(msg, err=True), expires_in=expires_in)
    for name, version in sorted(result.published.items()):
        click.echo(f"{name} {version}")
    for name in result.retitled:
        click.echo(f"{name}: metadata published", err=True)
    if not result.published and not result.retitled:
        versions = ", ".join(f"{n} {v}" for n, v in sorted(result.unchanged.items())) or "no lists"
        click.echo(f"nothing changed ({versions})"
                   + ("; manifest expiry renewed" if result.renewed else ""), err=True)


main.add_command(node)
main.add_command(key)
main.add_command(refresh_cmd)


@main.command()
@click.option("--bind", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 or :: for every interface).")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True, help="TCP port.")
@click.option("--tls-cert", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Serve HTTPS with this PEM certificate (chain included); needs --tls-key.")
@click.option("--tls-key", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The PEM private key of --tls-cert.")
@pass_ctx
def serve(c: Context, bind: str, port: int, tls_cert: Path | None, tls_key: Path | None) -> None:
    """Serve the publish directory to plugins (ETag, long-poll) and record registered nodes' polls.

    Plugins long-poll /manifest.json and learn of a publish in well under a
    second. A poll is recorded for the fleet only when it proves the token of a
    node registered with `blocklist node add`. /fleet, /fleet.json and /metrics
    (loopback clients only) show which node enforces which version. nginx or a
    CDN can serve a copy of publish/ instead; plugins then poll every
    poll_interval and nothing is recorded. Stops on SIGTERM or Ctrl-C.

    \b
    Example:
      blocklist serve --bind 0.0.0.0 --port 8443 --tls-cert hotline.pem --tls-key hotline.key
      curl -s --cacert hotline.pem https://hotline.example:8443/manifest.json | head
      blocklist --log-format json serve --port 8080      # JSON log lines for a SIEM
    """
    from blocklist.serve import make_tls_context, run_serve

    c.home.require()
    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    tls = make_tls_context(tls_cert, tls_key) if tls_cert and tls_key else None
    setup_logging(c.log_format, c.log_level)
    sys.exit(run_serve(c.home.root, bind, port, tls))


@main.command()
@click.option("--dir", "workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Work directory to keep (default: a new temporary one).")
def demo(workdir: Path | None) -> None:
    """Run the whole chain on this machine with sample data (a few seconds).

    A hotline home, `blocklist serve`, a plugin syncing from it, checks, the
    filtering proxy, a live change reaching the plugin, status and fleet: real
    processes on 127.0.0.1. Exit 0 when every step gave the expected answer.

    \b
    Example:
      blocklist demo
      blocklist demo --dir /tmp/demo && ls /tmp/demo
    """
    import tempfile

    from blocklist.demo import run_demo

    sys.exit(run_demo(workdir or Path(tempfile.mkdtemp(prefix="blocklist-demo-"))))


@main.group("lists", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON document, for scripts.")
@click.option("--create", "create", default=None, metavar="NAME", help="Create a list.")
@click.option("--error-rate", type=float, default=None, help="Bloom false-positive rate for --create "
              "or, with --list, the new rate of a list (applies from its next publish).")
@click.option("--list", "list_name", default=None, help="The list whose settings to change.")
@pass_ctx
def lists_cmd(c: Context, as_json: bool, create: str | None, error_rate: float | None,
              list_name: str | None) -> None:
    """Show lists (entries, version, Bloom error rate), create one or change its rate.

    `blocklist lists set` changes what block pages say about a list.

    \b
    Example:
      blocklist lists --create iwf --error-rate 1e-6
      blocklist lists --list iwf --error-rate 1e-7
    """
    if click.get_current_context().invoked_subcommand:
        return
    if create or (list_name and error_rate):
        with c.store.transaction():
            if create:
                c.store.create_list(create, error_rate or c.home.config().default_error_rate, c.actor)
            elif list_name and error_rate:
                c.store.set_error_rate(list_name, error_rate, c.actor)
    rows = []
    for info in c.store.lists():
        counts = c.store.count(info)
        rows.append({"list": info.name, "entries": sum(counts.values()),
                     **{s.value: counts.get(s.value, 0) for s in Scope},
                     "published_version": c.store.last_published(info), "error_rate": info.error_rate,
                     "meta": c.store.list_meta(info).as_json()})
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    click.echo(render(["LIST", "ENTRIES", "PAGE", "FOLDER", "DOMAIN", "PUBLISHED", "ERROR RATE"],
                      [[r["list"], r["entries"], r["page"], r["folder"], r["domain"],
                        r["published_version"], f"{r['error_rate']:g}"] for r in rows]))


@lists_cmd.command("set")
@click.argument("list_name", metavar="LIST")
@click.option("--title", default=None, help="Who blocks, as block pages name it (plain text, at most 200).")
@click.option("--legal-basis", default=None, help="The law or order the list is enforced under (plain text).")
@click.option("--appeal-url", default=None, help="Where to appeal or read more: an http(s) URL; block pages "
              "link it and send it as Link: <URL>; rel=\"blocked-by\".")
@pass_ctx
def lists_set(c: Context, list_name: str, title: str | None, legal_basis: str | None,
              appeal_url: str | None) -> None:
    """Set what block pages show about a list; "" clears a field. Audited, signed at the next publish.

    The proxy's 451 page and Squid's deny page show the text of the list that
    blocked (escaped: plain text, never markup). Nothing in it is secret: it is
    published in the manifest.

    \b
    Example:
      blocklist lists set iwf --title "Internet Watch Foundation" \\
          --legal-basis "Protection of Children Act 1978" --appeal-url https://hotline.example/appeal
      blocklist publish
    """
    changes = {k: v for k, v in (("title", title), ("legal_basis", legal_basis), ("appeal_url", appeal_url))
               if v is not None}
    if not changes:
        raise click.UsageError("give --title, --legal-basis or --appeal-url")
    with c.store.transaction():
        meta = c.store.set_list_meta(list_name, changes, c.actor)
    click.echo(f"{list_name}: {json.dumps(meta.as_json(), ensure_ascii=False)}; run `blocklist publish` to distribute")


@main.command("fleet")
@click.option("--json", "as_json", is_flag=True, help="One JSON document, for scripts.")
@click.option("--forget", metavar="NODE", multiple=True,
              help="First remove this decommissioned node, as `blocklist node remove` (repeatable; all or none).")
@pass_ctx
def fleet_cmd(c: Context, as_json: bool, forget: tuple[str, ...]) -> None:
    """Show which version of each list every node enforces (Nagios exit codes).

    Every node registered with `blocklist node add`: the versions its last
    verified poll reported, how far behind the published ones it is (LAGGING),
    when it last polled (SILENT past fleet_silent_seconds in blocklist.yaml), or
    NEVER REPORTED. Exit 0 OK; 1 WARNING: a node is lagging, silent or never
    reported; 2 CRITICAL: nothing published, the published manifest expired, or
    every node that reported is silent; 3: the records cannot be read.

    \b
    Example:
      blocklist fleet
      blocklist fleet --json | jq -r '.nodes[] | select(.lagging) | .node_id'
      blocklist fleet --forget old-proxy-7
    """
    from blocklist.fleet import fleet_report, render_fleet

    if forget:
        remove_nodes(c, forget)
    report = fleet_report(c.home)
    click.echo(json.dumps(report.as_json(), indent=1) if as_json else render_fleet(report))
    sys.exit(int(report.state))
