"""The hotline's commands of keys and freshness: `key export`, `key rotate`, `key rotate-root`, `refresh`.

A shell like blocklist.cli, which adds these commands to its group: `obj` is
its Context (home, actor), errors reach its handler.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from blocklist.core.errors import ConfigError
from blocklist.refresh import parse_duration

ROOT_DIR = click.Path(file_okay=False, path_type=Path)


def duration(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """A click callback: "90s", "30m", "24h" -> seconds; a usage error otherwise."""
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None


def expires_in_option(f: Any) -> Any:
    return click.option("--expires-in", "expires_in", callback=duration, metavar="DURATION", default=None,
                        help="How long plugins take the manifest as fresh: 90s, 30m, 24h "
                             "(default: expires_hours of blocklist.yaml, 24h).")(f)


def threshold_options(f: Any) -> Any:
    f = click.option("--threshold", type=click.IntRange(1, 16), default=1, show_default=True,
                     help="How many root keys must sign a new root.")(f)
    return click.option("--root-keys", "root_keys", type=click.IntRange(1, 16), default=1, show_default=True,
                        help="How many root keys to make.")(f)


@click.group()
def key() -> None:
    """Root keys (offline) and the online signing key."""


@key.command("export")
@click.pass_obj
def key_export(c: Any) -> None:
    """Print the trust anchor for plugin.yaml's public_key_file: the newest root document.

    It names the root public keys and their threshold, and the online key
    they vouch for. Plugins walk on from it through later roots by themselves.

    \b
    Example:
      blocklist key export > hotline-root.json    # then public_key_file: hotline-root.json
    """
    c.home.require()
    _, data = c.home.current_root()
    click.echo(data.decode("ascii"), nl=False)


@key.command("rotate")
@click.option("--root-dir", "root_dir", type=ROOT_DIR, required=True,
              help="The root keys' directory (brought from offline).")
@click.pass_obj
def key_rotate(c: Any, root_dir: Path) -> None:
    """Replace the online key; a threshold of root keys vouches for the new one.

    Publishes root version N+1 naming the new key, re-issues every list
    unchanged as a new version signed by it, and deletes the old key from the
    home. Plugins walk to the new root, stop trusting the old key and forget
    any version it vouched for (after a stolen online key: rotate, and nodes
    return to the genuine lists). Without the root keys nothing changes.
    Re-run it if it was interrupted.

    \b
    Example:
      blocklist key rotate --root-dir /media/offline/blocklist-root-keys
    """
    from blocklist.keys import rotate_key

    c.home.require()
    new_id = rotate_key(c.home, root_dir, c.actor)
    click.echo(f"online key is now {new_id} (root version {c.home.root_version()}); old key deleted, "
               "lists re-issued")


@key.command("rotate-root")
@click.option("--root-dir", "old_dir", type=ROOT_DIR, required=True, help="The current root keys' directory.")
@click.option("--new-root-dir", "new_dir", type=ROOT_DIR, required=True,
              help="An empty directory for the new root keys (outside the home).")
@threshold_options
@click.pass_obj
def key_rotate_root(c: Any, old_dir: Path, new_dir: Path, root_keys: int, threshold: int) -> None:
    """Replace the root keys: the new root is signed by a threshold of the old keys and all new ones.

    \b
    Example:
      blocklist key rotate-root --root-dir /media/old --new-root-dir /media/new --root-keys 3 --threshold 2
    """
    from blocklist.keys import rotate_root

    c.home.require()
    root = rotate_root(c.home, old_dir, new_dir, root_keys, threshold, c.actor)
    click.echo(f"root version {root.version}: {len(root.root.keys)} root keys in {new_dir}, "
               f"{root.root.threshold} to sign; take them offline, then retire {old_dir}")


@click.command("refresh")
@expires_in_option
@click.pass_obj
def refresh_cmd(c: Any, expires_in: int | None) -> None:
    """Re-sign the published manifest, same version, with a fresh expiry.

    Plugins go CRITICAL once the manifest expires (a frozen mirror shows so).
    `blocklist serve` refreshes by itself; for a static mirror run this from
    cron or a systemd timer well within the lifetime, then copy publish/.

    \b
    Example:
      blocklist refresh --expires-in 24h && rsync -a ~/.local/share/blocklist/publish/ mirror:/srv/www/
    """
    from blocklist.refresh import refresh

    c.home.require()
    manifest, _ = refresh(c.home, c.actor, expires_in)
    click.echo(f"manifest version {manifest.version} re-signed, fresh for "
               f"{(manifest.expires - manifest.created) // 60} minutes")
