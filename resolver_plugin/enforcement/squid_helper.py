"""Squid `external_acl_type` helper: answers one OK/ERR/BH line per request line on stdin.

A shell over the core: it parses Squid's line protocol and asks the LiveMatcher;
it holds no matching logic. Synchronous on purpose, and it imports neither
asyncio nor aiohttp, so Squid can start many of them quickly.

Protocol (squid.conf.documented, `external_acl_type`, Squid 3.2 to 7):

    request:  [channel-ID SP] FORMAT-values [SP %DATA-values] LF
    response: [channel-ID SP] OK|ERR|BH [SP key=value ...] LF

- channel-ID is present when the helper is declared with `concurrency=N`
  (a number 0..N-1, echoed back unchanged). It is recognised by shape: a first
  token of at most 10 decimal digits followed by a space. A %URI value is
  never only digits, so there is no ambiguity with the FORMAT we document.
- The first FORMAT value is the request URI (`%URI`); Squid URL-escapes each
  value (rfc1738 escaping, `%` included) and appends `%DATA` ("-" when the
  acl line has no arguments). We unescape the URI once and ignore the rest.
- For CONNECT, %URI is the authority "host:port": there is no path to check,
  so the host is checked (`check_host`): a host listed whole (domain scope)
  gets OK, anything else ERR. A URL of another scheme is read as
  `LiveMatcher.check_any_scheme` says, as the proxy reads it: ws:// and wss://
  as http:// and https://, any other (ftp://, whois://, ...) by its host alone,
  OK where the host is listed whole.
- OK means "listed" (squid.conf: `http_access deny <acl>` with `deny_info`),
  with `message=` (Squid's %o in error pages) and `log=` (%ea in logformat)
  naming the list and its version, never the URL or the entry.
- BH answers a line we cannot use (empty, longer than MAX_LINE, a URL that
  cannot be canonicalized); the helper goes on with the next line. Squid does
  not cache BH; Squid 5.7 retries the lookup once, then ends the http_access
  check with "no answer", which denies the request with the same deny_info
  page (checked with a real Squid): unusable URLs fail closed.

Answers are written per batch: every complete line read in one `read1` gets
its answer, then one write and one flush. With concurrency=N Squid may send up
to N lines at once; without, it waits for each answer, so a batch is one line.
A line whose URL has an authority the matcher remembers as allowed (no list
names its host: Matcher.remembered) is answered ERR from that memory, the
answer a check would give, without unescaping or checking the URL; not while
a local policy, a monitored list or the circuit breaker needs every check
(LiveMatcher.remembered).
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from collections.abc import Mapping
from typing import BinaryIO
from urllib.parse import unquote_to_bytes

from blocklist.core.canary import CanaryVerdict
from blocklist.core.errors import InvalidURL
from blocklist.core.matcher import ALLOWED, HostAction, Verdict
from blocklist.core.urls import MAX_URL_LENGTH
from resolver_plugin.cache import LiveMatcher
from resolver_plugin.config import PluginConfig
from resolver_plugin.operations import metrics

log = logging.getLogger("blocklist.plugin.squid")

COMPONENT = "squid"
MAX_LINE = 65536
"""Longest request line handled (bytes); a longer one gets BH. Squid URLs are <= 8 KiB
before escaping, so a legitimate line is at most ~24 KiB."""
READ_SIZE = 65536
_MAX_CHANNEL = 10  # digits of a channel-ID; longer means "not a channel-ID"

# A line whose %URI has a plain authority as Matcher.check reads one: [channel-ID SP]
# http(s)://authority, then the rest of the URL, the end of the value or of the line. Escapes
# after the authority do not change it, so unescaping the URI first would read the same one.
_PLAIN_LINE = re.compile(rb"([0-9]{1,10} )?https?://([a-z0-9.-]{1,253}(?::[0-9]{1,5})?)(?=[/?#\s]|$)")
# "host:port" or "[v6]:port" with nothing else: the %URI of a CONNECT request.
_AUTHORITY = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[^\s/?#@\[\]:]+):[0-9]{1,5}")


def _quote(value: str) -> str:
    """A kv-pair value in double quotes, with \\ and " escaped and no line breaks."""
    value = value.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + value.replace("\r", " ").replace("\n", " ") + '"'


class SquidHelper:
    """Turns one request line into one answer line. Owns no I/O, so tests can call `answer`."""

    def __init__(self, live: LiveMatcher, log_blocked_urls: bool = False) -> None:
        self.live = live
        self.log_blocked_urls = log_blocked_urls
        self._blocked: dict[tuple[str | None, int | None, str], bytes] = {}
        self._checks = 0                   # URL checks since the last flush_metrics
        self._blocks: Counter[str] = Counter()
        self._known: Mapping[str, Verdict] | None = None  # LiveMatcher.remembered, per batch

    def start_batch(self) -> None:
        """Before a batch of lines: the lines of an authority the matcher remembers as allowed
        are answered ERR from its memory (one dictionary lookup, the same answer as check's)."""
        self._known = self.live.remembered()

    def flush_metrics(self, seconds: float) -> None:
        """Record the URL checks answered since the last call, which took `seconds`."""
        metrics.observe_checks(COMPONENT, self._checks, self._blocks, seconds)
        self._checks = 0
        self._blocks.clear()

    def answer(self, line: bytes) -> bytes:
        """The answer (without LF) to one request line (without LF). Never raises for any input."""
        known = self._known
        if known is not None and len(line) <= MAX_URL_LENGTH:
            plain = _PLAIN_LINE.match(line)
            if plain is not None and known.get(plain.group(2).decode("ascii")) is ALLOWED:
                self._checks += 1
                prefix = plain.group(1)
                return prefix + b"ERR" if prefix else b"ERR"
        answer = self._check(line)
        if known is not None:  # the check may have loaded a new version: answer from its memory now
            self._known = self.live.remembered()
        return answer

    def _check(self, line: bytes) -> bytes:
        space = line.find(b" ")
        if 0 < space <= _MAX_CHANNEL and line[:space].isdigit():
            prefix, line = line[:space + 1], line[space + 1:]
        else:
            prefix = b""
        tokens = line.split(None, 1)  # the %URI value; what follows (%DATA) is not used
        if not tokens:
            metrics.observe_invalid(COMPONENT)
            return prefix + b'BH message="empty request"'
        raw = tokens[0]
        if b"%" in raw:
            raw = unquote_to_bytes(raw)
        try:
            uri = raw.decode("ascii")  # what Squid sends: it escapes every other byte
        except UnicodeDecodeError:
            uri = raw.decode("utf-8", "surrogateescape")  # canonicalize's form for raw bytes
        try:
            if uri.startswith(("http://", "https://")):
                verdict = self.live.check(uri)
            else:
                return prefix + self._other(uri, time.perf_counter())
        except InvalidURL:
            metrics.observe_invalid(COMPONENT)
            return prefix + b'BH message="invalid URL"'
        except Exception as exc:  # noqa: BLE001 - the edge: Squid must get an answer, never a dead helper
            return prefix + self._internal_error(exc)
        self._checks += 1
        if not verdict.blocked:
            return prefix + b"ERR"
        if isinstance(verdict, CanaryVerdict):  # the selftest's probe: counted apart (blocklist.core.canary)
            metrics.observe_canary(COMPONENT, verdict.list or "")
        else:
            self._blocks[verdict.list or ""] += 1
        if self.log_blocked_urls:
            _log_block(verdict, uri)
        return prefix + self._ok(verdict.list, verdict.version)

    def overlong(self, head: bytes) -> bytes:
        """The answer to a line longer than MAX_LINE, of which `head` is the start."""
        space = head.find(b" ")
        prefix = head[:space + 1] if 0 < space <= _MAX_CHANNEL and head[:space].isdigit() else b""
        metrics.observe_invalid(COMPONENT)
        return prefix + b'BH message="request line too long"'

    def _other(self, uri: str, started: float) -> bytes:
        """The rare shapes: CONNECT's host:port, another scheme (ftp, ws), an upper-case or missing one."""
        if "://" not in uri and _AUTHORITY.fullmatch(uri):
            return self._host_result(uri, started)
        verdict = self.live.check_any_scheme(uri)
        metrics.observe_check(COMPONENT, verdict, time.perf_counter() - started)
        if not verdict.blocked:
            return b"ERR"
        if self.log_blocked_urls:
            _log_block(verdict, uri)
        return self._ok(verdict.list, verdict.version)

    def _internal_error(self, exc: Exception) -> bytes:
        # The exception text may quote the URL: log only its type (privacy).
        log.error("squid-helper: internal error %s while checking a URL", type(exc).__name__,
                  extra={"event": "squid_internal_error", "kind": "internal", "reason": type(exc).__name__})
        metrics.observe_invalid(COMPONENT)
        return b'BH message="internal error"'

    def _host_result(self, authority: str, started: float) -> bytes:
        host = authority.rpartition(":")[0]  # an IPv6 literal keeps its brackets for canonicalize_host
        verdict = self.live.check_host(host)
        metrics.observe_host_check(COMPONENT, verdict, time.perf_counter() - started)
        if verdict.action is HostAction.BLOCK or verdict.fail_closed:
            return self._ok(verdict.list, verdict.version)
        return b"ERR"

    def _ok(self, name: str | None, version: int | None) -> bytes:
        """The OK answer of a list: the same bytes for every URL it blocks (cached)."""
        message = self.live.block_message(name or "unknown")  # with the list's title, basis, appeal URL
        key = (name, version, message)
        cached = self._blocked.get(key)
        if cached is None:
            name = name or "unknown"
            at = f":v{version}" if version is not None else ""
            cached = (f"OK message={_quote(message)} "
                      f"log={_quote(f'blocklist:{name}{at}')}").encode("utf-8", "replace")
            if len(self._blocked) > 256:
                self._blocked.clear()
            self._blocked[key] = cached
        return cached


def serve(helper: SquidHelper, stdin: BinaryIO, stdout: BinaryIO) -> None:
    """Answer every line of `stdin` until EOF, one batch of available lines at a time."""
    read = getattr(stdin, "read1", stdin.read)
    pending = b""
    discarding: bytes | None = None  # head of an overlong line whose end we are skipping
    while True:
        chunk = read(READ_SIZE)
        if not chunk:
            break
        data = pending + chunk if pending else chunk
        lines = data.split(b"\n")
        pending = lines.pop()
        out: list[bytes] = []
        started = time.perf_counter()
        helper.start_batch()
        for line in lines:
            if discarding is not None:
                out.append(helper.overlong(discarding))
                discarding = None
            elif len(line) > MAX_LINE:
                out.append(helper.overlong(line[:64]))
            else:
                out.append(helper.answer(line[:-1] if line.endswith(b"\r") else line))
        if len(pending) > MAX_LINE:
            if discarding is None:
                discarding = pending[:64]
            pending = b""
        helper.flush_metrics(time.perf_counter() - started)
        if out:
            out.append(b"")
            stdout.write(b"\n".join(out))
            stdout.flush()
    if discarding is not None:
        stdout.write(helper.overlong(discarding) + b"\n")
    elif pending:
        stdout.write(helper.answer(pending) + b"\n")
    helper.flush_metrics(0.0)
    stdout.flush()


def run_helper(config: PluginConfig, stdin: BinaryIO, stdout: BinaryIO) -> int:
    """`blocklist-plugin squid-helper`: serve Squid until it closes our stdin; exit code."""
    live = LiveMatcher(config, component=COMPONENT)
    metrics.share_counters(config.cache_dir, live)  # our counters reach the admin endpoint's /metrics
    log.info("squid-helper: started, enforcing %s",
             ", ".join(f"{n} v{v}" for n, v in live.matcher.versions().items()) or "nothing yet",
             extra={"event": "squid_helper_started", "node": config.node_id, "lists": list(live.matcher.versions())})
    if live.missing:
        log.warning("squid-helper: no cached version of %s: those lists are not enforced yet",
                    ", ".join(live.missing), extra={"event": "lists_missing", "missing": live.missing})
    helper = SquidHelper(live, config.squid.log_blocked_urls)
    try:
        serve(helper, stdin, stdout)
    except BrokenPipeError:
        return 0  # Squid went away (reconfigure or shutdown)
    except KeyboardInterrupt:
        return 0
    return 0


def _log_block(verdict: Verdict, uri: str) -> None:
    """A blocked URL in the log: only with squid.log_blocked_urls, the operator's choice."""
    log.info("blocked list=%s url=%s", verdict.list, uri,
             extra={"event": "squid_blocked", "list": verdict.list, "version": verdict.version, "url": uri})
