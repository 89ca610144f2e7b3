"""`blocklist-plugin`: the ISP side's command line. A shell: load config, call the module, exit.

Each command imports its module lazily, so `squid-helper` starts without aiohttp.
Exit codes: `check` 0 blocked / 1 allowed; `status`, `selftest` Nagios 0/1/2/3; others 0 ok,
2 usage or config error, 1 runtime failure.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from blocklist.core import __version__
from blocklist.core.errors import BlocklistError, ConfigError, InvalidURL
from blocklist.core.logs import LogFormat, LogLevel
from resolver_plugin.config import PluginConfig, load_config

if TYPE_CHECKING:
    from resolver_plugin.cache import LiveMatcher


class PluginGroup(click.Group):
    """Our errors become one clear line and an exit code; never a traceback."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(3 if ctx.invoked_subcommand in ("status", "selftest") else 2)
        except InvalidURL as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except BlocklistError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)


def setup_logging(verbose: bool, log_format: str | None = None, log_level: str | None = None) -> None:
    """Log lines on stderr: text (time level logger: key=value message) or JSON, one object per line.

    The flags win over plugin.yaml's `logging` section, which `_config` applies once loaded.
    """
    from resolver_plugin.operations import logsetup
    level = LogLevel(log_level) if log_level else (LogLevel.DEBUG if verbose else None)
    logsetup.set_overrides(LogFormat(log_format) if log_format else None, level)


@click.group(cls=PluginGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              default="/etc/blocklist/plugin.yaml", show_default=True, help="plugin.yaml")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging (--log-level debug).")
@click.option("--log-format", type=click.Choice([f.value for f in LogFormat]), default=None,
              help="Log lines as text, or as JSON objects one a line for a SIEM (docs/OPERATIONS.md, Logs). "
                   "Overrides plugin.yaml's logging.format  [default: text]")
@click.option("--log-level", type=click.Choice([v.value for v in LogLevel]), default=None,
              help="Log this level and above. Overrides plugin.yaml's logging.level and -v  [default: info]")
@click.version_option(__version__)
@click.pass_context
def main(ctx: click.Context, config_path: Path, verbose: bool, log_format: str | None,
         log_level: str | None) -> None:
    """Sync and enforce URL blocklists at an ISP (the plugin side).

    \b
    Example:
      blocklist-plugin -c plugin.yaml sync --once
      blocklist-plugin -c plugin.yaml check http://bad.example/page.html
      blocklist-plugin -c plugin.yaml status
      blocklist-plugin -c plugin.yaml --log-format json sync
    """
    setup_logging(verbose, log_format, log_level)
    ctx.obj = config_path


def _config(ctx: click.Context) -> PluginConfig:
    from resolver_plugin.operations import logsetup
    config = load_config(ctx.obj)
    logsetup.apply(config)  # plugin.yaml's logging section, under the flags
    return config


@main.command()
@click.option("--once", is_flag=True, help="Sync once and exit (0 in sync, 1 on error).")
@click.pass_context
def sync(ctx: click.Context, once: bool) -> None:
    """Fetch, verify and cache the newest lists; keep doing so (long-poll or poll).

    SIGHUP (systemctl reload) re-reads plugin.yaml; a bad file is logged and the running
    configuration kept.

    \b
    Example:
      blocklist-plugin -c plugin.yaml sync            # the daemon
      blocklist-plugin -c plugin.yaml sync --once     # cron or first install
    """
    from resolver_plugin.distribution.credentials import load_node_token
    from resolver_plugin.distribution.sync import run_sync
    config = _config(ctx)
    for source in config.sources:
        load_node_token(config, source)  # a bad node_token_file stops sync here, before it takes the cache lock
    sys.exit(run_sync(config, once=once))


@main.command()
@click.argument("url")
@click.option("--json", "as_json", is_flag=True, help="One JSON document, for scripts.")
@click.option("--explain", is_flag=True, help="Say which list, version, scope and stage decided, and how "
              "(digests, Bloom hits confirmed by the exact digests): for a support desk. Never an entry's text.")
@click.pass_context
def check(ctx: click.Context, url: str, as_json: bool, explain: bool) -> None:
    """Would URL be blocked by the cached lists? Exit 0 blocked, 1 allowed.

    \b
    Example:
      blocklist-plugin -c plugin.yaml check http://bad.example/page.html
      blocklist-plugin -c plugin.yaml check --explain 'http://www.bad.example/page.html?x=1'
    """
    import json

    from resolver_plugin.cache import LiveMatcher
    live = LiveMatcher(_config(ctx))
    if explain:
        sys.exit(_explain(live, url, as_json))
    verdict = live.check(url)
    if as_json:
        click.echo(json.dumps({"blocked": verdict.blocked, "list": verdict.list, "version": verdict.version,
                               "enforced": live.matcher.versions(), "missing": live.missing}))
    elif verdict.blocked:
        click.echo(f"blocked by {verdict.list}" + (f" v{verdict.version}" if verdict.version else ""))
    else:
        click.echo("allowed" + (f" (no cached version of {', '.join(live.missing)})" if live.missing else ""))
    sys.exit(0 if verdict.blocked else 1)


def _explain(live: LiveMatcher, url: str, as_json: bool) -> int:
    """`check --explain`: the verdict and how each list reached it; the exit code of `check`."""
    import json

    from blocklist.core.explain import explain
    if live.fail_closed_active:
        verdict = live.check(url)
        doc = {"blocked": True, "list": verdict.list, "stage": "fail-closed", "missing": live.missing, "lists": []}
        missing = ", ".join(live.missing)
        click.echo(json.dumps(doc) if as_json else
                   f"blocked: no list is loaded and fail_closed is set (no cached version of {missing})")
        return 0
    found = explain(live.current(), url)
    if as_json:
        click.echo(json.dumps({**found.as_json(), "enforced": live.matcher.versions(), "missing": live.missing}))
    else:
        for line in found.lines():
            click.echo(line)
        if live.missing:
            click.echo(f"not enforced yet (no cached version): {', '.join(live.missing)}")
    return 0 if found.verdict.blocked else 1


@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON document, for scripts.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Show what this node enforces and how its sync is doing (Nagios exit codes).

    0 OK, 1 WARNING (lagging), 2 CRITICAL (expired or no list), 3 UNKNOWN.

    \b
    Example:
      blocklist-plugin -c plugin.yaml status --json
    """
    from resolver_plugin.operations.status import run_status
    sys.exit(run_status(ctx.obj, as_json=as_json))


@main.command()
@click.option("--proxy", "proxy_url", metavar="URL", help="The filtering proxy, http://HOST:PORT.")
@click.option("--squid", "squid_url", metavar="URL", help="Squid with the helper, http://HOST:PORT.")
@click.option("--resolver", metavar="ADDR", help="The Unbound running stage 1, HOST:PORT.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document, for scripts.")
@click.pass_context
def selftest(ctx: click.Context, proxy_url: str | None, squid_url: str | None, resolver: str | None,
             as_json: bool) -> None:
    """Prove from the outside that this node blocks: each list's canary and a control through each stage.

    Without --proxy/--squid/--resolver, the stages plugin.yaml's selftest section names (by
    default the proxy on proxy.listen when plugin.yaml has a proxy section, and Unbound on
    127.0.0.1:53 when resolver.proxy_address is set). Nagios exit codes: 0 every stage blocks
    every canary and passes the control, 2 one does not or cannot be reached, 3 unknown
    (e.g. no list cached, a list published before canaries). The result is kept for
    `status` and the admin endpoint (/selftest).

    \b
    Example:
      blocklist-plugin -c plugin.yaml selftest
      blocklist-plugin -c plugin.yaml selftest --squid http://127.0.0.1:3128 --json
    """
    from resolver_plugin.config import parse_listen
    from resolver_plugin.operations.selftest import run, stages_to_test
    config = _config(ctx)
    for name, value in (("--proxy", proxy_url), ("--squid", squid_url)):
        if value is not None and not value.startswith("http://"):
            raise ConfigError(f"{name}: {value!r} is not http://HOST:PORT")  # exit 3: UNKNOWN
    if resolver is not None:
        parse_listen(resolver, "--resolver")
    sys.exit(run(config, stages_to_test(config, proxy_url, squid_url, resolver), as_json=as_json))


@main.command()
@click.pass_context
def proxy(ctx: click.Context) -> None:
    """Run the filtering HTTP proxy (Cleanfeed stage 2) on proxy.listen.

    SIGHUP (systemctl reload) re-reads plugin.yaml and reopens the access log; the lists
    stay in force, a bad file is logged and the running configuration kept.

    \b
    Example:
      blocklist-plugin -c plugin.yaml proxy
      curl -x http://127.0.0.1:3128 http://bad.example/page.html   # -> 451
    """
    from resolver_plugin.enforcement.proxy.server import run_proxy
    sys.exit(run_proxy(_config(ctx)))


@main.command("squid-helper")
@click.pass_context
def squid_helper(ctx: click.Context) -> None:
    """Answer Squid's external_acl_type lines on stdin (OK = listed, ERR = not).

    \b
    Example (squid.conf):
      external_acl_type blocklist ttl=60 negative_ttl=60 children-max=4 concurrency=100 %URI \\
          /usr/local/bin/blocklist-plugin -c /etc/blocklist/plugin.yaml squid-helper
    """
    from resolver_plugin.enforcement.squid_helper import run_helper
    sys.exit(run_helper(_config(ctx), sys.stdin.buffer, sys.stdout.buffer))


@main.group()
def breaker() -> None:
    """The circuit breaker (plugin.yaml `safety:`): a new list version that blocks an implausible
    share of requests gives way to the previous one; `status` shows it (CRITICAL).

    \b
    Example:
      blocklist-plugin -c plugin.yaml status                # names the list and the version that tripped
      blocklist-plugin -c plugin.yaml breaker reset iwf     # enforce that version anyway
    """


@breaker.command("reset")
@click.argument("list_name", metavar="LIST")
@click.option("--json", "as_json", is_flag=True, help="One JSON document, for scripts.")
@click.pass_context
def breaker_reset(ctx: click.Context, list_name: str, as_json: bool) -> None:
    """Enforce the version of LIST that tripped the breaker, and stop judging it.

    Audited: who and when go into cache_dir/breaker/audit.jsonl and a log line (event
    breaker_reset). A newer version of the list is judged again. Exit 0 when reset, 1 when
    the breaker of LIST is not open, 2 when plugin.yaml names no such list.

    \b
    Example:
      sudo -u blocklist blocklist-plugin -c /etc/blocklist/plugin.yaml breaker reset iwf
    """
    from resolver_plugin.operations.breaker_reset import reset_command
    sys.exit(reset_command(_config(ctx), list_name, as_json))
