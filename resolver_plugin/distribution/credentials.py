"""What sync needs to talk to the hotline that the rest of the plugin must never need: the node token, the CA.

`Reporter` adds the poll headers that name this node and prove its token
(blocklist.core.protocol) and logs what `blocklist serve` did with the report.

The node token (plugin.yaml's node_token_file, the output of `blocklist node
add`) proves this node's fleet reports. Only `sync` reads it, when it starts:
the enforcement processes (Squid's helper, Unbound, the proxy) run as other
users and never need it, so a token file they cannot read never stops
enforcement. `load_node_token` refuses a file every local user can read.
"""

from __future__ import annotations

import logging
import os
import ssl
import stat
import time

from blocklist.core.errors import ConfigError
from blocklist.core.protocol import NODE, PROOF, ReportOutcome, check_token, make_proof, report_key
from resolver_plugin.config import PluginConfig, SourceConfig

log = logging.getLogger("blocklist.plugin.sync")

MAX_TOKEN_FILE = 4096


def load_node_token(config: PluginConfig, source: SourceConfig | None = None) -> str | None:
    """The node's token for `source` (default: the first), None when plugin.yaml names none;
    ConfigError naming file and key otherwise.

    The file must be readable, hold one token as `blocklist node add` prints it
    (white space around it is ignored), and not be readable or writable by
    every local user (mode 0600, or 0640 with a group).
    """
    source = source or config.sources[0]
    path = source.node_token_file
    if path is None:
        return None
    key = f"sources[{source.name}].node_token_file" if source.name else "node_token_file"
    where = f"{config.path}: {key} {path}"
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


def client_tls(config: PluginConfig, source: SourceConfig | None = None) -> ssl.SSLContext | bool:
    """The TLS settings of `source`'s client session: its tls_ca_file's CA when given, else the system's (True)."""
    ca = (source or config.sources[0]).tls_ca_file
    if ca is None:
        return True
    try:
        return ssl.create_default_context(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{config.path}: tls_ca_file {ca}: {exc}") from None


class Reporter:
    """The node's side of the fleet report: the headers that name and prove each poll, and what serve said."""

    def __init__(self, config: PluginConfig, node_id: str | None, source: SourceConfig | None = None) -> None:
        self.node_id = node_id  # None: not a valid header value, polls stay anonymous
        token = load_node_token(config, source)
        self.key = report_key(token) if token else None
        self.millis = 0  # proofs of this node go strictly forward in time, as serve requires
        self.outcome: str | None = None  # what serve last said of our report (X-Blocklist-Report)

    def headers(self, have: str) -> dict[str, str]:
        """X-Blocklist-Node, and X-Blocklist-Proof of this poll with `have` when the node has a token."""
        if self.node_id is None:
            return {}
        if self.key is None:
            return {NODE: self.node_id}
        self.millis = max(int(time.time() * 1000), self.millis + 1)
        return {NODE: self.node_id, PROOF: make_proof(self.key, self.node_id, have, self.millis).header()}

    def note(self, outcome: str | None) -> None:
        """Log when what serve does with this node's reports changes (a source without serve says nothing)."""
        if outcome is None or outcome == self.outcome:
            return
        self.outcome = outcome
        if outcome == ReportOutcome.RECORDED:
            log.info("fleet report recorded node=%s", self.node_id,
                     extra={"event": "fleet_report_recorded", "node": self.node_id})
        elif outcome == ReportOutcome.ANONYMOUS:
            log.info("fleet report not sent: no node_token_file; the hotline's `blocklist fleet` does not "
                     "show this node", extra={"event": "fleet_report_anonymous"})
        else:
            log.warning("fleet report not recorded node=%s outcome=%s (refused: node not registered or wrong "
                        "token; clock: this clock is more than 5 min off the hotline's)", self.node_id, outcome,
                        extra={"event": "fleet_report_refused", "node": self.node_id, "outcome": str(outcome)})
