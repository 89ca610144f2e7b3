"""plugin.yaml: loaded once into frozen dataclasses, every key validated, unknown keys refused.

Nothing else in the plugin reads YAML or the environment; shells get a PluginConfig.

    source: http://hotline.example:8080/      # base URL of the publish directory (required)
    public_key_file: hotline-root.json        # the root `blocklist key export` prints (or, from before
                                              # root keys, a bare key; or public_key: <base64 raw key>)
    lists: [iwf, {name: trial, mode: monitor}] # lists (required, in check order); a monitored one never blocks
    cache_dir: /var/lib/blocklist-plugin      # required
    node_id: isp1-proxy-3                     # default: the host name
    node_token_file: isp1-proxy-3.token       # `blocklist node add` output; none: polls are anonymous
    tls_ca_file: hotline-ca.pem               # CA that signed an https source's certificate (default: system's)
    poll_interval: 30                         # seconds between polls
    long_poll: 25                             # seconds to wait on `blocklist serve`; 0 = plain polling
    fail_closed: false                        # block everything while no list is loaded
    clock_skew: 0                             # seconds a manifest is still fresh past its expiry
    limits: {max_snapshot_bytes, max_delta_bytes, max_manifest_bytes, max_manifest_lifetime}
    timeouts: {connect: 5, read: 30, retry_first: 1, retry_max: 300}
    status: {warn_lag_seconds: 3600, crit_lag_seconds: 86400, warn_lag_versions: 1}
    proxy: {listen, allowed_clients, block_status, block_page, appeal_url, tls_listen,
            connect_ports, allow_private_destinations, workers, ...}
    squid: {}
    resolver: {proxy_address, proxy_address6, block_mode, block_address, block_address6, ttl}
    admin: {listen: 127.0.0.1:9150}
    selftest: {proxy: URL, squid: URL, resolver: HOST:PORT, timeout: 5}   # where `selftest` finds
                                              # each stage; proxy defaults to proxy.listen when
                                              # plugin.yaml has a proxy section, resolver to
                                              # 127.0.0.1:53 when resolver.proxy_address is set
    logging: {format: text, level: info}      # or json: one object per line (--log-format overrides)
    local: {allow: [{url, scope}], block: [{url, scope}]}   # resolver_plugin.local_policy
    safety: {enabled, traffic, max_block_ratio, min_requests}  # resolver_plugin.breaker (off without it)

Several publishers (a hotline, a police unit, court orders), each with its own keys, replace the
one-source keys (source, public_key_file / public_key, lists, node_token_file, tls_ca_file) by:

    sources:
      - {name: hotline, url: "https://lists.hotline.example/", public_key_file: hotline.pub, lists: [iwf]}
      - {name: police, url: "https://ctiru.example/blocklist/", public_key_file: police.pub,
         lists: [terror, {name: trial, mode: monitor}], node_token_file: police.token, tls_ca_file: police-ca.pem}

Each source is a `SourceConfig`: verified against its own root only, synced on its own, cached
apart (resolver_plugin.cache.Cache.source). Its lists are named "<source>/<list>" everywhere a
list is named (status, metrics, logs, block pages, `check --explain`): the same list name at two
sources stays two lists, and no source can publish, replace or roll back another's. The one-source
form is one unnamed source whose lists keep their plain names and whose cache is cache_dir itself.
A source name follows the list-name rules (a-z 0-9 - _ .); names are unique, a list appears
once per source, and `sources` never comes with the one-source keys.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import os
import socket
import ssl
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from blocklist.core.errors import ConfigError, FormatError
from blocklist.core.format.keys import load_public_key
from blocklist.core.format.root import MAX_ROOT, Root, bare_key_root, read_anchor
from blocklist.core.format.strictjson import check_list_name
from blocklist.core.logs import LogFormat, LogLevel
from resolver_plugin.breaker import SafetyConfig, parse_safety
from resolver_plugin.local_policy import Lines, LocalPolicyConfig, parse_lists, parse_local


class ForwardedFor(enum.StrEnum):
    """What the proxy does with X-Forwarded-For (Squid's forwarded_for on/truncate/transparent/delete)."""

    APPEND = "append"            # add the client's address to the chain
    TRUNCATE = "truncate"        # send the client's address alone
    TRANSPARENT = "transparent"  # pass the client's header untouched
    DELETE = "delete"            # send none: the origin sees only the proxy


class BlockMode(enum.StrEnum):
    """How stage 1 (the Unbound module) answers a host listed whole."""

    NXDOMAIN = "nxdomain"  # the name does not exist
    ADDRESS = "address"    # A/AAAA resolver.block_address(6), NODATA for other types


@dataclass(frozen=True)
class Limits:
    max_snapshot_bytes: int = 512 * 1024 * 1024
    max_delta_bytes: int = 64 * 1024 * 1024
    max_manifest_bytes: int = 4 * 1024 * 1024
    max_manifest_lifetime: int = 7 * 86400  # a manifest is stale this long after its `created`, whatever its expiry


@dataclass(frozen=True)
class Timeouts:
    connect: float = 5.0
    read: float = 30.0
    retry_first: float = 1.0    # sync's first retry after a failure (seconds, with jitter)
    retry_max: float = 300.0    # retries back off exponentially up to this


@dataclass(frozen=True)
class StatusThresholds:
    warn_lag_seconds: int = 3600       # WARNING: newest version seen is this much newer, or no sync this long
    crit_lag_seconds: int = 86400      # CRITICAL past this
    warn_lag_versions: int = 1         # WARNING when this many versions behind for warn_lag_seconds


MAX_PROXY_WORKERS = 256


@dataclass(frozen=True)
class ProxyConfig:
    listen: str = "127.0.0.1:3128"
    allowed_clients: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    block_status: int = 451
    block_page: str | None = None      # path of an HTML template; None: the built-in page
    appeal_url: str = ""
    max_header_bytes: int = 16384
    max_body_bytes: int = 1024 * 1024 * 1024
    max_connections: int = 1024
    connect_timeout: float = 10.0
    upstream_timeout: float = 60.0
    header_timeout: float = 15.0       # for a whole request head (a ClientHello on tls_listen) to arrive
    idle_timeout: float = 30.0         # a keep-alive connection's wait for its next request
    forwarded_for: ForwardedFor = ForwardedFor.APPEND
    access_log: str | None = None      # path; None: no access log
    log_blocked_urls: bool = False     # privacy: blocked requests are logged without their URL
    tls_listen: str | None = None      # host:port for HTTPS that stage 1 steers here (SNI tunnel); None: off
    tls_origin_port: int = 443         # the port the SNI tunnel connects to at the origin
    connect_ports: tuple[int, ...] = (443,)  # CONNECT to any other port: 403
    # Destinations that are not global unicast (loopback, private, link-local, the proxy's own
    # addresses, ...): refused; true lets every one through, a list of networks those.
    allow_private_destinations: bool | tuple[str, ...] = False
    # Processes that serve the listeners (SO_REUSEPORT), under one supervising parent; "auto": one
    # per core. 1: the proxy is one process, no parent.
    workers: int | str = 1


def proxy_workers(p: ProxyConfig) -> int:
    """How many proxy processes `proxy.workers` asks for ("auto": one per core this process may use)."""
    if p.workers == "auto":
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except (AttributeError, OSError):  # pragma: no cover - not Linux
            return os.cpu_count() or 1
    return int(p.workers)


@dataclass(frozen=True)
class SquidConfig:
    log_blocked_urls: bool = False


@dataclass(frozen=True)
class ResolverConfig:
    proxy_address: str | None = None    # IPv4 of the filtering proxy (stage 2)
    proxy_address6: str | None = None   # IPv6 of the filtering proxy
    block_mode: BlockMode = BlockMode.NXDOMAIN
    block_address: str | None = None    # A answer for listed-whole hosts when block_mode is address
    block_address6: str | None = None   # AAAA answer for the same
    ttl: int = 60                       # TTL of synthesized answers


@dataclass(frozen=True)
class AdminConfig:
    listen: str | None = "127.0.0.1:9150"   # None disables the admin endpoint


@dataclass(frozen=True)
class SelftestConfig:
    """Where `blocklist-plugin selftest` sends the canary (resolver_plugin.operations.selftest)."""

    proxy: str | None = None     # http://HOST:PORT of the filtering proxy; None: not tested
    squid: str | None = None     # http://HOST:PORT of Squid (its http_port); None: not tested
    resolver: str | None = None  # HOST:PORT of the Unbound that runs stage 1; None: not tested
    timeout: float = 5.0         # seconds for each request


@dataclass(frozen=True)
class LoggingConfig:
    format: LogFormat = LogFormat.TEXT   # the CLI's --log-format and --log-level win over these
    level: LogLevel = LogLevel.INFO


@dataclass(frozen=True)
class SourceConfig:
    """One publisher: where its publish directory is, the root it is verified against, its lists."""

    name: str                # "" for the one-source form (top-level `source`)
    url: str
    anchor: Root             # the pinned root (public_key_file / public_key)
    lists: tuple[str, ...]   # as the source publishes them (its manifest's names), in check order
    monitored: frozenset[str] = frozenset()
    node_token_file: Path | None = None  # read by sync only (distribution.credentials), never kept here
    tls_ca_file: Path | None = None

    def qualified(self, name: str) -> str:
        """The node's name of this source's list `name`: "police/terror", or "terror" in the one-source form."""
        return f"{self.name}/{name}" if self.name else name

    @property
    def public_keys(self) -> dict[str, Ed25519PublicKey]:
        """The online keys of the pinned root: what signs this source's manifests and lists until a rotation."""
        return self.anchor.online_keys


@dataclass(frozen=True)
class PluginConfig:
    path: Path
    sources: tuple[SourceConfig, ...]  # one unnamed source in the one-source form
    lists: tuple[str, ...]  # every source's lists by their node names (SourceConfig.qualified), in check order
    cache_dir: Path
    node_id: str = field(default_factory=socket.gethostname)
    poll_interval: float = 30.0
    long_poll: float = 25.0
    fail_closed: bool = False
    clock_skew: float = 0.0
    limits: Limits = Limits()
    timeouts: Timeouts = Timeouts()
    status: StatusThresholds = StatusThresholds()
    proxy: ProxyConfig = ProxyConfig()
    squid: SquidConfig = SquidConfig()
    resolver: ResolverConfig = ResolverConfig()
    admin: AdminConfig = AdminConfig()
    logging: LoggingConfig = LoggingConfig()
    selftest: SelftestConfig = SelftestConfig()
    monitored: frozenset[str] = frozenset()  # node names of the lists in mode monitor (also in `lists`)
    local: LocalPolicyConfig = LocalPolicyConfig()
    safety: SafetyConfig = SafetyConfig()  # the circuit breaker (resolver_plugin.breaker)

    # The one-source form's settings (with `sources:`, the first source's): code that serves
    # every source walks `sources` instead.
    @property
    def source(self) -> str:
        return self.sources[0].url

    @property
    def anchor(self) -> Root:
        return self.sources[0].anchor

    @property
    def public_keys(self) -> dict[str, Ed25519PublicKey]:
        """The online keys of the (first) source's pinned root."""
        return self.sources[0].public_keys

    @property
    def node_token_file(self) -> Path | None:
        return self.sources[0].node_token_file

    @property
    def tls_ca_file(self) -> Path | None:
        return self.sources[0].tls_ca_file

    @property
    def several_sources(self) -> bool:
        """plugin.yaml has `sources:` (list names are "<source>/<list>")."""
        return bool(self.sources[0].name)

    def source_named(self, name: str) -> SourceConfig | None:
        return next((s for s in self.sources if s.name == name), None)


_SECTIONS = {"limits": Limits, "timeouts": Timeouts, "status": StatusThresholds,
             "proxy": ProxyConfig, "squid": SquidConfig, "resolver": ResolverConfig,
             "admin": AdminConfig, "logging": LoggingConfig, "selftest": SelftestConfig}
_ONE_SOURCE = ("source", "public_key", "public_key_file", "lists", "node_token_file", "tls_ca_file")
_SOURCE_KEYS = ("name", "url", "public_key", "public_key_file", "lists", "node_token_file", "tls_ca_file")
_TOP = {*_ONE_SOURCE, "sources", "cache_dir", "node_id", "poll_interval", "long_poll", "fail_closed",
        "clock_skew", "local", "safety", *_SECTIONS}


def _coerce(where: str, key: str, hint: Any, value: Any) -> Any:
    """Check one value against its dataclass type hint."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if options == [int, str]:
            return _count_or_auto(where, key, value)
        if len(options) > 1:
            return _flag_or_strings(where, key, options, value)
        hint = options[0]
        origin = typing.get_origin(hint)
    if origin is tuple:
        return _integers(where, key, value) if typing.get_args(hint)[0] is int else _strings(where, key, value)
    if isinstance(hint, type) and issubclass(hint, enum.StrEnum):
        return _member(where, key, hint, value)
    check = _SCALARS.get(hint)
    if check is None:  # pragma: no cover - a dataclass field of a type this loader does not know
        raise ConfigError(f"{where}: {key}: unsupported setting type")
    return check(where, key, hint, value)


def _strings(where: str, key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: {key} must be a list of strings")
    return tuple(value)


def _integers(where: str, key: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ConfigError(f"{where}: {key} must be a list of integers")
    return tuple(value)


def _flag_or_strings(where: str, key: str, options: list[Any], value: Any) -> bool | tuple[str, ...]:
    """A setting that is true, false or a list (`bool | tuple[str, ...]`)."""
    if options != [bool, tuple[str, ...]]:  # pragma: no cover - a union this loader does not know
        raise ConfigError(f"{where}: {key}: unsupported setting type")
    if isinstance(value, bool):
        return value
    if isinstance(value, list | str):
        return _strings(where, key, value)
    raise ConfigError(f"{where}: {key} must be true, false or a list")


def _count_or_auto(where: str, key: str, value: Any) -> int | str:
    """A count of at least 1, or "auto" (`int | str`: proxy.workers)."""
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise ConfigError(f"{where}: {key} must be a whole number of at least 1, or auto")


def _flag(where: str, key: str, hint: type, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: {key} must be true or false")
    return value


def _number(where: str, key: str, hint: type, value: Any) -> int | float:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or (hint is int and not isinstance(value, int)):
        raise ConfigError(f"{where}: {key} must be a{'n integer' if hint is int else ' number'}")
    if value < 0:
        raise ConfigError(f"{where}: {key} must not be negative")
    return hint(value)


def _text(where: str, key: str, hint: type, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {key} must be a string")
    return value


def _member(where: str, key: str, hint: type[enum.StrEnum], value: Any) -> enum.StrEnum:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {key} must be a string")
    try:
        return hint(value)
    except ValueError:
        raise ConfigError(f"{where}: {key} must be {_choices(hint)}") from None


_SCALARS: dict[Any, Any] = {bool: _flag, int: _number, float: _number, str: _text}


def _choices(values: type[enum.StrEnum]) -> str:
    """"nxdomain or address", "one of append, truncate, transparent, delete"."""
    names = [member.value for member in values]
    return " or ".join(names) if len(names) == 2 else "one of " + ", ".join(names)


def _section(where: str, name: str, cls: type, raw: Any) -> Any:
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: {name} must be a mapping")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown key {name}.{key} (known: {', '.join(sorted(known))})")
        values[key] = _coerce(where, f"{name}.{key}", hints[key], value)
    return cls(**values)


def parse_listen(value: str, where: str = "config") -> tuple[str, int]:
    """"host:port" or "[v6]:port" -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{where}: {value!r} is not HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def _validate(cfg: PluginConfig, where: str) -> None:
    """The rules that span keys, or that a type hint cannot say; each error names the key."""
    _validate_top(cfg, where)
    _validate_timeouts(cfg.timeouts, where)
    _validate_proxy(cfg.proxy, where)
    if cfg.admin.listen is not None:
        parse_listen(cfg.admin.listen, f"{where}: admin.listen")
    _validate_resolver(cfg.resolver, where)
    _validate_selftest(cfg.selftest, where)
    s = cfg.status
    if s.crit_lag_seconds < s.warn_lag_seconds:
        raise ConfigError(f"{where}: status.crit_lag_seconds must be >= warn_lag_seconds")


def _validate_top(cfg: PluginConfig, where: str) -> None:
    if not 0 < len(cfg.node_id) <= 128 or not cfg.node_id.isprintable() or cfg.node_id != cfg.node_id.strip():
        raise ConfigError(f"{where}: node_id must be 1-128 printable characters without surrounding spaces")
    if cfg.poll_interval < 1:
        raise ConfigError(f"{where}: poll_interval must be at least 1 second")
    if cfg.clock_skew > 3600:
        raise ConfigError(f"{where}: clock_skew must be at most 3600 seconds (fix the clock instead)")
    if not 60 <= cfg.limits.max_manifest_lifetime <= 366 * 86400:
        raise ConfigError(f"{where}: limits.max_manifest_lifetime must be 60 to 31622400 seconds")


def _validate_source(source: SourceConfig, at: str, key: str, ca_at: str | None = None) -> None:
    """One source's own rules; `at` is "file:line" of its URL (`ca_at` of its tls_ca_file),
    `key` how plugin.yaml names its URL."""
    parts = urlsplit(source.url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{at}: {key} must be an http(s) URL, got {source.url!r}")
    if source.tls_ca_file is None:
        return
    ca = key.replace("url", "tls_ca_file") if source.name else "tls_ca_file"
    at = ca_at or at
    if parts.scheme != "https":
        raise ConfigError(f"{at}: {ca} needs an https source")
    try:
        ssl.create_default_context(cafile=source.tls_ca_file)
    except ssl.SSLError as exc:  # before OSError, its base class
        raise ConfigError(f"{at}: {ca} {source.tls_ca_file}: not PEM certificates ({exc.reason})") from None
    except OSError as exc:
        raise ConfigError(f"{at}: {ca} {source.tls_ca_file}: {exc.strerror or exc}") from None


def _validate_timeouts(t: Timeouts, where: str) -> None:
    if t.connect <= 0 or t.read <= 0 or t.retry_first <= 0:
        raise ConfigError(f"{where}: timeouts.connect, timeouts.read and timeouts.retry_first must be more than 0")
    if t.retry_max < t.retry_first:
        raise ConfigError(f"{where}: timeouts.retry_max must be at least timeouts.retry_first")


def _validate_proxy(p: ProxyConfig, where: str) -> None:
    if not (200 <= p.block_status <= 599):
        raise ConfigError(f"{where}: proxy.block_status must be an HTTP status code")
    for net in p.allowed_clients:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise ConfigError(f"{where}: proxy.allowed_clients: {net!r} is not a network") from None
    parse_listen(p.listen, f"{where}: proxy.listen")
    if p.tls_listen is not None:
        parse_listen(p.tls_listen, f"{where}: proxy.tls_listen")
    for key in ("connect_timeout", "upstream_timeout", "header_timeout", "idle_timeout"):
        if getattr(p, key) <= 0:
            raise ConfigError(f"{where}: proxy.{key} must be more than 0 seconds")
    if isinstance(p.workers, int) and p.workers > MAX_PROXY_WORKERS:
        raise ConfigError(f"{where}: proxy.workers must be at most {MAX_PROXY_WORKERS}")
    if not 0 < p.tls_origin_port < 65536:
        raise ConfigError(f"{where}: proxy.tls_origin_port must be a TCP port (1-65535)")
    if not all(0 < port < 65536 for port in p.connect_ports):
        raise ConfigError(f"{where}: proxy.connect_ports must be TCP ports (1-65535)")
    if not isinstance(p.allow_private_destinations, bool):
        for net in p.allow_private_destinations:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ConfigError(f"{where}: proxy.allow_private_destinations: {net!r} is not a network") from None


def _validate_resolver(r: ResolverConfig, where: str) -> None:
    for key, version in (("proxy_address", 4), ("block_address", 4), ("proxy_address6", 6), ("block_address6", 6)):
        value = getattr(r, key)
        if value is not None:
            try:
                ok = ipaddress.ip_address(value).version == version
            except ValueError:
                ok = False
            if not ok:
                raise ConfigError(f"{where}: resolver.{key} must be an IPv{version} address")
    if r.block_mode is BlockMode.ADDRESS and not (r.block_address or r.block_address6):
        raise ConfigError(f"{where}: resolver.block_mode address needs block_address or block_address6")


def _validate_selftest(t: SelftestConfig, where: str) -> None:
    for key in ("proxy", "squid"):
        value = getattr(t, key)
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/"):
                raise ConfigError(f"{where}: selftest.{key} must be http://HOST:PORT, got {value!r}")
    if t.resolver is not None:
        parse_listen(t.resolver, f"{where}: selftest.resolver")
    if not 0 < t.timeout <= 60:
        raise ConfigError(f"{where}: selftest.timeout must be more than 0 and at most 60 seconds")


def _selftest_defaults(raw: dict[str, Any], values: dict[str, Any]) -> SelftestConfig:
    """selftest's stages: as set, else the stages plugin.yaml configures (a `proxy:` section: the
    proxy on proxy.listen; resolver.proxy_address: Unbound on 127.0.0.1:53). `null` turns one off."""
    section = raw.get("selftest")
    given: dict[str, Any] = section if isinstance(section, dict) else {}
    selftest: SelftestConfig = values["selftest"]
    if "proxy" not in given and "proxy" in raw:
        selftest = dataclasses.replace(selftest, proxy=f"http://{values['proxy'].listen}")
    if "resolver" not in given and values["resolver"].proxy_address is not None:
        selftest = dataclasses.replace(selftest, resolver="127.0.0.1:53")
    return selftest


def changed_settings(old: PluginConfig, new: PluginConfig) -> list[str]:
    """The settings `new` sets otherwise than `old`, as dotted plugin.yaml names ("proxy.listen").

    The pinned root is one setting: `public_key` changes when another root is pinned. With
    `sources:`, a source's settings are named "sources.<name>.url" and so on, and a source added
    or removed "sources.<name>"; `lists` covers every source's lists.
    """
    changed: list[str] = []
    late: list[str] = []  # the one-source form's node_token_file and tls_ca_file come last, where they always were
    for f in dataclasses.fields(PluginConfig):
        before, after = getattr(old, f.name), getattr(new, f.name)
        if f.name == "sources":
            for name in _changed_sources(before, after):
                (late if name in ("node_token_file", "tls_ca_file") else changed).append(name)
        elif dataclasses.is_dataclass(before):
            changed += [f"{f.name}.{g.name}" for g in dataclasses.fields(before)
                        if getattr(before, g.name) != getattr(after, g.name)]
        elif before != after:
            changed.append(f.name)
    return changed + late


_SOURCE_SETTING = {"url": "source", "anchor": "public_key", "node_token_file": "node_token_file",
                   "tls_ca_file": "tls_ca_file"}  # lists and monitored: PluginConfig.lists names them


def _changed_sources(old: tuple[SourceConfig, ...], new: tuple[SourceConfig, ...]) -> list[str]:
    before, after = {s.name: s for s in old}, {s.name: s for s in new}
    changed = [f"sources.{name}" for name in sorted(set(before) ^ set(after))]
    for name in [n for n in before if n in after]:
        for attr, setting in _SOURCE_SETTING.items():
            if getattr(before[name], attr) != getattr(after[name], attr):
                key = "url" if attr == "url" else setting
                changed.append(f"sources.{name}.{key}" if name else setting)
    return changed


def load_config(path: Path | str) -> PluginConfig:
    """Read and validate plugin.yaml; raise ConfigError naming the file (and the line) and the key."""
    path = Path(path)
    where = str(path)
    try:
        text = path.read_text()
        raw = yaml.safe_load(text)
    except OSError as exc:
        raise ConfigError(f"{where}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of settings")
    lines = Lines(text)
    unknown = sorted(set(raw) - _TOP)
    if unknown:
        raise ConfigError(f"{where}:{lines.line(unknown[0]) or 1}: unknown key {unknown[0]!r} "
                          f"(known: {', '.join(sorted(_TOP))})")
    if "cache_dir" not in raw:
        raise ConfigError(f"{where}: missing required key 'cache_dir'")
    sources = _sources(raw, path, lines) if "sources" in raw else (_one_source(raw, path, lines),)
    hints = typing.get_type_hints(PluginConfig)
    values: dict[str, Any] = {}
    for key in ("node_id", "poll_interval", "long_poll", "fail_closed", "clock_skew"):
        if key in raw:
            values[key] = _coerce(where, key, hints[key], raw[key])
    values["lists"] = tuple(s.qualified(n) for s in sources for n in s.lists)
    values["monitored"] = frozenset(s.qualified(n) for s in sources for n in s.monitored)
    values["local"] = parse_local(where, lines, raw.get("local"))
    cache_dir = _coerce(where, "cache_dir", str, raw["cache_dir"])
    values["cache_dir"] = (path.parent / cache_dir).resolve()
    for name, cls in _SECTIONS.items():
        values[name] = _section(where, name, cls, raw.get(name))
    resolver = values["resolver"]
    safety = raw.get("safety") if raw.get("safety") is not None or "safety" not in raw else {}  # bare `safety:`: on
    values["safety"] = parse_safety(where, lines, safety,
                                    stage_one=bool(resolver.proxy_address or resolver.proxy_address6))
    values["selftest"] = _selftest_defaults(raw, values)
    proxy = values["proxy"]
    if proxy.block_page is not None:
        values["proxy"] = dataclasses.replace(proxy, block_page=str((path.parent / proxy.block_page).resolve()))
    cfg = PluginConfig(path=path, sources=sources, **values)
    _validate(cfg, where)
    return cfg


def _one_source(raw: dict[str, Any], path: Path, lines: Lines) -> SourceConfig:
    """The one-source form: `source`, `public_key_file` (or `public_key`), `lists` at the top level."""
    where = str(path)
    for key in ("source", "lists"):
        if key not in raw:
            raise ConfigError(f"{where}: missing required key {key!r} (or give `sources:`)")
    url = _coerce(where, "source", str, raw["source"])
    names, monitored = parse_lists(where, lines, raw["lists"])
    source = SourceConfig(name="", url=url, anchor=_anchor(raw, path, "", where), lists=names,
                          monitored=monitored, **_source_files(raw, path, where, ""))
    _validate_source(source, where, "source")
    return source


def _sources(raw: dict[str, Any], path: Path, lines: Lines) -> tuple[SourceConfig, ...]:
    """`sources:`: one SourceConfig per entry; errors name the file, the line and the entry."""
    where = str(path)
    mixed = [key for key in _ONE_SOURCE if key in raw]
    if mixed:
        raise ConfigError(f"{where}:{lines.key_line(mixed[0]) or 1}: {mixed[0]!r} and 'sources' cannot both be "
                          "given: with `sources:` every source has its own url, public_key_file, lists, "
                          "node_token_file and tls_ca_file (keep the top-level keys for one source only)")
    items = raw["sources"]
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{where}:{lines.line('sources') or 1}: sources must be a list of "
                          "{name, url, public_key_file, lists}")
    sources: list[SourceConfig] = []
    for i, item in enumerate(items):
        source = _source(item, i, path, lines)
        if any(s.name == source.name for s in sources):
            raise ConfigError(f"{where}:{lines.line('sources', i, 'name')}: sources[{i}]: a second source "
                              f"named {source.name!r} (source names must be unique)")
        sources.append(source)
    return tuple(sources)


def _source(item: Any, i: int, path: Path, lines: Lines) -> SourceConfig:
    where = str(path)
    at = f"{where}:{lines.line('sources', i)}"
    if not isinstance(item, dict):
        raise ConfigError(f"{at}: sources[{i}] must be a mapping {{name, url, public_key_file, lists}}")
    unknown = sorted(str(k) for k in item if k not in _SOURCE_KEYS)
    if unknown:
        raise ConfigError(f"{where}:{lines.key_line('sources', i, unknown[0])}: unknown key sources[{i}].{unknown[0]} "
                          f"(known: {', '.join(_SOURCE_KEYS)})")
    for key in ("name", "url", "lists"):
        if key not in item:
            raise ConfigError(f"{at}: sources[{i}] misses required key {key!r}")
    name = item["name"]
    try:
        check_list_name(name)
    except FormatError:
        raise ConfigError(f"{where}:{lines.line('sources', i, 'name')}: sources[{i}].name {name!r}: use "
                          "1-64 of a-z 0-9 - _ . (a source is named like a list)") from None
    label = f"sources[{name}]"
    url = _coerce(f"{where}:{lines.line('sources', i, 'url')}", f"{label}.url", str, item["url"])
    names, monitored = parse_lists(where, lines, item["lists"], ("sources", i, "lists"))
    source = SourceConfig(name=name, url=url, anchor=_anchor(item, path, label + ".", at), lists=names,
                          monitored=monitored, **_source_files(item, path, at, label + "."))
    _validate_source(source, f"{where}:{lines.line('sources', i, 'url')}", f"{label}.url",
                     f"{where}:{lines.line('sources', i, 'tls_ca_file')}")
    return source


def _source_files(raw: dict[str, Any], path: Path, where: str, prefix: str) -> dict[str, Path]:
    """node_token_file and tls_ca_file, relative to plugin.yaml's folder."""
    return {key: (path.parent / _coerce(where, prefix + key, str, raw[key])).resolve()
            for key in ("node_token_file", "tls_ca_file") if key in raw}


def _anchor(raw: dict[str, Any], path: Path, prefix: str, where: str) -> Root:
    """The pinned root: the file `blocklist key export` printed, or a bare key from before root keys."""
    if ("public_key" in raw) == ("public_key_file" in raw):
        raise ConfigError(f"{where}: give exactly one of {prefix}public_key and {prefix}public_key_file")
    try:
        if "public_key" in raw:
            if not isinstance(raw["public_key"], str):
                raise ConfigError(f"{where}: {prefix}public_key must be a string")
            return bare_key_root(load_public_key(raw["public_key"]))
        if not isinstance(raw["public_key_file"], str):
            raise ConfigError(f"{where}: {prefix}public_key_file must be a path")
        key_path = path.parent / raw["public_key_file"]
        try:
            data = key_path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{where}: {prefix}public_key_file {key_path}: {exc.strerror}") from None
        return read_anchor(data[:MAX_ROOT + 1])
    except FormatError as exc:
        key = "public_key" if "public_key" in raw else "public_key_file"
        raise ConfigError(f"{where}: {prefix}{key}: {exc}") from None
