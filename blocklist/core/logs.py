"""Log lines for people (text) or for a SIEM (JSON, one object per line), with one schema for every program.

Text is `time LEVEL logger: message`, the format every program always wrote. JSON
carries the same message as `msg` beside stable fields:

    {"ts": "2024-05-01T12:00:00.123Z", "level": "info", "logger": "blocklist.plugin.sync",
     "event": "sync_updated", "msg": "updated list=iwf ...", "list": "iwf", "version": 42, ...}

A call site names its event and its facts with
`log.info("...", extra={"event": "sync_updated", "list": name, "version": v})`. Only the
fields of FIELDS reach a JSON line, so an extra nobody documented never becomes part of
what a SIEM parses; a field whose value is None is left out. A record without an event
(a library's, or a rare message) gets `<component>_<level>`, the logger's name without
its `blocklist.`/`blocklist.plugin.` prefix, dots as underscores ("metrics_warning").

Formatting happens only for the records a handler emits: a call below the level costs
what it always did.
"""

from __future__ import annotations

import enum
import json
import logging
import re
import sys
import time
from typing import IO, Any


class LogFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"


class LogLevel(enum.StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def number(self) -> int:
        return {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
                "error": logging.ERROR}[self.value]


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# The JSON schema: field -> the JSON types its value may have. docs/OPERATIONS.md ("Logs")
# describes each one; tests check every line against this table.
FIELDS: dict[str, tuple[type, ...]] = {
    # on every line
    "ts": (str,), "level": (str,), "logger": (str,), "event": (str,), "msg": (str,),
    # where known
    "list": (str,), "version": (int,), "node": (str,), "kind": (str,), "duration_ms": (int, float),
    "source": (str,), "source_name": (str,), "have": (int,), "via": (str,), "bytes": (int,), "file": (str,),
    "reason": (str,),
    "signed_by": (str,), "attempt": (int,), "delay_ms": (int, float), "lists": (list,),
    "missing": (list,), "versions": (dict,), "config": (str,), "changed": (list,), "listen": (str,), "counts": (dict,),
    "outcome": (str,), "client": (str,), "method": (str,), "target": (str,), "status": (int,),
    "url": (str,), "exc": (str,), "fallback": (int,), "who": (str,),
}
REQUIRED = ("ts", "level", "logger", "event", "msg")
_OPTIONAL = tuple(name for name in FIELDS if name not in REQUIRED)
_PREFIXES = ("blocklist.plugin.", "blocklist.")
_NOT_SNAKE = re.compile(r"[^a-z0-9]+")


def default_event(logger: str, level: str) -> str:
    """The event of a record that names none: "blocklist.plugin.metrics", WARNING -> "metrics_warning"."""
    component = next((logger[len(p):] for p in _PREFIXES if logger.startswith(p)), logger)
    return f"{_NOT_SNAKE.sub('_', component.lower()).strip('_') or 'root'}_{level.lower()}"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (json.dumps escapes every newline)."""

    def format(self, record: logging.LogRecord) -> str:
        fields = record.__dict__
        level = record.levelname.lower()
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": level,
            "logger": record.name,
            "event": fields.get("event") or default_event(record.name, level),
            "msg": record.getMessage(),
        }
        for name in _OPTIONAL:
            value = fields.get(name)
            if value is not None:
                line[name] = list(value) if isinstance(value, tuple | set | frozenset) else value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def formatter(fmt: LogFormat, text: str = TEXT_FORMAT) -> logging.Formatter:
    """The formatter of `fmt`; `text` is the line of the text format (the proxy's access log has its own)."""
    return JsonFormatter() if fmt is LogFormat.JSON else logging.Formatter(text)


class _OurHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler setup_logging installs: the one a later call replaces."""


def setup_logging(fmt: LogFormat, level: LogLevel, stream: IO[str] | None = None) -> None:
    """Root logger: `fmt` lines of `level` and above on `stream` (stderr).

    A second call replaces what the first installed. When something else already
    handles the root logger (a test harness, a program embedding ours) it is left
    alone, as logging.basicConfig would.
    """
    root = logging.getLogger()
    ours = [h for h in root.handlers if isinstance(h, _OurHandler)]
    if root.handlers and not ours:
        return
    for old in ours:
        root.removeHandler(old)
    handler = _OurHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter(fmt))
    root.addHandler(handler)
    root.setLevel(level.number)
