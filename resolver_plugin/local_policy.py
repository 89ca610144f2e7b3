"""plugin.yaml's `local:` (the ISP's own allow and block entries) and the modes of `lists:`.

    lists: [iwf, {name: trial, mode: monitor}]    # a plain name: mode enforce
    local:
      allow: [{url: "http://en.wikipedia.org/", scope: domain}]   # never blocked here
      block: [{url: "http://local-order.example/", scope: domain}] # the ISP's own entries

Entries are canonicalized as the hotline does (blocklist.core.digests.make_entry), so a
URL that could not be a hotline entry of that scope cannot be a local one either. An
error names the file, the line (from PyYAML's node marks) and what is wrong; one bad
entry refuses the whole file, so nothing starts with half a policy.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import yaml

from blocklist.core.digests import Entry, Scope, make_entry
from blocklist.core.errors import ConfigError, FormatError, InvalidURL
from blocklist.core.format.strictjson import check_list_name


class ListMode(enum.StrEnum):
    ENFORCE = "enforce"  # blocks
    MONITOR = "monitor"  # never blocks; what it would have blocked is counted and logged


@dataclass(frozen=True)
class LocalPolicyConfig:
    allow: tuple[Entry, ...] = ()
    block: tuple[Entry, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.allow or self.block)


_ENTRY_KEYS = ("url", "scope")
_LIST_KEYS = ("name", "mode")


class Lines:
    """Line numbers of plugin.yaml's values, by their path of keys and indexes."""

    def __init__(self, text: str) -> None:
        try:
            self.root: yaml.Node | None = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError:
            self.root = None  # safe_load reports it

    def line(self, *path: str | int) -> int | None:
        """The 1-based line of the value at `path` (the nearest ancestor's when it is not there)."""
        node = self.root
        found = node.start_mark.line + 1 if node is not None else None
        for step in path:
            child = None
            if isinstance(node, yaml.MappingNode):
                child = next((v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == step), None)
            elif isinstance(node, yaml.SequenceNode) and isinstance(step, int) and step < len(node.value):
                child = node.value[step]
            if child is None:
                break
            node, found = child, child.start_mark.line + 1
        return found


    def key_line(self, *path: str | int) -> int | None:
        """The 1-based line of the key that ends `path` (a mapping's key), else as `line`."""
        parent = self.root
        for step in path[:-1]:
            child = None
            if isinstance(parent, yaml.MappingNode):
                child = next((v for k, v in parent.value if isinstance(k, yaml.ScalarNode) and k.value == step), None)
            elif isinstance(parent, yaml.SequenceNode) and isinstance(step, int) and step < len(parent.value):
                child = parent.value[step]
            parent = child
        if isinstance(parent, yaml.MappingNode):
            for k, _ in parent.value:
                if isinstance(k, yaml.ScalarNode) and k.value == path[-1]:
                    return k.start_mark.line + 1
        return self.line(*path)


def _at(where: str, lines: Lines, *path: str | int) -> str:
    line = lines.line(*path)
    return f"{where}:{line}" if line is not None else where


def parse_lists(where: str, lines: Lines, raw: Any,
                path: tuple[str | int, ...] = ("lists",)) -> tuple[tuple[str, ...], frozenset[str]]:
    """(every list name in order, the monitored ones) from `lists:` (or a source's, at `path`)."""
    key = _dotted(path)
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{_at(where, lines, *path)}: {key} must be a list of names or {{name, mode}}, "
                          "at least one")
    names: list[str] = []
    monitored = set()
    for i, item in enumerate(raw):
        at = _at(where, lines, *path, i)
        name: Any
        mode: Any
        if isinstance(item, str):
            name, mode = item, ListMode.ENFORCE.value
        elif isinstance(item, dict):
            unknown = sorted(str(k) for k in item if k not in _LIST_KEYS)
            if unknown:
                raise ConfigError(f"{at}: unknown key {key}[{i}].{unknown[0]} (known: {', '.join(_LIST_KEYS)})")
            name, mode = item.get("name"), item.get("mode", ListMode.ENFORCE.value)
        else:
            raise ConfigError(f"{at}: {key}[{i}] must be a list name or {{name, mode}}")
        try:
            name = check_list_name(name)
        except FormatError as exc:
            raise ConfigError(f"{at}: {key}[{i}]: {exc}") from None
        try:
            mode = ListMode(mode)
        except ValueError:
            raise ConfigError(f"{at}: {key}[{i}].mode must be enforce or monitor") from None
        if name in names:
            raise ConfigError(f"{at}: {key} names the list {name!r} twice")
        names.append(name)
        if mode is ListMode.MONITOR:
            monitored.add(name)
    return tuple(names), frozenset(monitored)


def _dotted(path: tuple[str | int, ...]) -> str:
    """("sources", 1, "lists") -> "sources[1].lists"."""
    return "".join(f"[{step}]" if isinstance(step, int) else f".{step}" for step in path).lstrip(".")


def parse_local(where: str, lines: Lines, raw: Any) -> LocalPolicyConfig:
    """`local:` as canonical entries; ConfigError at the first bad one."""
    if raw is None:
        return LocalPolicyConfig()
    if not isinstance(raw, dict):
        raise ConfigError(f"{_at(where, lines, 'local')}: local must be a mapping with allow and block")
    unknown = sorted(str(k) for k in raw if k not in ("allow", "block"))
    if unknown:
        raise ConfigError(f"{_at(where, lines, 'local', unknown[0])}: unknown key local.{unknown[0]} "
                          "(known: allow, block)")
    return LocalPolicyConfig(**{key: _entries(where, lines, key, raw.get(key)) for key in ("allow", "block")})


def _entries(where: str, lines: Lines, key: str, raw: Any) -> tuple[Entry, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(f"{_at(where, lines, 'local', key)}: local.{key} must be a list of {{url, scope}}")
    entries = []
    for i, item in enumerate(raw):
        name = f"local.{key}[{i}]"
        at = _at(where, lines, "local", key, i)
        if not isinstance(item, dict):
            raise ConfigError(f"{at}: {name} must be a mapping {{url, scope}}")
        unknown = sorted(str(k) for k in item if k not in _ENTRY_KEYS)
        if unknown:
            raise ConfigError(f"{_at(where, lines, 'local', key, i, unknown[0])}: unknown key {name}.{unknown[0]} "
                              f"(known: {', '.join(_ENTRY_KEYS)})")
        url, scope = item.get("url"), item.get("scope", Scope.PAGE.value)
        if not isinstance(url, str):
            raise ConfigError(f"{at}: {name}.url must be a URL")
        try:
            scope = Scope(scope)
        except ValueError:
            raise ConfigError(f"{_at(where, lines, 'local', key, i, 'scope')}: {name}.scope must be "
                              "page, folder or domain") from None
        try:
            entries.append(make_entry(url, scope))
        except InvalidURL as exc:
            raise ConfigError(f"{_at(where, lines, 'local', key, i, 'url')}: {name}.url: {exc}") from None
    return tuple(entries)
