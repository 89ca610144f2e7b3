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
    logging: {format: text, level: info}      # or json: one object per line (--log-format overrides)
    local: {allow: [{url, scope}], block: [{url, scope}]}   # resolver_plugin.local_policy
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
class LoggingConfig:
    format: LogFormat = LogFormat.TEXT   # the CLI's --log-format and --log-level win over these
    level: LogLevel = LogLevel.INFO


@dataclass(frozen=True)
class PluginConfig:
    path: Path
    source: str
    anchor: Root            # the pinned root (public_key_file / public_key)
    lists: tuple[str, ...]
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
    node_token_file: Path | None = None  # read by sync only (distribution.credentials), never kept here
    tls_ca_file: Path | None = None
    monitored: frozenset[str] = frozenset()  # lists in mode monitor (also in `lists`, for sync)
    local: LocalPolicyConfig = LocalPolicyConfig()

    @property
    def public_keys(self) -> dict[str, Ed25519PublicKey]:
        """The online keys of the pinned root: what signs manifests and lists until a rotation."""
        return self.anchor.online_keys


_SECTIONS = {"limits": Limits, "timeouts": Timeouts, "status": StatusThresholds,
             "proxy": ProxyConfig, "squid": SquidConfig, "resolver": ResolverConfig,
             "admin": AdminConfig, "logging": LoggingConfig}
_TOP = {"source", "public_key", "public_key_file", "lists", "cache_dir", "node_id",
        "poll_interval", "long_poll", "fail_closed", "node_token_file", "tls_ca_file", "clock_skew", "local",
        *_SECTIONS}


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
    s = cfg.status
    if s.crit_lag_seconds < s.warn_lag_seconds:
        raise ConfigError(f"{where}: status.crit_lag_seconds must be >= warn_lag_seconds")


def _validate_top(cfg: PluginConfig, where: str) -> None:
    parts = urlsplit(cfg.source)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{where}: source must be an http(s) URL, got {cfg.source!r}")
    if not cfg.lists:
        raise ConfigError(f"{where}: lists must name at least one list")
    for name in cfg.lists:
        try:
            check_list_name(name)
        except FormatError as exc:
            raise ConfigError(f"{where}: lists: {exc}") from None
    if not 0 < len(cfg.node_id) <= 128 or not cfg.node_id.isprintable() or cfg.node_id != cfg.node_id.strip():
        raise ConfigError(f"{where}: node_id must be 1-128 printable characters without surrounding spaces")
    if cfg.poll_interval < 1:
        raise ConfigError(f"{where}: poll_interval must be at least 1 second")
    if cfg.clock_skew > 3600:
        raise ConfigError(f"{where}: clock_skew must be at most 3600 seconds (fix the clock instead)")
    if not 60 <= cfg.limits.max_manifest_lifetime <= 366 * 86400:
        raise ConfigError(f"{where}: limits.max_manifest_lifetime must be 60 to 31622400 seconds")
    if cfg.tls_ca_file is not None:
        _validate_ca(cfg, parts.scheme, where)


def _validate_ca(cfg: PluginConfig, scheme: str, where: str) -> None:
    if scheme != "https":
        raise ConfigError(f"{where}: tls_ca_file needs an https source")
    try:
        ssl.create_default_context(cafile=cfg.tls_ca_file)
    except ssl.SSLError as exc:  # before OSError, its base class
        raise ConfigError(f"{where}: tls_ca_file {cfg.tls_ca_file}: not PEM certificates ({exc.reason})") from None
    except OSError as exc:
        raise ConfigError(f"{where}: tls_ca_file {cfg.tls_ca_file}: {exc.strerror or exc}") from None


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


def changed_settings(old: PluginConfig, new: PluginConfig) -> list[str]:
    """The settings `new` sets otherwise than `old`, as dotted plugin.yaml names ("proxy.listen").

    The pinned root is one setting: `public_key` changes when another root is pinned.
    """
    changed = []
    for f in dataclasses.fields(PluginConfig):
        before, after = getattr(old, f.name), getattr(new, f.name)
        if f.name == "anchor":  # the pinned root, from public_key_file or public_key
            if before != after:
                changed.append("public_key")
        elif dataclasses.is_dataclass(before):
            changed += [f"{f.name}.{g.name}" for g in dataclasses.fields(before)
                        if getattr(before, g.name) != getattr(after, g.name)]
        elif before != after:
            changed.append(f.name)
    return changed


def load_config(path: Path | str) -> PluginConfig:
    """Read and validate plugin.yaml; raise ConfigError naming the file and the key."""
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
    for key in ("source", "lists", "cache_dir"):
        if key not in raw:
            raise ConfigError(f"{where}: missing required key {key!r}")
    anchor = _anchor(raw, path)
    hints = typing.get_type_hints(PluginConfig)
    values: dict[str, Any] = {}
    for key in ("source", "node_id", "poll_interval", "long_poll", "fail_closed", "clock_skew"):
        if key in raw:
            values[key] = _coerce(where, key, hints[key], raw[key])
    values["lists"], values["monitored"] = parse_lists(where, lines, raw["lists"])
    values["local"] = parse_local(where, lines, raw.get("local"))
    cache_dir = _coerce(where, "cache_dir", str, raw["cache_dir"])
    values["cache_dir"] = (path.parent / cache_dir).resolve()
    for name, cls in _SECTIONS.items():
        values[name] = _section(where, name, cls, raw.get(name))
    for key in ("node_token_file", "tls_ca_file"):
        if key in raw:
            values[key] = (path.parent / _coerce(where, key, str, raw[key])).resolve()
    proxy = values["proxy"]
    if proxy.block_page is not None:
        values["proxy"] = dataclasses.replace(proxy, block_page=str((path.parent / proxy.block_page).resolve()))
    cfg = PluginConfig(path=path, anchor=anchor, **values)
    _validate(cfg, where)
    return cfg


def _anchor(raw: dict[str, Any], path: Path) -> Root:
    """The pinned root: the file `blocklist key export` printed, or a bare key from before root keys."""
    where = str(path)
    if ("public_key" in raw) == ("public_key_file" in raw):
        raise ConfigError(f"{where}: give exactly one of public_key and public_key_file")
    try:
        if "public_key" in raw:
            if not isinstance(raw["public_key"], str):
                raise ConfigError(f"{where}: public_key must be a string")
            return bare_key_root(load_public_key(raw["public_key"]))
        if not isinstance(raw["public_key_file"], str):
            raise ConfigError(f"{where}: public_key_file must be a path")
        key_path = path.parent / raw["public_key_file"]
        try:
            data = key_path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{where}: public_key_file {key_path}: {exc.strerror}") from None
        return read_anchor(data[:MAX_ROOT + 1])
    except FormatError as exc:
        raise ConfigError(f"{where}: {'public_key' if 'public_key' in raw else 'public_key_file'}: {exc}") from None
