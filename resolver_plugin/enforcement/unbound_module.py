"""Stage 1 of the filter inside Unbound: answer DNS for listed hosts from the in-memory matcher.

Unbound loads this file by path (``python-script:``) and runs it as ``__main__``;
its config is plugin.yaml, named by the environment variable
``BLOCKLIST_PLUGIN_CONFIG``. See docs/OPERATIONS.md for the Unbound config.

Rules, for a query of class IN (everything else goes on to the iterator untouched):

- a host listed at ``domain`` scope, or below one: NXDOMAIN (``block_mode:
  nxdomain``, the default) or, with ``block_mode: address``, A/AAAA
  ``block_address(6)`` and NODATA for every other type;
- a host that carries ``page``/``folder`` entries: A/AAAA ``proxy_address(6)``,
  the filtering proxy of stage 2; NODATA for HTTPS/SVCB (their address hints
  would bypass the proxy); other types resolve normally. No address of a
  family configured: NODATA for that family. Neither configured: stage 2 is not
  deployed and the host resolves normally;
- anything else resolves normally.

Synthesized answers carry ``resolver.ttl``. A host resolved normally is cached
by the iterator, and Unbound answers a cached name without asking any module. So
on every new version the reload thread empties Unbound's message and RRset caches
through Unbound's own remote control (``flush_zone .``, read from Unbound's config:
a ``control-interface`` socket path, or TCP with the control certificates): a newly
listed host that was in the cache gets its new answer within RELOAD_INTERVAL plus
the load and the flush. A query that the old version passed and whose answer
arrives after the flush is checked again against the new one on its way back.
With the flush in place, synthesized answers are stored in Unbound's cache too
(for ``resolver.ttl``), so that a listed name asked again is answered there, as
any other name is, without the module; the flush takes them out when a new
version comes, so a host removed from the list resolves normally just as fast
(an answer made with a version replaced before it reached the cache is taken out
again).
Without remote control nothing can be flushed: synthesized answers are never
cached (a removed host resolves normally at once), and a cached name changes its
answer when its entry expires (bound it with ``cache-max-ttl``); a warning at
start says so. A CNAME chain that passes through a domain-listed host is
blocked too, and its cached copy invalidated. The iterator's own lookups (the
address of a nameserver that is a listed host) are left alone, so other zones
that host serves still resolve, but their answers are dropped from the cache.

The query name is read from the wire, lowercased and canonicalized as a URL
host is. A label with a byte outside ``[A-Za-z0-9_-]`` (a dot, ``%``, ``/``,
a control byte, ...) cannot be part of a host a URL names: such a name is
checked by the part right of its last odd label, so that ``x\\000.bad.example``
is blocked like ``bad.example``, and otherwise resolves normally.

Most queries take a quick path: the name's ancestors (as wire-format bytes) are
looked up among the names the lists' subtree markers showed to have nothing listed at
or below them (docs/FORMAT.md); a hit passes the query without decoding the name or
computing a digest. The set is learnt as queries pass and belongs to one version of
the lists: a reload starts a new one.

The hot path is the in-memory matcher only: a thread of ours reloads the cache
out of band (LiveMatcher.maybe_reload), and LiveMatcher is built with an
infinite check interval so that a lookup never stats a file; deinit stops that
thread before Unbound finalizes the interpreter, which it does on every reload.
The matcher confirms
every Bloom hit against the exact digests, so a false positive blocks nothing
and at worst sends a host to the proxy, which checks URLs exactly; refuted hits
are counted (ListFilter.bloom_refuted, /metrics) and logged at debug level.

Nothing raises out of ``operate()``: our errors pass the query on, and as the
last guard any other exception is logged and the query passed on. Log lines
never name a listed host; a host sent to the proxy appears at debug level only.
"""

from __future__ import annotations

import ctypes
import enum
import logging
import math
import operator
import os
import re
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

try:  # present only inside Unbound, which imports it into __main__ before running us
    import unboundmodule as ub
except ImportError:
    ub = None

if ub is not None:
    # Unbound 1.17 finalizes and restarts its interpreter on every reload (SIGHUP,
    # unbound-control reload). libyaml's Cython module does not survive that (its
    # classes come back stale: "metaclass conflict"), so inside Unbound PyYAML uses
    # its pure-Python parser; plugin.yaml is read once per start, speed is moot.
    sys.modules.setdefault("yaml._yaml", None)  # type: ignore[arg-type]

try:
    from blocklist.core.canary import CanaryHostVerdict, is_canary_host
    from blocklist.core.errors import BlocklistError, ConfigError, InvalidURL
    from blocklist.core.matcher import HOST_PASS, HostAction, HostVerdict
    from blocklist.core.urls import is_canonical_name
    from resolver_plugin.cache import LiveMatcher
    from resolver_plugin.config import BlockMode, PluginConfig, ResolverConfig, load_config
    from resolver_plugin.operations import metrics
except ImportError as exc:
    if ub is not None:  # Unbound would only say "can't parse Python script"
        ub.log_err(f"blocklist: cannot import the plugin in Unbound's Python: {exc}; "
                   f"PYTHONPATH={os.environ.get('PYTHONPATH', '')!r} (see docs/OPERATIONS.md)")
    raise

CONFIG_ENV = "BLOCKLIST_PLUGIN_CONFIG"
COMPONENT = "unbound"      # the component label of our counters in /metrics
RELOAD_INTERVAL = 0.25     # seconds between checks of the cache's generation file (two stat()s)
METRICS_INTERVAL = 1.0     # seconds between batches of quick passes recorded in /metrics
STATS_INTERVAL = 3600.0    # seconds between the counters' log lines
JOIN_TIMEOUT = 10.0        # seconds deinit waits for a reload in progress
MAX_CHAIN = 16             # answer RRsets checked for a listed CNAME target
CLEAR_CACHE_SIZE = 65536   # clear names remembered for the quick path (cleared when full)
QUICK_SAMPLE = 64          # one quick pass in this many is timed for /metrics
_CHECKED = "blocklist-checked"  # in Unbound's per-query dict: the epoch of the lists that passed this query
CONTROL_TIMEOUT = 5.0      # seconds for one remote-control command (the cache flush)

RR_A, RR_AAAA, RR_SVCB, RR_HTTPS, RR_ANY = 1, 28, 64, 65, 255
_RR_NAMES = {RR_A: "A", RR_AAAA: "AAAA"}
_SECURITY_INDETERMINATE = 2  # sec_status above "bogus": the validator leaves it alone
_VERB_QUERY = 3              # Unbound verbosity at which our debug lines appear

_SAFE_BYTES = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
_SAFE_BYTES_DOT = _SAFE_BYTES + b"."
_PLAIN_NAME = re.compile(r"(?:[a-z0-9_-]+\.)*[a-z0-9_-]+")
_SAFE_LABEL = re.compile(r"[a-z0-9_\-\u0080-\ud7ff\ue000-\U0010ffff]+")

log = logging.getLogger("blocklist.plugin.unbound")

# SWIG's C accessors behind the attributes the hot path reads and writes.
_C_ACCESSORS = ("_ext_state_set", "module_qstate_qinfo_get", "_get_qname", "query_info_qclass_get",
                "module_qstate_return_msg_get", "dns_msg_rep_get", "reply_info_an_numrrsets_get")


# Unbound's SWIG objects (module_qstate, module_env, reply_info, ...): typed as Any, since
# their Python classes exist only inside Unbound.
Swig = Any
# Bound by _bind below, before any query arrives.
_set_state: Callable[[Swig, int, int], None]
_qinfo: Callable[[Swig], Swig]
_qname: Callable[[Swig], bytes]
_qclass: Callable[[Swig], int]
_return_msg: Callable[[Swig], Swig]
_rep: Callable[[Swig], Swig]
_an_numrrsets: Callable[[Swig], int]


def _set_ext_state(qstate: Swig, id: int, state: int) -> None:
    qstate.ext_state[id] = state


def _bind(unbound: Swig) -> bool:
    """Bind the hot path's reads and writes of Unbound's objects; whether they go straight to C.

    Every query crosses SWIG about ten times, and its generated Python layer is
    the costly part: ``qstate.ext_state[id] = s`` builds an ExtState object and
    runs two Python methods before the one C call. Where this Unbound's
    ``_unboundmodule`` has the C accessors, the hot path calls them directly;
    otherwise (or outside Unbound) it uses the public attributes.
    """
    global _set_state, _qinfo, _qname, _qclass, _return_msg, _rep, _an_numrrsets
    c = getattr(unbound, "_unboundmodule", None)
    if c is not None and all(hasattr(c, name) for name in _C_ACCESSORS):
        _set_state, _qinfo, _qname, _qclass = (c._ext_state_set, c.module_qstate_qinfo_get, c._get_qname,
                                               c.query_info_qclass_get)
        _return_msg, _rep, _an_numrrsets = (c.module_qstate_return_msg_get, c.dns_msg_rep_get,
                                            c.reply_info_an_numrrsets_get)
        return True

    _set_state = _set_ext_state
    _qinfo, _qname, _qclass = (operator.attrgetter("qinfo"), operator.attrgetter("qname"),
                               operator.attrgetter("qclass"))
    _return_msg, _rep, _an_numrrsets = (operator.attrgetter("return_msg"), operator.attrgetter("rep"),
                                        operator.attrgetter("an_numrrsets"))
    return False


_DIRECT = _bind(ub)
_clock = time.perf_counter


class Reply(str, enum.Enum):
    PASS = "pass"          # let the next module (the iterator) resolve it
    NXDOMAIN = "nxdomain"  # the name does not exist
    ANSWER = "answer"      # NOERROR with one record, or none (NODATA) when address is None


@dataclass(frozen=True)
class Decision:
    """What stage 1 answers for one query; names the list, never the entry."""

    action: HostAction
    reply: Reply
    rrtype: int = 0
    address: str | None = None
    ttl: int = 0
    list: str | None = None


PASS = Decision(HostAction.PASS, Reply.PASS)


def decide(live: LiveMatcher, qname: str, qtype: int) -> Decision:
    """The answer for `qname` (presentation format, trailing dot optional) and `qtype`.

    Pure apart from the matcher's caches: no I/O, never raises our errors.
    """
    name = qname[:-1] if qname.endswith(".") else qname
    if name.isascii():
        name = name.lower()
    if not _PLAIN_NAME.fullmatch(name):
        labels = name.split(".")
        odd = [i for i, label in enumerate(labels) if not _SAFE_LABEL.fullmatch(label)]
        if odd:
            return _decide_below(live, labels[odd[-1] + 1:], qtype)
    try:
        verdict = live.check_host(name)
    except InvalidURL:
        return _decide_below(live, name.split(".")[1:], qtype)
    return _answer(live.config.resolver, verdict, qtype)


def _decide_below(live: LiveMatcher, labels: list[str], qtype: int) -> Decision:
    """A malformed name: blocked if the nearest well-formed suffix is listed whole, else PASS."""
    for i in range(len(labels)):
        try:
            verdict = live.check_host(".".join(labels[i:]))
        except InvalidURL:
            continue
        if verdict.action is HostAction.BLOCK:
            return _answer(live.config.resolver, verdict, qtype)
        break
    return PASS


def _answer(resolver: ResolverConfig, verdict: HostVerdict, qtype: int) -> Decision:
    action = verdict.action
    if action is HostAction.PASS:
        return PASS
    if action is HostAction.BLOCK:
        if resolver.block_mode is BlockMode.NXDOMAIN:
            return Decision(action, Reply.NXDOMAIN, list=verdict.list)
        v4, v6 = resolver.block_address, resolver.block_address6
    else:
        v4, v6 = resolver.proxy_address, resolver.proxy_address6
        if v4 is None and v6 is None:
            return Decision(action, Reply.PASS, list=verdict.list)
    ttl = max(0, resolver.ttl)
    if qtype == RR_A or (qtype == RR_ANY and v4):
        return Decision(action, Reply.ANSWER, RR_A, v4, ttl, verdict.list)
    if qtype in (RR_AAAA, RR_ANY):
        return Decision(action, Reply.ANSWER, RR_AAAA, v6, ttl, verdict.list)
    if action is HostAction.BLOCK or qtype in (RR_SVCB, RR_HTTPS):
        return Decision(action, Reply.ANSWER, qtype, None, ttl, verdict.list)
    return Decision(action, Reply.PASS, list=verdict.list)


def qname_from_wire(wire: bytes) -> str:
    """A wire-format name in presentation format: ``\\DDD`` for every byte outside [A-Za-z0-9_-]."""
    return _wire_name(wire) + "."


def _wire_name(wire: bytes) -> str:
    """qname_from_wire() without the final dot."""
    labels, i, end = [], 0, len(wire)
    while i < end:
        n = wire[i]
        if not n:
            break
        j = i + 1 + n
        if n > 63 or j > end:
            raise InvalidURL("malformed query name")
        labels.append(wire[i + 1:j])
        i = j
    name = b".".join(labels)
    # one test for the whole name: no byte outside the safe ones and the dots between labels
    if not name.translate(None, _SAFE_BYTES_DOT) and name.count(b".") < len(labels):
        return name.decode("ascii")
    return ".".join(label.decode("ascii") if not label.translate(None, _SAFE_BYTES)
                    else "".join(chr(b) if b in _SAFE_BYTES else f"\\{b:03d}" for b in label) for label in labels)


# -- inside Unbound ------------------------------------------------------------------


class _UnboundLogHandler(logging.Handler):
    """Our log records into Unbound's log (its logfile or syslog), debug at verbosity 3."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            if record.levelno >= logging.ERROR:
                ub.log_err(text)
            elif record.levelno >= logging.WARNING:
                ub.log_warn(text)
            elif record.levelno >= logging.INFO:
                ub.log_info(text)
            else:
                ub.verbose(_VERB_QUERY, text)
        except Exception:  # noqa: BLE001 - logging.Handler's contract: report, never raise
            self.handleError(record)


class CacheFlush:
    """Empties Unbound's message and RRset caches through its remote control: ``flush_zone .``.

    The module cannot flush a listed name by name (it holds digests only), and
    Unbound's pythonmod offers no call that empties the caches, so it speaks
    unbound-control's protocol (``UBCT1 <command>``) to the process it runs in:
    over a ``control-interface`` that is a socket path (no TLS), or over TCP with
    the control key and certificates from Unbound's config (TLS), falling back to
    plain TCP for ``control-use-cert: no``. ``flush_zone .`` marks every entry
    expired (as ``unbound-control flush_zone .`` does), stale answers included.
    """

    def __init__(self, interface: str, port: int, tls_files: tuple[str, str, str] | None = None) -> None:
        self.interface, self.port, self.tls_files = interface, port, tls_files
        self._use_tls = tls_files is not None and not interface.startswith("/")

    @property
    def where(self) -> str:
        return self.interface if self.interface.startswith("/") else f"{self.interface}@{self.port}"

    @classmethod
    def from_unbound(cls, cfg: Swig) -> CacheFlush | None:
        """The remote control of the Unbound whose config `cfg` is; None when it is off."""
        if not int(cfg.remote_control_enable):
            return None
        interface = _first_string(cfg.control_ifs) or "127.0.0.1"
        files = (str(cfg.server_cert_file or ""), str(cfg.control_key_file or ""), str(cfg.control_cert_file or ""))
        tls = files if all(files) and all(os.path.exists(f) for f in files) else None
        return cls(interface, int(cfg.control_port), tls)

    def __call__(self) -> str:
        """Flush; Unbound's one-line reply ("ok removed ..."). Raises OSError when it cannot."""
        reply = self.command("flush_zone .")
        if not reply.startswith("ok"):
            raise OSError(f"unbound remote control refused the flush: {reply[:200]}")
        return reply

    def command(self, command: str) -> str:
        if self.interface.startswith("/"):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(CONTROL_TIMEOUT)
                sock.connect(self.interface)
                return _control_exchange(sock, command)
        if self._use_tls and self.tls_files:
            try:
                return self._command_tls(command, self.tls_files)
            except ssl.SSLError:  # control-use-cert: no (the files exist but Unbound speaks plain)
                self._use_tls = False
        with socket.create_connection((self.interface, self.port), CONTROL_TIMEOUT) as sock:
            return _control_exchange(sock, command)

    def _command_tls(self, command: str, files: tuple[str, str, str]) -> str:
        server_cert, key, cert = files
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False  # Unbound's self-signed server certificate names "unbound"
        context.load_verify_locations(server_cert)
        context.load_cert_chain(cert, key)
        with socket.create_connection((self.interface, self.port), CONTROL_TIMEOUT) as raw:
            with context.wrap_socket(raw) as sock:
                return _control_exchange(sock, command)


def _control_exchange(sock: socket.socket, command: str) -> str:
    sock.sendall(f"UBCT1 {command}\n".encode())
    chunks: list[bytes] = []
    while len(chunks) < 64:  # bounded: a reply to flush_zone is one line
        data = sock.recv(4096)
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks).decode(errors="replace").strip()


def _first_string(head: Swig) -> str | None:
    """The first string of a ``struct config_strlist_head *`` (SWIG gives only the pointer)."""
    try:
        address = int(head)
        first = ctypes.c_void_p.from_address(address).value if address else None
        if not first:
            return None
        text = ctypes.c_char_p.from_address(first + ctypes.sizeof(ctypes.c_void_p)).value  # after `next`
    except (TypeError, ValueError):
        return None
    return text.decode(errors="replace") if text else None


def _trim_memory() -> None:
    """Give the freed pages of an old list back to the system (glibc's malloc_trim; no-op elsewhere).

    The reload thread allocates in a malloc arena of its own, and glibc's dynamic mmap threshold
    puts a second big snapshot buffer on the heap after the first is freed: without a trim the
    freed pages stay in the process and the resident size climbs with every reload.
    """
    trim = getattr(_LIBC, "malloc_trim", None) if _LIBC is not None else None
    if trim is not None:
        trim(0)


try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None)
except OSError:
    _LIBC = None


@dataclass
class _Counts:
    queries: int = 0
    blocked: int = 0
    proxied: int = 0
    malformed: int = 0
    cname_blocked: int = 0
    errors: int = 0


class _Stage:
    """What init builds: config, live matcher, the out-of-band reload thread and counters."""

    def __init__(self, config: PluginConfig, live: LiveMatcher, flush: CacheFlush | None = None) -> None:
        self.config, self.live, self.flush = config, live, flush
        # One more for every new version enforced; stored in a passed query's qdata, so that
        # an answer that comes back after a new version is checked again (see _on_answer).
        self.epoch = 0
        self.flushes = 0
        self.counts = _Counts()
        self.debug = log.isEnabledFor(logging.DEBUG)
        # Names (lowercased wire format) with nothing listed at or below them, and the
        # matcher they were found with; replaced as one tuple when the matcher changes.
        self.clear: tuple[object, set[bytes]] = (None, set())  # read by _on_query
        # Queries passed by quick_pass(), and the time of one in QUICK_SAMPLE of them (a clock
        # read costs a tenth of a quick pass); flushed to /metrics out of band.
        self.quick = 0
        self.quick_timed = 0
        self.quick_seconds = 0.0
        self._quick_flushed = (0, 0, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._reload_loop, name="blocklist-unbound-reload",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(JOIN_TIMEOUT)
        if self._thread.is_alive():
            log.warning("reload thread still busy after %.0f s; leaving it", JOIN_TIMEOUT)
        self.flush_quick()
        self.log_counts()

    def _reload_loop(self) -> None:
        next_stats = time.monotonic() + STATS_INTERVAL
        next_flush = time.monotonic() + METRICS_INTERVAL
        while not self._stop.wait(RELOAD_INTERVAL):
            try:
                self.reload()
            except Exception:  # noqa: BLE001 - the reload thread must survive anything
                log.exception("cache reload failed; keeping the current lists")
            if time.monotonic() >= next_flush:
                next_flush = time.monotonic() + METRICS_INTERVAL
                self.flush_quick()
            if time.monotonic() >= next_stats:
                next_stats += STATS_INTERVAL
                self.log_counts()

    def reload(self) -> bool:
        """Load a new version if the cache has one; then empty Unbound's caches. True if it did."""
        before = self.live.matcher
        if not self.live.maybe_reload():  # two stat()s when nothing changed
            if self.live.matcher is not before:  # reloaded, the same versions (or a refused one)
                _trim_memory()
            return False
        self.epoch += 1
        self.clear = (None, set())  # let go of the old matcher now, not at the next query
        started = time.monotonic()
        if self.flush is not None:
            try:
                reply = self.flush()
            except OSError as exc:
                log.error("new lists enforced, but Unbound's cache could not be flushed through its "
                          "remote control (%s): cached names keep their answers until they expire: %s",
                          self.flush.where, exc)
            else:
                self.flushes += 1
                log.info("new lists: Unbound's cache flushed in %.3f s (%s)", time.monotonic() - started, reply)
        _trim_memory()
        log.debug("reload %d done in %.3f s", self.epoch, time.monotonic() - started)
        return True

    def flush_quick(self) -> None:
        """Record the quick passes since the last flush in /metrics (one batch, at their sampled mean time)."""
        count, timed, seconds = self.quick, self.quick_timed, self.quick_seconds
        done, done_timed, done_seconds = self._quick_flushed
        self._quick_flushed = (count, timed, seconds)
        if timed > done_timed:
            mean = (seconds - done_seconds) / (timed - done_timed)
        else:  # too few since the last flush to have a sample: the mean so far
            mean = seconds / timed if timed else 0.0
        metrics.observe_host_passes(COMPONENT, count - done, mean * (count - done))

    def quick_pass(self, wire: bytes) -> bool:
        """Whether a query name (lowercased wire format) passes, known without decide().

        Yes when one of its ancestors was found clear (nothing listed at or below it)
        with the matcher in force now, or when the matcher's subtree markers show
        that now: then the shortest such suffix is remembered for its other names.
        Either way the answer decide() would give; no means "ask decide()".
        """
        owner, clear = self.clear
        if owner is self.live.matcher:
            tail, n = wire, wire[0]
            while 0 < n < 64:
                tail = tail[n + 1:]
                if tail in clear:
                    return True
                n = tail[0] if tail else 0
        return self.learn(wire)

    def learn(self, wire: bytes) -> bool:
        """quick_pass() for a name with no remembered clear ancestor: ask the subtree markers."""
        owner, clear = self.clear
        matcher = self.live.matcher
        if owner is not matcher:
            if not matcher:
                return False
            self.clear = (matcher, clear := set())
        try:
            name = _wire_name(wire)
        except InvalidURL:
            return False  # decide() counts it as malformed
        # Only a name the slow path reads unchanged (canonical, not an IP address).
        suffix = self.live.clear_suffix(matcher, name) if is_canonical_name(name) else None
        if suffix is None:
            return False
        if len(clear) >= CLEAR_CACHE_SIZE:
            clear.clear()
        clear.add(wire[len(wire) - len(suffix) - 2:])  # the suffix's own wire form
        return True

    def bloom_refuted(self) -> int:
        return sum(f.bloom_refuted for f in self.live.matcher.filters)

    def log_counts(self) -> None:
        c = self.counts
        log.info("stage 1: %d queries checked, %d blocked (%d via CNAME), %d sent to the proxy, "
                 "%d malformed names, %d errors; %d Bloom hits refuted; %d cache flushes", c.queries + self.quick,
                 c.blocked, c.cname_blocked, c.proxied, c.malformed, c.errors, self.bloom_refuted(), self.flushes)

    def decide(self, qname: str, qtype: int) -> Decision:
        """decide(), counted (here and in /metrics); refuted Bloom hits logged at debug level."""
        started = time.perf_counter()
        if self.debug:
            refuted = self.bloom_refuted()
            decision = decide(self.live, qname, qtype)
            if self.bloom_refuted() > refuted:
                log.debug("Bloom filter hit refuted by the exact digests (a false positive)")
        else:
            decision = decide(self.live, qname, qtype)
        # Counts are approximate across Unbound's threads (+= under the GIL); fine for a log line.
        acted = decision.reply is not Reply.PASS
        if acted and decision.action is HostAction.BLOCK:
            self.counts.blocked += 1
        elif acted:
            self.counts.proxied += 1
        verdict = HostVerdict(decision.action, decision.list) if acted else HOST_PASS
        if acted and is_canary_host(qname.lower().rstrip(".")):  # the selftest's probe: counted apart
            verdict = CanaryHostVerdict(decision.action, decision.list)
        metrics.observe_host_check(COMPONENT, verdict, time.perf_counter() - started)
        return decision


_stage: _Stage | None = None


def _install_log_handler(verbosity: int) -> None:
    root = logging.getLogger("blocklist")
    for handler in [h for h in root.handlers if type(h).__name__ == "_UnboundLogHandler"]:
        root.removeHandler(handler)  # ours from an earlier run of this script (Unbound reload)
    handler = _UnboundLogHandler()
    handler.setFormatter(logging.Formatter("blocklist: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbosity >= _VERB_QUERY else logging.INFO)
    root.propagate = False


def init_standard(id: int, env: Swig) -> bool:
    """Load plugin.yaml and the cached lists; raise (Unbound refuses to start) if we cannot."""
    global _stage
    _install_log_handler(int(env.cfg.verbosity))
    path = os.environ.get(CONFIG_ENV)
    if not path:
        log.error("%s is not set in Unbound's environment: refusing to start unfiltered", CONFIG_ENV)
        raise ConfigError(f"{CONFIG_ENV} is not set")
    try:
        config = load_config(path)
        live = LiveMatcher(config, check_interval=math.inf, component=COMPONENT)
    except BlocklistError as exc:
        log.error("cannot start stage 1, refusing to start unfiltered: %s", exc)
        raise
    live.current()  # the one generation check a first lookup would otherwise do
    metrics.share_counters(config.cache_dir, live)
    flush = CacheFlush.from_unbound(env.cfg)
    _stage = _Stage(config, live, flush)
    _stage.start()
    if flush is None:
        log.warning("Unbound's remote-control is off: a newly listed host that is in Unbound's cache keeps "
                    "its answer until the entry expires (cache-max-ttl); see docs/OPERATIONS.md")
    r = config.resolver
    if r.proxy_address is None and r.proxy_address6 is None:
        log.warning("resolver.proxy_address is not set: hosts with listed pages resolve normally")
    log.info("stage 1 ready: config %s, enforcing %s, block_mode %s, SWIG accessors %s, cache flush %s", path,
             ", ".join(f"{n} v{v}" for n, v in live.matcher.versions().items()) or "nothing yet",
             r.block_mode, "direct" if _DIRECT else "public", flush.where if flush else "off")
    return True


def deinit(id: int) -> bool:
    """Stop the reload thread before Unbound finalizes the interpreter (reload, exit)."""
    global _stage
    if _stage is not None:
        _stage.close()
        _stage = None
    metrics.stop_sharing()
    return True


def inform_super(id: int, qstate: Swig, superqstate: Swig, qdata: Swig) -> bool:
    return True


def operate(id: int, event: int, qstate: Swig, qdata: Swig) -> bool:
    """Unbound's per-query entry point; never raises."""
    try:
        if event == ub.MODULE_EVENT_MODDONE:  # half the calls: the answer side first
            _on_answer(id, qstate, qdata)
        elif event == ub.MODULE_EVENT_NEW or event == ub.MODULE_EVENT_PASS:
            _on_query(id, qstate, qdata)
        else:
            _set_state(qstate, id, ub.MODULE_ERROR)
    except Exception as exc:  # noqa: BLE001 - the documented last guard: Unbound must never see one
        if _stage is not None:
            _stage.counts.errors += 1
        log.error("unexpected %s while checking a query; passing it on", type(exc).__name__)
        log.debug("traceback of the unexpected error", exc_info=True)
        done = event == ub.MODULE_EVENT_MODDONE
        _set_state(qstate, id, ub.MODULE_FINISHED if done else ub.MODULE_WAIT_MODULE)
    return True


def _on_query(id: int, qstate: Swig, qdata: Swig) -> None:
    """A client's query (or a prefetch): answer it if listed, else hand it to the iterator."""
    stage = _stage
    if stage is None:
        _set_state(qstate, id, ub.MODULE_WAIT_MODULE)
        return
    epoch, passed = stage.epoch, stage.quick  # the epoch before the lists are read: see _Stage.reload
    started = 0.0 if passed % QUICK_SAMPLE else _clock()
    qinfo = _qinfo(qstate)
    wire = _qname(qinfo)
    lowered = wire.lower()  # ASCII letters only; length bytes (<= 63) are never letters
    # A name below a clear suffix passes in every class: the class is read only when it does not.
    # Most queries: a suffix remembered for the lists in force (quick_pass's first loop, inlined).
    owner, clear = stage.clear
    quick = False
    if owner is stage.live.matcher:
        tail, n = lowered, lowered[0]
        while 0 < n < 64:
            tail = tail[n + 1:]
            if tail in clear:
                quick = True
                break
            n = tail[0] if tail else 0
    if quick or stage.learn(lowered):
        try:
            qdata[_CHECKED] = epoch
        except TypeError:  # an Unbound that passes no per-query dict (older ones pass None)
            pass
        _set_state(qstate, id, ub.MODULE_WAIT_MODULE)
        stage.quick = passed + 1
        if started:
            stage.quick_timed += 1
            stage.quick_seconds += _clock() - started
        return
    if _qclass(qinfo) != ub.RR_CLASS_IN:
        _set_state(qstate, id, ub.MODULE_WAIT_MODULE)
        return
    stage.counts.queries += 1
    try:
        qname = qname_from_wire(wire)
        decision = stage.decide(qname, qinfo.qtype)
    except BlocklistError:
        stage.counts.malformed += 1
        metrics.observe_invalid(COMPONENT)
        _set_state(qstate, id, ub.MODULE_WAIT_MODULE)
        return
    if decision.reply is Reply.PASS:
        if isinstance(qdata, dict):
            qdata[_CHECKED] = epoch
        _set_state(qstate, id, ub.MODULE_WAIT_MODULE)
        return
    if decision.action is HostAction.PROXY and stage.debug:
        log.debug("%s %s: sent to the proxy (list %s)", qname, _RR_NAMES.get(decision.rrtype, "NODATA"),
                  decision.list)
    _reply(id, qstate, qname, decision, epoch)


def _on_answer(id: int, qstate: Swig, qdata: Swig) -> None:
    """The iterator's answer, to a query we checked or to one of the iterator's own lookups.

    A query we checked is blocked if its CNAME chain runs through a domain-listed
    host; one checked by an older version of the lists (a new one came while it
    was upstream, after or during the cache flush) is checked again as a new query
    would be, and its answer taken out of the cache if the new version acts on it.
    The iterator's own lookups (the address of a nameserver) start below us and
    never pass through _on_query: they are left alone, so that a listed host
    serving DNS for other zones does not break them, but a listed name's answer
    is taken out of the cache, so that no client is answered from it.
    """
    stage = _stage
    if stage is None:
        _set_state(qstate, id, ub.MODULE_FINISHED)
        return
    try:
        checked = qdata.get(_CHECKED)
    except AttributeError:  # an Unbound that passes no per-query dict (older ones pass None): checked now
        checked = stage.epoch
    if checked == stage.epoch or (checked is not None and not _recheck(id, qstate, stage)):
        # one RRset is the answer itself; a chain (CNAME, DNAME) has at least two
        msg = _return_msg(qstate)
        rep = _rep(msg) if msg is not None else None
        if rep is not None and _an_numrrsets(rep) > 1:
            _check_chain(id, qstate, stage, rep)
        else:
            _set_state(qstate, id, ub.MODULE_FINISHED)
        return
    if checked is None:
        qinfo = _qinfo(qstate)
        if _qclass(qinfo) == ub.RR_CLASS_IN and _decide_quietly(stage, qinfo).reply is not Reply.PASS:
            ub.invalidateQueryInCache(qstate, qinfo)
        _set_state(qstate, id, ub.MODULE_FINISHED)


def _decide_quietly(stage: _Stage, qinfo: Swig) -> Decision:
    """decide() for a query's name, uncounted; PASS for a malformed one."""
    try:
        return decide(stage.live, qname_from_wire(_qname(qinfo)), qinfo.qtype)
    except BlocklistError:
        return PASS


def _recheck(id: int, qstate: Swig, stage: _Stage) -> bool:
    """A query passed by an older version: answered (and its cached copy dropped) if the lists act now."""
    epoch, qinfo = stage.epoch, _qinfo(qstate)
    decision = _decide_quietly(stage, qinfo) if _qclass(qinfo) == ub.RR_CLASS_IN else PASS
    if decision.reply is Reply.PASS:
        return False
    if decision.action is HostAction.BLOCK:
        stage.counts.blocked += 1
    else:
        stage.counts.proxied += 1
    ub.invalidateQueryInCache(qstate, qinfo)
    _reply(id, qstate, qname_from_wire(_qname(qinfo)), decision, epoch)
    return True


def _check_chain(id: int, qstate: Swig, stage: _Stage, rep: Swig) -> None:
    """An answer with a chain: blocked if an owner name in it is listed whole, else finished."""
    started, epoch = _clock(), stage.epoch
    qinfo = _qinfo(qstate)
    qwire = _qname(qinfo).lower()
    for i in range(min(_an_numrrsets(rep), MAX_CHAIN)):
        owner = rep.rrsets[i].rk.dname
        if owner.lower() == qwire:
            continue
        try:
            decision = decide(stage.live, qname_from_wire(owner), qinfo.qtype)
        except BlocklistError:
            continue
        if decision.action is HostAction.BLOCK:
            stage.counts.blocked += 1
            stage.counts.cname_blocked += 1
            metrics.observe_host_check(COMPONENT, HostVerdict(decision.action, decision.list),
                                       _clock() - started)
            ub.invalidateQueryInCache(qstate, qinfo)  # the iterator cached the chain
            _reply(id, qstate, qname_from_wire(_qname(qinfo)), decision, epoch)
            return
    _set_state(qstate, id, ub.MODULE_FINISHED)


def _reply(id: int, qstate: Swig, owner: str, decision: Decision, epoch: int) -> None:
    """Answer the query with `decision`, made with the lists of `epoch` (cached while that is in force)."""
    msg = ub.DNSMessage(owner, qstate.qinfo.qtype, ub.RR_CLASS_IN, ub.PKT_QR | ub.PKT_RA | ub.PKT_AA)
    if decision.reply is Reply.ANSWER and decision.address is not None:
        msg.answer.append(f"{owner} {decision.ttl} IN {_RR_NAMES[decision.rrtype]} {decision.address}")
    if not msg.set_return_msg(qstate):
        log.error("could not build the answer to a query; answering SERVFAIL")
        _set_state(qstate, id, ub.MODULE_ERROR)
        return
    rcode = ub.RCODE_NXDOMAIN if decision.reply is Reply.NXDOMAIN else ub.RCODE_NOERROR
    qstate.return_rcode = rcode
    rep = qstate.return_msg.rep
    rep.security = _SECURITY_INDETERMINATE
    stage = _stage
    if stage is not None and stage.flush is not None and stage.config.resolver.ttl > 0 and stage.epoch == epoch:
        # Cached like any answer (the next new version flushes it): the cached copy carries the
        # rcode in its flags and the TTL, and is not "authoritative", which Unbound refuses to cache.
        rep.flags |= rcode
        rep.ttl = rep.prefetch_ttl = stage.config.resolver.ttl
        rep.authoritative = 0
        ub.storeQueryInCache(qstate, qstate.qinfo, rep, 0)
        rep.authoritative = 1
        if stage.epoch != epoch:  # a new version (and its flush) came meanwhile: not for the cache
            ub.invalidateQueryInCache(qstate, qstate.qinfo)
    _set_state(qstate, id, ub.MODULE_FINISHED)
