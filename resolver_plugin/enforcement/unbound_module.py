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

Synthesized answers carry ``resolver.ttl`` and are never stored in Unbound's
cache, so a host removed from the list resolves normally at once. A host
resolved normally *is* cached by the iterator: a newly listed host that is in
the cache changes its answer when that entry expires (bound it with
``cache-max-ttl``). A CNAME chain that passes through a domain-listed host is
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

import enum
import logging
import math
import operator
import os
import re
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
RELOAD_INTERVAL = 1.0      # seconds between checks of the cache's generation file
STATS_INTERVAL = 3600.0    # seconds between the counters' log lines
JOIN_TIMEOUT = 10.0        # seconds deinit waits for a reload in progress
MAX_CHAIN = 16             # answer RRsets checked for a listed CNAME target
CLEAR_CACHE_SIZE = 65536   # clear names remembered for the quick path (cleared when full)
QUICK_SAMPLE = 64          # one quick pass in this many is timed for /metrics
_CHECKED = "blocklist-checked"  # in Unbound's per-query dict: we saw this query arrive

RR_A, RR_AAAA, RR_SVCB, RR_HTTPS, RR_ANY = 1, 28, 64, 65, 255
_RR_NAMES = {RR_A: "A", RR_AAAA: "AAAA"}
_SECURITY_INDETERMINATE = 2  # sec_status above "bogus": the validator leaves it alone
_VERB_QUERY = 3              # Unbound verbosity at which our debug lines appear

_SAFE_BYTES = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
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
    labels, i, end = [], 0, len(wire)
    while i < end and wire[i] != 0:
        n = wire[i]
        if n > 63 or i + 1 + n > end:
            raise InvalidURL("malformed query name")
        label = wire[i + 1:i + 1 + n]
        i += 1 + n
        if label.translate(None, _SAFE_BYTES):  # what is left is the odd bytes
            labels.append("".join(chr(b) if b in _SAFE_BYTES else f"\\{b:03d}" for b in label))
        else:
            labels.append(label.decode("ascii"))
    return ".".join(labels) + "."


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

    def __init__(self, config: PluginConfig, live: LiveMatcher) -> None:
        self.config, self.live = config, live
        self.counts = _Counts()
        self.debug = log.isEnabledFor(logging.DEBUG)
        # Names (lowercased wire format) with nothing listed at or below them, and the
        # matcher they were found with; replaced as one tuple when the matcher changes.
        self._clear: tuple[object, set[bytes]] = (None, set())
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
        while not self._stop.wait(RELOAD_INTERVAL):
            try:
                self.live.maybe_reload()
            except Exception:  # noqa: BLE001 - the reload thread must survive anything
                log.exception("cache reload failed; keeping the current lists")
            self.flush_quick()
            if time.monotonic() >= next_stats:
                next_stats += STATS_INTERVAL
                self.log_counts()

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
        owner, clear = self._clear
        matcher = self.live.matcher
        if owner is matcher:
            tail, n = wire, wire[0]
            while 0 < n < 64:
                tail = tail[n + 1:]
                if tail in clear:
                    return True
                n = tail[0] if tail else 0
        elif matcher:
            self._clear = (matcher, clear := set())
        else:
            return False
        try:
            name = qname_from_wire(wire)[:-1]
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
                 "%d malformed names, %d errors; %d Bloom hits refuted", c.queries + self.quick, c.blocked,
                 c.cname_blocked, c.proxied, c.malformed, c.errors, self.bloom_refuted())

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
    _stage = _Stage(config, live)
    _stage.start()
    r = config.resolver
    if r.proxy_address is None and r.proxy_address6 is None:
        log.warning("resolver.proxy_address is not set: hosts with listed pages resolve normally")
    log.info("stage 1 ready: config %s, enforcing %s, block_mode %s, SWIG accessors %s", path,
             ", ".join(f"{n} v{v}" for n, v in live.matcher.versions().items()) or "nothing yet",
             r.block_mode, "direct" if _DIRECT else "public")
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
        if event == ub.MODULE_EVENT_NEW or event == ub.MODULE_EVENT_PASS:
            _on_query(id, qstate, qdata)
        elif event == ub.MODULE_EVENT_MODDONE:
            _on_answer(id, qstate, qdata)
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
    passed = stage.quick
    started = 0.0 if passed % QUICK_SAMPLE else _clock()
    qinfo = _qinfo(qstate)
    wire = _qname(qinfo)
    # A name below a clear suffix passes in every class: the class is read only when it does not.
    if stage.quick_pass(wire.lower()):  # ASCII letters only; length bytes (<= 63) are never letters
        if isinstance(qdata, dict):
            qdata[_CHECKED] = True
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
            qdata[_CHECKED] = True
        _set_state(qstate, id, ub.MODULE_WAIT_MODULE)
        return
    if decision.action is HostAction.PROXY and stage.debug:
        log.debug("%s %s: sent to the proxy (list %s)", qname, _RR_NAMES.get(decision.rrtype, "NODATA"),
                  decision.list)
    _reply(id, qstate, qname, decision)


def _on_answer(id: int, qstate: Swig, qdata: Swig) -> None:
    """The iterator's answer, to a query we checked or to one of the iterator's own lookups.

    A query we checked is blocked if its CNAME chain runs through a domain-listed
    host. The iterator's own lookups (the address of a nameserver) start below us
    and never pass through _on_query: they are left alone, so that a listed host
    serving DNS for other zones does not break them, but a listed name's answer
    is taken out of the cache, so that no client is answered from it.
    """
    stage = _stage
    if stage is not None:
        # an Unbound that passes no per-query dict (older ones pass None): treat every answer as checked
        checked = qdata.get(_CHECKED) if isinstance(qdata, dict) else True
        if checked:
            # one RRset is the answer itself; a chain (CNAME, DNAME) has at least two
            msg = _return_msg(qstate)
            rep = _rep(msg) if msg is not None else None
            if rep is not None and _an_numrrsets(rep) > 1:
                _check_chain(id, qstate, stage, rep)
            else:
                _set_state(qstate, id, ub.MODULE_FINISHED)
            return
        qinfo = _qinfo(qstate)
        if _qclass(qinfo) == ub.RR_CLASS_IN:
            try:
                acts = decide(stage.live, qname_from_wire(_qname(qinfo)), qinfo.qtype).reply
            except BlocklistError:
                acts = Reply.PASS
            if acts is not Reply.PASS:
                ub.invalidateQueryInCache(qstate, qinfo)
    _set_state(qstate, id, ub.MODULE_FINISHED)


def _check_chain(id: int, qstate: Swig, stage: _Stage, rep: Swig) -> None:
    """An answer with a chain: blocked if an owner name in it is listed whole, else finished."""
    started = _clock()
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
            _reply(id, qstate, qname_from_wire(_qname(qinfo)), decision)
            return
    _set_state(qstate, id, ub.MODULE_FINISHED)


def _reply(id: int, qstate: Swig, owner: str, decision: Decision) -> None:
    msg = ub.DNSMessage(owner, qstate.qinfo.qtype, ub.RR_CLASS_IN, ub.PKT_QR | ub.PKT_RA | ub.PKT_AA)
    if decision.reply is Reply.ANSWER and decision.address is not None:
        msg.answer.append(f"{owner} {decision.ttl} IN {_RR_NAMES[decision.rrtype]} {decision.address}")
    if not msg.set_return_msg(qstate):
        log.error("could not build the answer to a query; answering SERVFAIL")
        _set_state(qstate, id, ub.MODULE_ERROR)
        return
    qstate.return_rcode = ub.RCODE_NXDOMAIN if decision.reply is Reply.NXDOMAIN else ub.RCODE_NOERROR
    qstate.return_msg.rep.security = _SECURITY_INDETERMINATE
    _set_state(qstate, id, ub.MODULE_FINISHED)
