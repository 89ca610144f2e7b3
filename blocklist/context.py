"""What every `blocklist` command gets: the home, the actor for the audit log, the log settings, the store
opened on first use."""

from __future__ import annotations

import time
from pathlib import Path

import click

from blocklist.core.logs import LogFormat, LogLevel
from blocklist.home import Home
from blocklist.store import Store


class Context:
    def __init__(self, home: Path, actor: str, log_format: LogFormat = LogFormat.TEXT,
                 log_level: LogLevel = LogLevel.INFO) -> None:
        self.home = Home(home)
        self.actor = actor
        self.log_format, self.log_level = log_format, log_level  # for the commands that log (`serve`)
        self._store: Store | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            self.home.require()
            self._store = Store(self.home.store_path)
            # Closed when the command ends, not when collected: the write-ahead log is folded
            # into store.sqlite at once, and a test running commands in-process sees the files
            # as a separate process would leave them.
            ctx = click.get_current_context(silent=True)
            if ctx is not None:
                ctx.find_root().call_on_close(self._store.close)
        return self._store


pass_ctx = click.make_pass_decorator(Context)


def when(ts: int) -> str:
    """A time in the tables of `ls`, `log` and `protect ls`."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) + "Z"


def plural(n: int, one: str = "entry", many: str = "entries") -> str:
    return f"{n} {one if n == 1 else many}"
