"""plugin.yaml settings: every bad value is an error naming the file and the key; good ones take effect."""

from __future__ import annotations

import asyncio
import logging
import re

import pytest

from blocklist.core.errors import ConfigError
from resolver_plugin.distribution.sync import sync_loop
from resolver_plugin.enforcement.proxy.forward import upstream_headers
from resolver_plugin.enforcement.proxy.head import RequestHead
from tests.conftest import Plugin


def test_proxy_defaults(plugin: Plugin) -> None:
    proxy = plugin.config().proxy
    assert (proxy.tls_listen, proxy.tls_origin_port) == (None, 443)
    assert (proxy.header_timeout, proxy.idle_timeout, proxy.forwarded_for) == (15.0, 30.0, "append")
    assert (proxy.connect_ports, proxy.allow_private_destinations) == ((443,), False)


@pytest.mark.parametrize("value, expected", [
    (True, True), (False, False), (["127.0.0.0/8", "10.0.0.0/8"], ("127.0.0.0/8", "10.0.0.0/8")),
    ("fe80::/10", ("fe80::/10",)), ([], ()),
])
def test_allow_private_destinations_is_a_flag_or_networks(plugin: Plugin, value: object, expected: object) -> None:
    plugin.write_config(proxy={"allow_private_destinations": value, "connect_ports": [443, 8443]})
    proxy = plugin.config().proxy
    assert proxy.allow_private_destinations == expected
    assert proxy.connect_ports == (443, 8443)


@pytest.mark.parametrize("settings, message", [
    ({"tls_listen": "nowhere"}, "proxy.tls_listen"),
    ({"tls_listen": "127.0.0.1:99999"}, "proxy.tls_listen"),
    ({"tls_origin_port": 0}, "proxy.tls_origin_port"),
    ({"tls_origin_port": "443"}, "proxy.tls_origin_port must be an integer"),
    ({"header_timeout": 0}, "proxy.header_timeout must be more than 0"),
    ({"idle_timeout": -1}, "proxy.idle_timeout must not be negative"),
    ({"connect_timeout": 0}, "proxy.connect_timeout must be more than 0"),
    ({"forwarded_for": "on"}, "proxy.forwarded_for must be one of append, truncate, transparent, delete"),
    ({"forwarded_for": True}, "proxy.forwarded_for must be a string"),  # YAML reads a bare on as true
    ({"tls": "yes"}, "unknown key proxy.tls"),
    ({"connect_ports": [443, 0]}, "proxy.connect_ports must be TCP ports"),
    ({"connect_ports": [443, 70000]}, "proxy.connect_ports must be TCP ports"),
    ({"connect_ports": ["443"]}, "proxy.connect_ports must be a list of integers"),
    ({"connect_ports": [True]}, "proxy.connect_ports must be a list of integers"),
    ({"allow_private_destinations": ["10.0.0.0/8", "intranet"]},
     "proxy.allow_private_destinations: 'intranet' is not a network"),
    ({"allow_private_destinations": "yes please"}, "proxy.allow_private_destinations: 'yes please' is not a network"),
    ({"allow_private_destinations": 1}, "proxy.allow_private_destinations must be true, false or a list"),
    ({"allow_private_destinations": [10]}, "proxy.allow_private_destinations must be a list of strings"),
])
def test_bad_proxy_settings_name_the_file_and_key(plugin: Plugin, settings: dict, message: str) -> None:
    plugin.write_config(proxy=settings)
    with pytest.raises(ConfigError, match=message) as caught:
        plugin.config()
    assert str(caught.value).startswith(str(plugin.config_path))


@pytest.mark.parametrize("settings, message", [
    ({"retry_first": 0}, "timeouts.retry_first must be more than 0"),
    ({"retry_first": 10, "retry_max": 5}, "timeouts.retry_max must be at least timeouts.retry_first"),
    ({"connect": 0}, "timeouts.connect"),
    ({"retry": 3}, "unknown key timeouts.retry"),
])
def test_bad_timeouts_name_the_file_and_key(plugin: Plugin, settings: dict, message: str) -> None:
    plugin.write_config(timeouts=settings)
    with pytest.raises(ConfigError, match=message):
        plugin.config()


def test_sync_retries_follow_the_configured_back_off(plugin: Plugin, caplog: pytest.LogCaptureFixture) -> None:
    """The daemon against a source that is down: its retries start at retry_first and stop growing at retry_max."""
    plugin.write_config(source="http://127.0.0.1:9/", timeouts={"connect": 0.2, "retry_first": 0.04,
                                                               "retry_max": 0.16})

    async def run(seconds: float) -> None:
        stop = asyncio.Event()
        task = asyncio.ensure_future(sync_loop(plugin.config(), stop))
        await asyncio.sleep(seconds)
        stop.set()
        await asyncio.wait_for(task, 5)

    caplog.set_level(logging.INFO, logger="blocklist.plugin.sync")
    asyncio.run(run(1.5))
    delays = [float(m[1]) for m in (re.search(r"sync retry in=([\d.]+)s", text) for text in caplog.messages) if m]
    assert len(delays) >= 4, caplog.messages
    assert 0.02 <= delays[0] <= 0.04  # in [d/2, d] of retry_first
    assert all(0.08 <= d <= 0.16 for d in delays[3:]), delays  # capped at retry_max


def _head(*headers: tuple[str, str]) -> RequestHead:
    return RequestHead("GET", "http://origin.example/", "HTTP/1.1", list(headers), None, False)


@pytest.mark.parametrize("mode, expected", [
    ("append", ["192.0.2.7, 10.0.0.1, 127.0.0.9"]),
    ("truncate", ["127.0.0.9"]),
    ("transparent", ["192.0.2.7", "10.0.0.1"]),
    ("delete", []),
])
def test_forwarded_for_modes(mode: str, expected: list[str]) -> None:
    head = _head(("X-Forwarded-For", "192.0.2.7"), ("x-forwarded-for", "10.0.0.1"), ("Accept", "*/*"))
    headers = upstream_headers(head, "127.0.0.9", mode)
    assert headers.getall("X-Forwarded-For", []) == expected
    assert headers["Via"] == "1.1 blocklist" and headers["Accept"] == "*/*"


def test_modes_load_as_enum_members(plugin: Plugin) -> None:
    from resolver_plugin.config import BlockMode, ForwardedFor

    assert plugin.config().proxy.forwarded_for is ForwardedFor.APPEND
    assert plugin.config().resolver.block_mode is BlockMode.NXDOMAIN
    plugin.write_config(proxy={"forwarded_for": "delete"},
                        resolver={"block_mode": "address", "block_address": "192.0.2.1"})
    config = plugin.config()
    assert config.proxy.forwarded_for is ForwardedFor.DELETE and config.resolver.block_mode is BlockMode.ADDRESS


@pytest.mark.parametrize("settings, message", [
    ({"block_mode": "NXDOMAIN"}, "resolver.block_mode must be nxdomain or address"),
    ({"block_mode": "refuse"}, "resolver.block_mode must be nxdomain or address"),
    ({"block_mode": 1}, "resolver.block_mode must be a string"),
    ({"block_mode": "address"}, "resolver.block_mode address needs block_address or block_address6"),
])
def test_bad_resolver_settings_name_the_file_and_key(plugin: Plugin, settings: dict, message: str) -> None:
    plugin.write_config(resolver=settings)
    with pytest.raises(ConfigError, match=message) as caught:
        plugin.config()
    assert str(caught.value).startswith(str(plugin.config_path))


# ----------------------------------------------------------------------------- node_token_file, tls_ca_file

def _token_file(plugin: Plugin, text: str, mode: int = 0o600) -> str:
    plugin.dir.mkdir(parents=True, exist_ok=True)
    path = plugin.dir / "node.token"
    path.write_text(text)
    path.chmod(mode)
    return "node.token"


@pytest.mark.parametrize("text, mode, message", [
    ("", 0o600, "empty; put the output of `blocklist node add test-node` in it"),
    ("  \n", 0o600, "empty"),
    ("hunter2\n", 0o600, "not a node token as `blocklist node add` prints it"),
    ("blnode1." + "A" * 43, 0o644, "mode 644 lets every local user use this node's token; chmod 600"),
    ("blnode1." + "A" * 43, 0o602, "mode 602"),
    (None, 0o600, "No such file or directory"),
])
def test_a_bad_node_token_file_stops_sync_naming_file_and_key(plugin: Plugin, text: str | None, mode: int,
                                                              message: str) -> None:
    from tests.support.plugin import plugin_cli

    name = _token_file(plugin, text, mode) if text is not None else "missing.token"
    plugin.write_config(node_token_file=name)
    plugin.config()  # enforcement never reads the token: its config loads
    result = plugin_cli(plugin, "sync", "--once")
    assert result.exit_code == 2 and message in result.stderr, result.output
    assert f"{plugin.config_path}: node_token_file {plugin.dir / name}" in result.stderr
    assert "blnode1." not in result.output
    assert plugin_cli(plugin, "check", "http://bad.example/").exit_code == 1  # still answers


def test_a_good_node_token_file_is_read_by_sync_only(plugin: Plugin) -> None:
    from blocklist.core.protocol import new_token
    from resolver_plugin.distribution.credentials import load_node_token

    token = new_token()
    plugin.write_config(node_token_file=_token_file(plugin, f"\n{token}\n", 0o640))
    config = plugin.config()
    assert config.node_token_file == plugin.dir / "node.token" and token not in repr(config)
    assert load_node_token(config) == token
    plugin.write_config(node_token_file=None)
    assert plugin.config().node_token_file is None and load_node_token(plugin.config()) is None


@pytest.mark.parametrize("settings, message", [
    ({"tls_ca_file": "ca.pem"}, "tls_ca_file needs an https source"),
    ({"source": "https://127.0.0.1:9/", "tls_ca_file": "none.pem"}, "tls_ca_file"),
    ({"source": "https://127.0.0.1:9/", "tls_ca_file": "hotline.pub"}, "not PEM certificates"),
    ({"source": "https://127.0.0.1:9/", "tls_ca_file": 5}, "tls_ca_file must be a string"),
    ({"node_token_file": ["x"]}, "node_token_file must be a string"),
])
def test_bad_credential_settings_name_the_file_and_key(plugin: Plugin, settings: dict, message: str) -> None:
    plugin.write_config(**settings)
    with pytest.raises(ConfigError, match=message) as caught:
        plugin.config()
    assert str(caught.value).startswith(str(plugin.config_path))
