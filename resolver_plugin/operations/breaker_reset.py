"""`blocklist-plugin breaker reset LIST`: the operator overrides an open circuit breaker, audited.

The record of LIST (cache_dir/breaker/LIST.json) turns from `open` to `reset`, naming who
and when; every enforcement process reloads and enforces the version that tripped again,
without judging it again (resolver_plugin.breaker). The reset is a line of
breaker/audit.jsonl and a log line (event `breaker_reset`). Exit 0 when reset, 1 when the
list's breaker is not open, 2 for a list plugin.yaml does not name.
"""

from __future__ import annotations

import getpass
import json
import os

import click

from blocklist.core.errors import BlocklistError, ConfigError
from resolver_plugin import breaker
from resolver_plugin.cache import Cache
from resolver_plugin.config import PluginConfig


def operator() -> str:
    """Who runs this: the login name, and the user sudo was run by."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid {os.getuid()}"
    sudo = os.environ.get("SUDO_USER")
    return f"{user} (sudo by {sudo})" if sudo and sudo != user else user


def run_reset(config: PluginConfig, name: str, as_json: bool) -> int:
    if name not in config.lists:
        raise ConfigError(f"{config.path}: lists names no list {name!r}")
    cache = Cache(config.cache_dir)
    state = cache.state_of(name)  # a source's list by the node's name of it: police/terror
    done = breaker.reset(cache.breaker_dir, name, state.version, operator()) if state is not None else None
    if done is None:
        trip = breaker.read_trip(cache.breaker_dir, name)
        why = (f"the circuit breaker of list {name} is not open" +
               (f" (its record about v{trip.version} is {trip.state.value})" if trip is not None else ""))
        click.echo(json.dumps({"list": name, "reset": False, "reason": why}) if as_json else why)
        return 1
    if as_json:
        click.echo(json.dumps({"list": name, "reset": True, **done.as_json()}))
    else:
        click.echo(f"list {name}: circuit breaker reset by {done.reset_by}; v{done.version} is enforced again "
                   f"(was v{done.fallback}) and will not be judged again; enforcement processes reload within "
                   "seconds")
    return 0


def reset_command(config: PluginConfig, name: str, as_json: bool) -> int:
    """The command's exit code; a cache it cannot read or write is a runtime failure (1)."""
    try:
        return run_reset(config, name, as_json)
    except OSError as exc:
        raise BlocklistError(f"{Cache(config.cache_dir).breaker_dir}: {exc.strerror}") from None
