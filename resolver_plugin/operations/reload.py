"""Re-reading plugin.yaml on SIGHUP (`systemctl reload`): the new settings, or the running ones kept.

The sync daemon and the proxy call `sighup_event` once their event loop runs,
and `reread` each time it is set. `reread` loads plugin.yaml with the same
validation as at start, plus the shell's own `check` (the proxy renders its
block page). It returns the new configuration only when it loaded and every
changed setting can change in a running process; otherwise it logs why and
returns None, and the shell keeps the configuration it runs with.

A reload never interrupts enforcement: what a node enforces lives in the
cache, which a reload does not touch, and a shell swaps its settings between
two requests. Settings bound to what the process holds open (the cache
directory, whose writer lock `sync` keeps; the proxy's listening sockets)
are in the shell's `restart_only` and need a restart.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Collection

from blocklist.core.errors import BlocklistError
from resolver_plugin.config import PluginConfig, changed_settings, load_config
from resolver_plugin.operations import logsetup

log = logging.getLogger("blocklist.plugin.reload")


def sighup_event() -> asyncio.Event:
    """An event the running loop sets on every SIGHUP (which otherwise ends the process)."""
    event = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, event.set)
    return event


def reread(current: PluginConfig, restart_only: Collection[str],
           check: Callable[[PluginConfig], object] | None = None) -> PluginConfig | None:
    """plugin.yaml as it is now, if it loads and changes only what may change; else None (logged)."""
    try:
        new = load_config(current.path)
        if check is not None:
            check(new)
    except BlocklistError as exc:
        # One line: a YAML parser's message spans several.
        log.error("reload refused: %s; keeping the running configuration", " ".join(str(exc).split()),
                  extra={"event": "reload_refused", "config": str(current.path)})
        return None
    changed = changed_settings(current, new)
    frozen = [name for name in changed if name in restart_only]
    if frozen:
        log.error("reload refused: %s: %s cannot change without a restart; keeping the running "
                  "configuration", current.path, ", ".join(frozen),
                  extra={"event": "reload_refused", "config": str(current.path), "changed": frozen})
        return None
    if not changed:
        log.info("reload: %s unchanged", current.path,
                 extra={"event": "reload_unchanged", "config": str(current.path)})
        return None
    logsetup.apply(new)  # a new logging section takes effect from this line on
    log.info("reload: %s applied, changed: %s", current.path, ", ".join(changed),
             extra={"event": "reload_applied", "config": str(current.path), "changed": changed})
    return new
