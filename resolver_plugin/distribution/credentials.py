"""What sync needs to talk to the hotline that the rest of the plugin must never need: the node token, the CA.

The node token (plugin.yaml's node_token_file, the output of `blocklist node
add`) proves this node's fleet reports. Only `sync` reads it, when it starts:
the enforcement processes (Squid's helper, Unbound, the proxy) run as other
users and never need it, so a token file they cannot read never stops
enforcement. `load_node_token` refuses a file every local user can read.
"""

from __future__ import annotations

import os
import ssl
import stat

from blocklist.core.errors import ConfigError
from blocklist.core.protocol import check_token
from resolver_plugin.config import PluginConfig

MAX_TOKEN_FILE = 4096


def load_node_token(config: PluginConfig) -> str | None:
    """The node's token, None when plugin.yaml names none; ConfigError naming file and key otherwise.

    The file must be readable, hold one token as `blocklist node add` prints it
    (white space around it is ignored), and not be readable or writable by
    every local user (mode 0600, or 0640 with a group).
    """
    path = config.node_token_file
    if path is None:
        return None
    where = f"{config.path}: node_token_file {path}"
    try:
        with open(path, "rb") as f:
            mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
            data = f.read(MAX_TOKEN_FILE + 1)
    except OSError as exc:
        raise ConfigError(f"{where}: {exc.strerror}") from None
    if mode & 0o007:
        raise ConfigError(f"{where}: mode {mode:03o} lets every local user use this node's token; "
                          "chmod 600 it (or 640 with a group)")
    try:
        token = data.decode("ascii").strip()
    except UnicodeDecodeError:
        token = ""
    if not token:
        raise ConfigError(f"{where}: empty; put the output of `blocklist node add {config.node_id}` in it")
    if len(data) > MAX_TOKEN_FILE or not check_token(token):
        raise ConfigError(f"{where}: not a node token as `blocklist node add` prints it")
    return token


def client_tls(config: PluginConfig) -> ssl.SSLContext | bool:
    """The TLS settings of the client session: tls_ca_file's CA when given, else the system's (True)."""
    if config.tls_ca_file is None:
        return True
    try:
        return ssl.create_default_context(cafile=config.tls_ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{config.path}: tls_ca_file {config.tls_ca_file}: {exc}") from None
