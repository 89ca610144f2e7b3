"""Where the plugin's log lines go and in which format: plugin.yaml's `logging` section, under the CLI.

`blocklist-plugin --log-format/--log-level` (and `-v`, which is `--log-level debug`) win
over plugin.yaml; they are remembered here so that a SIGHUP that re-reads plugin.yaml
(resolver_plugin.operations.reload) applies a new `logging` section without undoing them.
The proxy's access log takes its formatter from here too.
"""

from __future__ import annotations

import logging

from blocklist.core.logs import LogFormat, LogLevel, formatter, setup_logging
from resolver_plugin.config import PluginConfig

_override_format: LogFormat | None = None
_override_level: LogLevel | None = None
_format = LogFormat.TEXT


def set_overrides(fmt: LogFormat | None, level: LogLevel | None) -> None:
    """The CLI's choices (None: plugin.yaml decides); logs from now on in their format."""
    global _override_format, _override_level
    _override_format, _override_level = fmt, level
    apply(None)


def apply(config: PluginConfig | None) -> None:
    """Log as the CLI and `config`'s logging section say (no config yet: the defaults)."""
    global _format
    settings = config.logging if config is not None else None
    _format = _override_format or (settings.format if settings else LogFormat.TEXT)
    setup_logging(_format, _override_level or (settings.level if settings else LogLevel.INFO))


def current_format() -> LogFormat:
    return _format


def access_formatter() -> logging.Formatter:
    """The proxy's access log: its own text line (time first), or the same JSON as every other line."""
    return formatter(_format, "%(message)s")
