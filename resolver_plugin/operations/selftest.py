"""`blocklist-plugin selftest`: send each list's canary and a control through every stage, from the outside.

Every published list carries a canary (blocklist.core.canary): a page entry under the
reserved `blocklist-canary.invalid`, computed from the list name, so this node knows it
without the hotline sending any plaintext. The selftest talks to the stages over the
network, as a client does, and never imports them:

    stage     sends                                   the canary is blocked when        the control passes when
    proxy     GET <url> to the proxy                  the status is proxy.block_status  any other status (a 502 from
                                                      (451), Link rel=blocked-by noted  the unresolvable origin is fine)
    squid     GET <url> to Squid                      X-Squid-Error is ERR_BLOCKLIST    no such deny (ERR_DNS_FAIL, a
                                                      (deny_info) or ERR_ACCESS_DENIED  503 from the origin, ... pass)
    resolver  A (AAAA) query for the host to Unbound  the answer is resolver.proxy_     the answer holds no proxy
                                                      address(6): steered to stage 2    address (NXDOMAIN is normal)

For each configured list: its canary is expected blocked when the list is enforced, and
passed when it is monitored (a monitored list never blocks); the control
(`http://control.blocklist-canary.invalid/control`, in no list) is expected passed once
per stage. Verdict, the Nagios way: CRITICAL (2) when any stage is unreachable, does not
block a canary it should, blocks one it should not, or blocks the control; else UNKNOWN
(3) when something could not be tested (no cached version of a list, a version
published before canaries, no stage to test); else OK (0). `run` returns the result as
JSON-ready data, which the CLI prints, and keeps it in the cache (Cache.write_selftest)
for `status` and the admin endpoint. Nothing here names a listed URL: only the canary
and the control, which are public and reserved.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import click

from blocklist.core.canary import CONTROL_HOST, CONTROL_URL, ZONE_LINE, canary_host, canary_url, has_canary
from blocklist.core.errors import BlocklistError
from blocklist.core.severity import Severity, worst
from resolver_plugin.cache import Cache
from resolver_plugin.config import PluginConfig, parse_listen

log = logging.getLogger("blocklist.plugin.selftest")

USER_AGENT = "blocklist-plugin-selftest"
MAX_BODY = 65536
RR_A, RR_AAAA = 1, 28
_RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


@dataclass(frozen=True)
class ListUnderTest:
    name: str
    version: int          # 0: no cached version
    mode: str             # "enforce" or "monitor"
    problem: str | None   # why its canary cannot be tested (UNKNOWN), or None


@dataclass(frozen=True)
class Probe:
    """One request through one stage, what it should get and what it got."""

    stage: str
    target: str
    probe: str            # "canary" or "control"
    list: str | None
    version: int | None
    url: str
    expected: str         # "blocked" or "passed"
    seen: str
    got: str              # "blocked", "passed" or "error"

    @property
    def state(self) -> Severity:
        return Severity.OK if self.got == self.expected else Severity.CRITICAL

    def as_json(self) -> dict[str, Any]:
        return {"stage": self.stage, "target": self.target, "probe": self.probe, "list": self.list,
                "version": self.version, "url": self.url, "expected": self.expected, "seen": self.seen,
                "got": self.got, "state": self.state.name}


@dataclass
class SelftestResult:
    at: float
    node_id: str
    probes: list[Probe] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)  # what could not be tested, and why

    @property
    def state(self) -> Severity:
        states = [p.state for p in self.probes] + [Severity.UNKNOWN for _ in self.unknown]
        return worst(states) if states else Severity.UNKNOWN

    @property
    def summary(self) -> str:
        bad = [f"{p.stage} {'canary of ' + str(p.list) if p.list else 'control'}: expected {p.expected}, "
               f"{p.seen}" for p in self.probes if p.state is not Severity.OK]
        bad += self.unknown
        if bad:
            return "; ".join(bad)
        if not self.probes:
            return "no stage to test"
        stages = ", ".join(dict.fromkeys(p.stage for p in self.probes))
        lists = ", ".join(dict.fromkeys(f"{p.list} v{p.version}" for p in self.probes if p.list))
        return f"{stages}: canary of {lists} as expected, control passed"

    def as_json(self) -> dict[str, Any]:
        return {"state": self.state.name, "exit_code": int(self.state), "summary": self.summary,
                "checked_at": self.at, "node_id": self.node_id, "unknown": list(self.unknown),
                "probes": [p.as_json() for p in self.probes]}


# -- what the lists hold -------------------------------------------------------------------


def lists_under_test(config: PluginConfig, cache: Cache) -> list[ListUnderTest]:
    """Each configured list's cached version, and whether it carries its canary (verified load)."""
    keys = cache.trusted_keys(config.public_keys)
    out = []
    for name in config.lists:
        mode = "monitor" if name in config.monitored else "enforce"
        try:
            loaded = cache.load_list(name, keys, config.limits.max_snapshot_bytes)
        except BlocklistError as exc:
            out.append(ListUnderTest(name, 0, mode, f"list {name}: cached version unusable ({exc.kind})"))
            continue
        if loaded is None:
            out.append(ListUnderTest(name, 0, mode, f"list {name}: no cached version (has `sync` run?)"))
        elif not has_canary(name, loaded.salt, loaded.entries, loaded.hosts):
            out.append(ListUnderTest(name, loaded.version, mode, f"list {name} v{loaded.version} has no canary "
                                     "(published before canaries: the next publish adds it)"))
        else:
            out.append(ListUnderTest(name, loaded.version, mode, None))
    return out


# -- the stages, over the network ----------------------------------------------------------


@dataclass(frozen=True)
class HttpSeen:
    status: int = 0
    squid_error: str = ""
    blocked_by: bool = False  # a Link: <...>; rel="blocked-by" header (RFC 7725)
    error: str = ""


def http_via(proxy: str, url: str, timeout: float) -> HttpSeen:
    """GET `url` through the HTTP proxy at `proxy` (http://HOST:PORT): what came back."""
    parts = urlsplit(proxy)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout)
    try:
        conn.request("GET", url, headers={"Host": urlsplit(url).netloc, "User-Agent": USER_AGENT,
                                          "Connection": "close"})
        response = conn.getresponse()
        response.read(MAX_BODY)
        links = response.headers.get_all("Link") or []
        return HttpSeen(response.status, response.headers.get("X-Squid-Error", ""),
                        any('rel="blocked-by"' in link for link in links))
    except (OSError, http.client.HTTPException) as exc:
        return HttpSeen(error=_network_error(exc))
    finally:
        conn.close()


@dataclass(frozen=True)
class DnsSeen:
    rcode: str = ""
    addresses: tuple[str, ...] = ()
    error: str = ""


def dns_query(host: str, qtype: int, qid: int) -> bytes:
    """A recursive query for `host` (ASCII labels) of `qtype`, class IN."""
    labels = b"".join(bytes([len(label)]) + label.encode("ascii") for label in host.split("."))
    return struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\x00" + struct.pack(">HH", qtype, 1)


def _skip_name(data: bytes, offset: int) -> int:
    for _ in range(128):
        length = data[offset]
        if length & 0xC0 == 0xC0:
            return offset + 2
        offset += 1 + length
        if length == 0:
            return offset
    raise ValueError("name too long")


def parse_answer(data: bytes, qid: int) -> DnsSeen:
    """The rcode and the A/AAAA addresses of a DNS response; raises ValueError on a malformed one."""
    try:
        ident, flags, qdcount, ancount = struct.unpack(">HHHH", data[:8])
        if ident != qid or not flags & 0x8000:
            raise ValueError("not the answer to our query")
        offset = 12
        for _ in range(qdcount):
            offset = _skip_name(data, offset) + 4
        addresses = []
        for _ in range(ancount):
            offset = _skip_name(data, offset)
            rtype, _, _, length = struct.unpack(">HHIH", data[offset:offset + 10])
            rdata = data[offset + 10:offset + 10 + length]
            offset += 10 + length
            if rtype in (RR_A, RR_AAAA) and len(rdata) in (4, 16):
                addresses.append(socket.inet_ntop(socket.AF_INET if len(rdata) == 4 else socket.AF_INET6, rdata))
    except (struct.error, IndexError) as exc:
        raise ValueError(f"malformed DNS answer ({exc})") from None
    return DnsSeen(_RCODES.get(flags & 0xF, str(flags & 0xF)), tuple(addresses))


def dns_ask(server: str, host: str, qtype: int, timeout: float) -> DnsSeen:
    """Ask the resolver at `server` (HOST:PORT) over UDP, as a stub resolver does."""
    address, port = parse_listen(server, "selftest.resolver")
    qid = int.from_bytes(os.urandom(2), "big")
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((address, port))
            sock.send(dns_query(host, qtype, qid))
            deadline = time.monotonic() + timeout
            while True:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                data = sock.recv(4096)
                try:
                    return parse_answer(data, qid)
                except ValueError:
                    if time.monotonic() >= deadline:
                        raise
        except OSError as exc:
            return DnsSeen(error=_network_error(exc))
        except ValueError as exc:
            return DnsSeen(error=str(exc))


def _network_error(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "no answer in time"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return f"{type(exc).__name__}: {getattr(exc, 'strerror', None) or exc}"


# -- judging what came back ----------------------------------------------------------------


def judge_proxy(seen: HttpSeen, block_status: int) -> tuple[str, str]:
    """(got, seen text) for the proxy: our block is proxy.block_status."""
    if seen.error:
        return "error", f"unreachable: {seen.error}"
    text = f"HTTP {seen.status}" + (' with Link rel="blocked-by"' if seen.blocked_by else "")
    return ("blocked" if seen.status == block_status else "passed"), text


def judge_squid(seen: HttpSeen) -> tuple[str, str]:
    """(got, seen text) for Squid: denied by the blocklist ACL (deny_info ERR_BLOCKLIST) or a plain deny."""
    if seen.error:
        return "error", f"unreachable: {seen.error}"
    # "ERR_DNS_FAIL 0", or with deny_info's status: "451:ERR_BLOCKLIST 0"
    error = seen.squid_error.split(" ", 1)[0].rpartition(":")[2]
    text = f"HTTP {seen.status}" + (f" {error}" if error else "")
    return ("blocked" if error in ("ERR_BLOCKLIST", "ERR_ACCESS_DENIED") else "passed"), text


def judge_resolver(seen: DnsSeen, proxy_addresses: Iterable[str]) -> tuple[str, str]:
    """(got, seen text) for stage 1: "blocked" means steered to the proxy (a proxy address answered)."""
    if seen.error:
        return "error", f"unreachable: {seen.error}"
    text = seen.rcode + (" " + ", ".join(seen.addresses) if seen.addresses else "")
    return ("blocked" if set(seen.addresses) & set(proxy_addresses) else "passed"), text


# -- the run --------------------------------------------------------------------------------

Sender = Callable[[str, str], tuple[str, str]]  # (url, host) -> (got, seen)


def _senders(config: PluginConfig, stages: dict[str, str | None]) -> tuple[dict[str, tuple[str, Sender]], list[str]]:
    """The stages to test, each with its target and a function that sends one probe."""
    timeout = config.selftest.timeout
    senders: dict[str, tuple[str, Sender]] = {}
    unknown: list[str] = []
    if stages.get("proxy"):
        proxy = str(stages["proxy"])
        senders["proxy"] = (proxy, lambda url, host: judge_proxy(http_via(proxy, url, timeout),
                                                                 config.proxy.block_status))
    if stages.get("squid"):
        squid = str(stages["squid"])
        senders["squid"] = (squid, lambda url, host: judge_squid(http_via(squid, url, timeout)))
    if stages.get("resolver"):
        server, r = str(stages["resolver"]), config.resolver
        addresses = [a for a in (r.proxy_address, r.proxy_address6) if a]
        qtype = RR_A if r.proxy_address else RR_AAAA
        if not addresses:
            unknown.append("resolver: resolver.proxy_address is not set, so stage 1 steers no host to the proxy")
        else:
            senders["resolver"] = (server, lambda url, host: judge_resolver(dns_ask(server, host, qtype, timeout),
                                                                            addresses))
    return senders, unknown


def run_selftest(config: PluginConfig, stages: dict[str, str | None], now: float | None = None) -> SelftestResult:
    """Send every canary and the control through every stage; the result (not yet stored)."""
    result = SelftestResult(at=time.time() if now is None else now, node_id=config.node_id)
    cache = Cache(config.cache_dir)
    lists = lists_under_test(config, cache)
    result.unknown += [t.problem for t in lists if t.problem]
    senders, unknown = _senders(config, stages)
    result.unknown += unknown
    if not senders and not unknown:
        result.unknown.append("no stage to test: give --proxy, --squid or --resolver, or plugin.yaml's selftest")
    for stage, (target, send) in senders.items():
        for item in lists:
            if item.problem:
                continue
            got, seen = send(canary_url(item.name), canary_host(item.name))
            expected = "blocked" if item.mode == "enforce" else "passed"
            if stage == "resolver" and got == "passed" and seen.startswith("NXDOMAIN"):
                seen += f" (Unbound answered .invalid itself? its config needs {ZONE_LINE})"
            result.probes.append(Probe(stage, target, "canary", item.name, item.version, canary_url(item.name),
                                       expected, seen, got))
        got, seen = send(CONTROL_URL, CONTROL_HOST)
        result.probes.append(Probe(stage, target, "control", None, None, CONTROL_URL, "passed", seen, got))
    return result


def stages_to_test(config: PluginConfig, proxy: str | None, squid: str | None,
                   resolver: str | None) -> dict[str, str | None]:
    """The stages named on the command line; none named: those plugin.yaml's selftest section gives."""
    if proxy or squid or resolver:
        return {"proxy": proxy, "squid": squid, "resolver": resolver}
    t = config.selftest
    return {"proxy": t.proxy, "squid": t.squid, "resolver": t.resolver}


def render(result: SelftestResult) -> str:
    """The Nagios line, then one line per probe."""
    lines = [f"SELFTEST {result.state.name} - {result.summary}"]
    for p in result.probes:
        what = f"canary of {p.list} v{p.version}" if p.list else "control"
        lines.append(f"  {p.state.name:8} {p.stage:8} {what}: expected {p.expected}, got {p.got} ({p.seen})")
    return "\n".join(lines)


def run(config: PluginConfig, stages: dict[str, str | None], as_json: bool = False) -> int:
    """The `selftest` command: test, keep the result in the cache, print it; the Nagios exit code."""
    result = run_selftest(config, stages)
    doc = result.as_json()
    try:
        Cache(config.cache_dir).write_selftest(doc)
    except OSError as exc:
        log.warning("selftest: cannot keep the result in the cache: %s", exc.strerror,
                    extra={"event": "selftest_not_saved", "file": str(exc.filename), "reason": str(exc.strerror)})
    counts = {got: sum(p.got == got for p in result.probes) for got in ("blocked", "passed", "error")}
    log.info("selftest %s: %s", result.state.name, result.summary,
             extra={"event": "selftest_result", "outcome": result.state.name, "counts": counts})
    click.echo(json.dumps(doc, indent=1) if as_json else render(result))
    return int(result.state)
