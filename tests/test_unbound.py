"""Stage 1 in Unbound: `decide()` on its own, then a real Unbound answering `dig` as a user sees it.

The real tests start two Unbounds on 127.0.0.1: the "internet" (local-data for
*.example, NXDOMAIN for everything else, so nothing leaves the machine) and the
resolver under test, which loads resolver_plugin/enforcement/unbound_module.py and forwards
"." to the internet. The end-to-end test adds the proxy of stage 2 and an origin
on 127.0.0.2, and plays the browser: resolve with dig, then send the HTTP
request to the resolved address.
"""

from __future__ import annotations

import http.client
import http.server
import json
import logging
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import sysconfig
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blocklist.core.canary import ZONE_LINE, canary_host
from blocklist.core.matcher import HostAction
from resolver_plugin.cache import Cache, LiveMatcher
from resolver_plugin.enforcement.unbound_module import (
    RR_A,
    RR_AAAA,
    RR_ANY,
    RR_HTTPS,
    Decision,
    Reply,
    decide,
    qname_from_wire,
)
from tests.conftest import IN_CI, Hotline, Plugin, require_program
from tests.support.plugin import plugin_cli
from tests.support.tls import self_signed_cert

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "resolver_plugin" / "enforcement" / "unbound_module.py"
DEBIAN_DIST_PACKAGES = "/usr/lib/python3/dist-packages"
RR_MX, RR_TXT = 15, 16
ORIGIN = "127.0.0.2"
PROXY = "127.0.0.1"

# The "internet": every name here resolves to the origin address (and ::2).
INTERNET_HOSTS = ("good.example", "blocked.example", "www.blocked.example", "pages.example",
                  "www.pages.example", "a.pages.example", "late.example", "cached.example")
INTERNET_EXTRA = ('"alias.example. 3600 IN CNAME www.blocked.example."',
                  '"chain.example. 3600 IN CNAME good.example."',
                  # a zone whose nameserver is a listed host: the internet itself (127.0.0.1)
                  '"ns1.blocked.example. 3600 IN A 127.0.0.1"',
                  f'"innocent.example. 3600 IN A {ORIGIN}"',
                  f'"www.innocent.example. 3600 IN A {ORIGIN}"')
RESOLVER = {"proxy_address": PROXY, "ttl": 30}


# -- decide() without Unbound -----------------------------------------------------------


def _listed(hotline: Hotline) -> None:
    hotline.run("add", "http://blocked.example/", "--scope", "domain")
    hotline.run("add", "http://pages.example/bad.html", "--scope", "page")
    hotline.run("add", "http://bücher.example/", "--scope", "domain")
    hotline.run("publish")


def _live(hotline: Hotline, plugin: Plugin, **resolver: object) -> LiveMatcher:
    _listed(hotline)
    plugin.write_config(resolver={**RESOLVER, **resolver})
    plugin.install_published()
    return LiveMatcher(plugin.config())


@pytest.fixture
def live(hotline: Hotline, plugin: Plugin) -> LiveMatcher:
    return _live(hotline, plugin, proxy_address6="fd00::3128")


@pytest.mark.parametrize("qname, qtype, expected", [
    ("blocked.example.", RR_A, Decision(HostAction.BLOCK, Reply.NXDOMAIN, list="default")),
    ("blocked.example", RR_AAAA, Decision(HostAction.BLOCK, Reply.NXDOMAIN, list="default")),
    ("deep.www.BLOCKED.Example.", RR_MX, Decision(HostAction.BLOCK, Reply.NXDOMAIN, list="default")),
    ("xn--bcher-kva.example.", RR_A, Decision(HostAction.BLOCK, Reply.NXDOMAIN, list="default")),
    ("bücher.example.", RR_A, Decision(HostAction.BLOCK, Reply.NXDOMAIN, list="default")),
    ("pages.example.", RR_A, Decision(HostAction.PROXY, Reply.ANSWER, RR_A, PROXY, 30, "default")),
    ("PAGES.example.", RR_AAAA, Decision(HostAction.PROXY, Reply.ANSWER, RR_AAAA, "fd00::3128", 30, "default")),
    ("pages.example.", RR_ANY, Decision(HostAction.PROXY, Reply.ANSWER, RR_A, PROXY, 30, "default")),
    ("pages.example.", RR_HTTPS, Decision(HostAction.PROXY, Reply.ANSWER, RR_HTTPS, None, 30, "default")),
    ("pages.example.", RR_MX, Decision(HostAction.PROXY, Reply.PASS, list="default")),
    ("www.pages.example.", RR_A, Decision(HostAction.PROXY, Reply.ANSWER, RR_A, PROXY, 30, "default")),  # twin
    ("a.pages.example.", RR_A, Decision(HostAction.PASS, Reply.PASS)),  # pages are per site, not per domain
    ("good.example.", RR_A, Decision(HostAction.PASS, Reply.PASS)),
    ("example.", RR_A, Decision(HostAction.PASS, Reply.PASS)),
    (".", RR_A, Decision(HostAction.PASS, Reply.PASS)),
])
def test_decide_rules(live: LiveMatcher, qname: str, qtype: int, expected: Decision) -> None:
    assert decide(live, qname, qtype) == expected


@pytest.mark.parametrize("qname, action", [
    ("a\\000b.blocked.example.", HostAction.BLOCK),     # odd byte below a listed domain: still blocked
    ("x\\.y.www.blocked.example.", HostAction.BLOCK),   # a dot inside a label
    ("evil%2f.blocked.example.", HostAction.BLOCK),     # would unescape to a path
    ("a/b.blocked.example.", HostAction.BLOCK),
    ("*.blocked.example.", HostAction.BLOCK),
    ("blocked.example\\000.", HostAction.PASS),         # not the listed name
    ("a\\000b.good.example.", HostAction.PASS),
    ("a\\000b.pages.example.", HostAction.PASS),        # not the host that carries pages
    ("\\255\\254.\\000.", HostAction.PASS),
    ("..blocked.example", HostAction.BLOCK),
])
def test_decide_malformed_names(live: LiveMatcher, qname: str, action: HostAction) -> None:
    assert decide(live, qname, RR_A).action is action


def test_decide_enormous_names(live: LiveMatcher) -> None:
    long_label = "a" * 63
    name = ".".join([long_label] * 3 + ["a" * 61])
    assert len(name) == 253
    assert decide(live, name + ".", RR_A) == Decision(HostAction.PASS, Reply.PASS)
    assert decide(live, "x" * 20000 + ".blocked.example", RR_A).action is HostAction.BLOCK
    assert decide(live, "a." * 5000 + "blocked.example", RR_A).action is HostAction.BLOCK
    assert decide(live, "x" * 20000, RR_A).reply is Reply.PASS


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(qname=st.text(max_size=300), qtype=st.integers(0, 65535))
def test_decide_never_raises(live: LiveMatcher, qname: str, qtype: int) -> None:
    # the lists are built once and shared by every example, which is what we want here
    assert isinstance(decide(live, qname, qtype), Decision)


def test_decide_block_mode_address(hotline: Hotline, plugin: Plugin) -> None:
    live = _live(hotline, plugin, block_mode="address", block_address="192.0.2.1")
    assert decide(live, "blocked.example.", RR_A) == Decision(
        HostAction.BLOCK, Reply.ANSWER, RR_A, "192.0.2.1", 30, "default")
    # no block_address6: NODATA for AAAA; other types of a blocked host: NODATA too
    assert decide(live, "www.blocked.example.", RR_AAAA) == Decision(
        HostAction.BLOCK, Reply.ANSWER, RR_AAAA, None, 30, "default")
    assert decide(live, "blocked.example.", RR_TXT) == Decision(
        HostAction.BLOCK, Reply.ANSWER, RR_TXT, None, 30, "default")


def test_decide_without_proxy_address_passes_page_hosts(hotline: Hotline, plugin: Plugin) -> None:
    live = _live(hotline, plugin, proxy_address=None)
    assert decide(live, "pages.example.", RR_A).reply is Reply.PASS
    assert decide(live, "blocked.example.", RR_A).reply is Reply.NXDOMAIN


def test_decide_no_aaaa_proxy_gives_nodata(hotline: Hotline, plugin: Plugin) -> None:
    live = _live(hotline, plugin)
    assert decide(live, "pages.example.", RR_AAAA) == Decision(
        HostAction.PROXY, Reply.ANSWER, RR_AAAA, None, 30, "default")


def test_decide_fail_closed_without_lists_sends_all_to_proxy(hotline: Hotline, plugin: Plugin) -> None:
    plugin.write_config(resolver=RESOLVER, fail_closed=True)
    live = LiveMatcher(plugin.config())
    assert decide(live, "good.example.", RR_A).address == PROXY


def test_decide_without_lists_passes(hotline: Hotline, plugin: Plugin) -> None:
    plugin.write_config(resolver=RESOLVER)
    live = LiveMatcher(plugin.config())
    assert decide(live, "blocked.example.", RR_A) == Decision(HostAction.PASS, Reply.PASS)


@pytest.mark.parametrize("wire, name", [
    (b"\x03www\x07Example\x00", "www.Example."),
    (b"\x00", "."),
    (b"\x03a\x00b\x03x.y\x07example\x00", "a\\000b.x\\046y.example."),
    (b"\x02\xc3\xbc\x07example\x00", "\\195\\188.example."),
    (b"\x05a%2fb\x00", "a\\0372fb."),  # \\DDD is always three digits
])
def test_qname_from_wire(wire: bytes, name: str) -> None:
    assert qname_from_wire(wire) == name


def _qname_label_by_label(wire: bytes) -> str:
    """qname_from_wire's definition, one label at a time (its first implementation)."""
    labels, i = [], 0
    while i < len(wire) and wire[i] != 0:
        n = wire[i]
        if n > 63 or i + 1 + n > len(wire):
            return "malformed"
        labels.append("".join(chr(b) if chr(b).isascii() and (chr(b).isalnum() or chr(b) in "-_") else f"\\{b:03d}"
                              for b in wire[i + 1:i + 1 + n]))
        i += 1 + n
    return ".".join(labels) + "."


@settings(max_examples=300, deadline=None)
@given(wire=st.binary(max_size=40) | st.lists(
    st.lists(st.sampled_from(b"aZ09-_.%/ \\\x00\x7f\xc3"), min_size=1, max_size=8).map(lambda b: bytes([len(b), *b])),
    max_size=5).map(lambda parts: b"".join(parts) + b"\0"))
def test_qname_from_wire_is_its_label_by_label_definition(wire: bytes) -> None:
    from blocklist.core.errors import InvalidURL

    try:
        got = qname_from_wire(wire)
    except InvalidURL:
        got = "malformed"
    assert got == _qname_label_by_label(wire), wire


@pytest.mark.parametrize("wire", [b"\x05abc", b"\x40" + b"a" * 64 + b"\x00"])
def test_qname_from_wire_refuses_malformed(wire: bytes) -> None:
    from blocklist.core.errors import InvalidURL

    with pytest.raises(InvalidURL):
        qname_from_wire(wire)


# -- operate() with a stand-in for Unbound ----------------------------------------------


class _FakeMessage:
    """unboundmodule.DNSMessage as far as the glue uses it."""

    built: list[_FakeMessage] = []

    def __init__(self, name: str, rtype: int, rclass: int, flags: int) -> None:
        self.name, self.answer = name, []
        _FakeMessage.built.append(self)

    def set_return_msg(self, qstate: object) -> bool:
        qstate.return_msg = SimpleNamespace(rep=SimpleNamespace(security=0, flags=0, ttl=0, prefetch_ttl=0,
                                                                authoritative=1), message=self)
        return True


_FAKE_UB = SimpleNamespace(
    MODULE_EVENT_NEW=0, MODULE_EVENT_PASS=1, MODULE_EVENT_MODDONE=5, MODULE_EVENT_ERROR=6,
    MODULE_WAIT_MODULE=3, MODULE_FINISHED=5, MODULE_ERROR=4, RR_CLASS_IN=1,
    PKT_QR=1, PKT_RA=2, PKT_AA=4, RCODE_NOERROR=0, RCODE_NXDOMAIN=3, DNSMessage=_FakeMessage,
    invalidateQueryInCache=lambda qstate, qinfo: None, storeQueryInCache=lambda qstate, qinfo, rep, referral: 1)


def _wire(name: str) -> bytes:
    return b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"


class _BrokenQinfo:
    @property
    def qname(self) -> bytes:
        raise RuntimeError("a bug somewhere")


@pytest.fixture
def glue(live: LiveMatcher, monkeypatch: pytest.MonkeyPatch):
    from resolver_plugin.enforcement import unbound_module

    monkeypatch.setattr(unbound_module, "ub", _FAKE_UB)
    monkeypatch.setattr(unbound_module, "_stage", unbound_module._Stage(live.config, live))
    _FakeMessage.built.clear()
    return unbound_module


def _qstate(name: str, qtype: int = RR_A, qinfo: object | None = None) -> SimpleNamespace:
    qinfo = qinfo or SimpleNamespace(qname=_wire(name), qtype=qtype, qclass=1)
    return SimpleNamespace(qinfo=qinfo, ext_state={}, return_msg=None, return_rcode=None)


def test_operate_answers_listed_hosts(glue) -> None:
    blocked = _qstate("www.blocked.example")
    assert glue.operate(0, _FAKE_UB.MODULE_EVENT_NEW, blocked, {}) is True
    assert (blocked.ext_state[0], blocked.return_rcode) == (_FAKE_UB.MODULE_FINISHED, _FAKE_UB.RCODE_NXDOMAIN)
    assert blocked.return_msg.rep.security == 2
    proxied = _qstate("pages.example")
    glue.operate(0, _FAKE_UB.MODULE_EVENT_PASS, proxied, {})
    assert proxied.return_msg.message.answer == [f"pages.example. 30 IN A {PROXY}"]
    qdata: dict = {}
    passed = _qstate("good.example")
    glue.operate(0, _FAKE_UB.MODULE_EVENT_NEW, passed, qdata)
    assert passed.ext_state[0] == _FAKE_UB.MODULE_WAIT_MODULE and passed.return_msg is None
    assert qdata  # marked as a query we checked, for its answer


def test_operate_never_raises(glue) -> None:
    """The last guard: an unexpected error passes the query on and is counted."""
    broken = _qstate("", qinfo=_BrokenQinfo())
    broken.qinfo.qclass = 1
    assert glue.operate(0, _FAKE_UB.MODULE_EVENT_NEW, broken, {}) is True
    assert broken.ext_state[0] == _FAKE_UB.MODULE_WAIT_MODULE
    answer = _qstate("", qinfo=_BrokenQinfo())
    answer.return_msg = SimpleNamespace(rep=None)
    assert glue.operate(0, _FAKE_UB.MODULE_EVENT_MODDONE, answer, {}) is True
    assert answer.ext_state[0] == _FAKE_UB.MODULE_FINISHED
    assert glue._stage.counts.errors == 2
    malformed = _qstate("", qinfo=SimpleNamespace(qname=b"\x05ab", qtype=RR_A, qclass=1))
    assert glue.operate(0, _FAKE_UB.MODULE_EVENT_NEW, malformed, {}) is True
    assert malformed.ext_state[0] == _FAKE_UB.MODULE_WAIT_MODULE
    assert glue._stage.counts.malformed == 1
    error = _qstate("good.example")
    glue.operate(0, _FAKE_UB.MODULE_EVENT_ERROR, error, {})
    assert error.ext_state[0] == _FAKE_UB.MODULE_ERROR  # the iterator failed: SERVFAIL, as without us


_WIRE_LABELS = st.sampled_from([b"blocked", b"pages", b"www", b"good", b"x", b"A", b"b\x00", b"a.b", b"%2f",
                                b"xn--bcher-kva", b"1", b"0x7f", b"PAGES"])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(st.lists(_WIRE_LABELS, min_size=0, max_size=4), min_size=1, max_size=30))
def test_quick_pass_gives_the_answer_decide_gives(live: LiveMatcher, names: list[list[bytes]]) -> None:
    """The quick path passes only names decide() passes, whatever it learnt before."""
    from resolver_plugin.enforcement.unbound_module import _Stage, qname_from_wire
    stage = _Stage(live.config, live)
    for labels in names * 2:  # the second round runs on what the first one learnt
        wire = b"".join(bytes([len(label)]) + label for label in [*labels, b"example"]) + b"\0"
        if stage.quick_pass(wire.lower()):
            qname = qname_from_wire(wire)
            assert decide(live, qname, RR_A).reply is Reply.PASS, qname


def test_quick_passes_reach_the_metrics(glue) -> None:
    from resolver_plugin.operations import metrics
    before = metrics._tally.checks[("unbound", "host")]
    for i in range(5):
        glue.operate(0, _FAKE_UB.MODULE_EVENT_NEW, _qstate(f"q{i}.cdn.good.example"), {})
    assert glue._stage.quick == 5
    glue._stage.flush_quick()
    glue._stage.flush_quick()  # nothing new: nothing counted twice
    assert metrics._tally.checks[("unbound", "host")] == before + 5


def test_canary_queries_are_counted_apart_from_real_ones(glue) -> None:
    """A list's canary host is steered like any host with pages, and counted with action "canary"."""
    from resolver_plugin.operations import metrics
    blocks = metrics._tally.blocks
    before = (blocks[("unbound", "default", "canary")], blocks[("unbound", "default", "proxy")])
    canary = _qstate(canary_host("default"))
    glue.operate(0, _FAKE_UB.MODULE_EVENT_NEW, canary, {})
    assert canary.return_msg.message.answer == [f"{canary_host('default')}. 30 IN A {PROXY}"]
    glue.operate(0, _FAKE_UB.MODULE_EVENT_NEW, _qstate("pages.example"), {})
    after = (blocks[("unbound", "default", "canary")], blocks[("unbound", "default", "proxy")])
    assert after == (before[0] + 1, before[1] + 1)


def test_quick_pass_learns_clear_names_and_forgets_them_on_a_new_version(
        hotline: Hotline, plugin: Plugin, live: LiveMatcher) -> None:
    from resolver_plugin.enforcement.unbound_module import _Stage
    stage = _Stage(live.config, live)
    assert stage.quick_pass(_wire("q1.cdn.late.example"))      # found clear by the markers
    assert stage.quick_pass(_wire("q2.cdn.late.example"))      # and remembered
    assert stage.quick_pass(_wire("q3.other.late.example"))
    assert not stage.quick_pass(_wire("x.blocked.example")) and not stage.quick_pass(_wire("pages.example"))
    assert not stage.quick_pass(_wire("www.pages.example"))    # the twin of a host with pages
    assert stage.quick_pass(_wire("a.pages.example"))          # pages are per site: clear below it
    hotline.run("add", "http://late.example/", "--scope", "domain")
    hotline.run("publish")
    plugin.install_published()
    assert live.maybe_reload()
    assert not stage.quick_pass(_wire("q4.cdn.late.example"))
    assert decide(live, "q4.cdn.late.example.", RR_A).action is HostAction.BLOCK


def test_a_new_version_flushes_unbounds_cache_once(hotline: Hotline, plugin: Plugin, live: LiveMatcher,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    from resolver_plugin.enforcement.unbound_module import _Stage
    flushes: list[int] = []

    class Flush:  # CacheFlush's interface; the real one is tried with Unbound below
        where = "/run/unbound.ctl"

        def __call__(self) -> str:
            flushes.append(1)
            if len(flushes) > 1:
                raise OSError("control socket gone")
            return "ok removed 3 rrsets, 2 messages and 0 key entries"

    caplog.set_level(logging.INFO, logger="blocklist")
    stage = _Stage(live.config, live, Flush())  # type: ignore[arg-type]
    assert not stage.reload() and flushes == [] and stage.epoch == 0  # nothing new
    for version in (1, 2):
        hotline.run("add", f"http://late{version}.example/", "--scope", "domain")
        hotline.run("publish")
        plugin.install_published()
        assert stage.reload()  # the second flush fails: logged, and the reload thread goes on
        assert (len(flushes), stage.epoch) == (version, version)
    assert not stage.reload() and len(flushes) == 2
    assert "cache flushed in" in caplog.text and "control socket gone" in caplog.text


def test_an_answer_passed_by_an_older_version_is_checked_again(glue, hotline: Hotline, plugin: Plugin) -> None:
    """A query that was upstream while a new version came in gets the new version's answer."""
    invalidated = []
    glue.ub.invalidateQueryInCache = lambda qstate, qinfo: invalidated.append(qinfo.qname)
    early, qdata = _qstate("late.example"), {}
    glue.operate(0, _FAKE_UB.MODULE_EVENT_NEW, early, qdata)
    assert early.ext_state[0] == _FAKE_UB.MODULE_WAIT_MODULE  # passed on, upstream now
    hotline.run("add", "http://late.example/", "--scope", "domain")
    hotline.run("publish")
    plugin.install_published()
    assert glue._stage.reload()
    early.return_msg = SimpleNamespace(rep=SimpleNamespace(an_numrrsets=1))
    glue.operate(0, _FAKE_UB.MODULE_EVENT_MODDONE, early, qdata)
    assert (early.ext_state[0], early.return_rcode) == (_FAKE_UB.MODULE_FINISHED, _FAKE_UB.RCODE_NXDOMAIN)
    assert invalidated == [_wire("late.example")]  # the iterator had cached it
    fine, qdata = _qstate("good.example"), {}
    glue.operate(0, _FAKE_UB.MODULE_EVENT_NEW, fine, qdata)
    fine.return_msg = SimpleNamespace(rep=SimpleNamespace(an_numrrsets=1))
    glue.operate(0, _FAKE_UB.MODULE_EVENT_MODDONE, fine, qdata)
    assert (fine.ext_state[0], fine.return_rcode) == (_FAKE_UB.MODULE_FINISHED, None)


def test_own_answers_are_cached_only_with_the_flush_and_the_version_they_were_made_with(glue) -> None:
    stored = []
    glue.ub.storeQueryInCache = lambda qstate, qinfo, rep, referral: stored.append(
        (qinfo.qname, rep.flags, rep.ttl, rep.authoritative)) or 1
    glue.operate(0, _FAKE_UB.MODULE_EVENT_NEW, _qstate("blocked.example"), {})
    assert stored == []  # no remote control: nothing could flush it, so never cached
    glue._stage.flush = object()  # a CacheFlush (tried with Unbound below)
    blocked = _qstate("blocked.example")
    glue.operate(0, _FAKE_UB.MODULE_EVENT_NEW, blocked, {})
    assert stored == [(_wire("blocked.example"), _FAKE_UB.RCODE_NXDOMAIN, 30, 0)]  # the rcode rides in the flags
    assert blocked.return_msg.rep.authoritative == 1  # the answer itself is unchanged
    glue._reply(0, _qstate("pages.example"), "pages.example.", Decision(
        HostAction.PROXY, Reply.ANSWER, RR_A, PROXY, 30, "default"), glue._stage.epoch - 1)
    assert len(stored) == 1  # made with a version that is gone: answered, not cached


# -- a real Unbound ---------------------------------------------------------------------


def _free_port(*hosts: str) -> int:
    """A TCP and UDP port free on every one of `hosts` (bounded tries)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((hosts[0], 0))
            port = s.getsockname()[1]
        try:
            for host in hosts:
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                    with socket.socket(socket.AF_INET, kind) as s:
                        s.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port found")


def _python_path() -> str:
    """What Unbound's embedded python needs: our source, this venv's packages, Debian's unboundmodule."""
    paths = [str(ROOT), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"],
             DEBIAN_DIST_PACKAGES]
    return os.pathsep.join(dict.fromkeys(paths))


def _check_embedded_python(unbound: str) -> None:
    """Our compiled dependencies only load in the CPython version Unbound embeds."""
    libs = subprocess.run(["ldd", unbound], capture_output=True, text=True, timeout=10).stdout
    match = re.search(r"libpython(\d+)\.(\d+)", libs)
    if not Path(DEBIAN_DIST_PACKAGES, "unboundmodule.py").exists():
        message = "python3-unbound is not installed (it ships unboundmodule.py)"
    elif match is None:
        message = f"{unbound} is not linked with libpython (built without --with-pythonmodule?)"
    elif (int(match[1]), int(match[2])) != sys.version_info[:2]:
        message = (f"Unbound embeds Python {match[1]}.{match[2]} but the tests run on "
                   f"{sys.version_info[0]}.{sys.version_info[1]}: the venv's packages would not load")
    else:
        return
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


@dataclass
class Answer:
    status: str
    records: list[tuple[str, int, str, str]] = field(default_factory=list)  # name, ttl, type, data

    @property
    def data(self) -> list[str]:
        return [r[3] for r in self.records]


def dig(port: int, name: str, qtype: str = "A") -> Answer:
    """What `dig` shows: the status and the answer section (name, ttl, type, data)."""
    out = subprocess.run(["dig", "@127.0.0.1", "-p", str(port), "+time=3", "+tries=1", "-q", name, "-t", qtype],
                         capture_output=True, text=True, timeout=15).stdout
    status = re.search(r"status: (\w+)", out)
    assert status is not None, f"no answer from Unbound for {name!r}:\n{out}"
    records, in_answer = [], False
    for line in out.splitlines():
        if line.startswith(";; ANSWER SECTION"):
            in_answer = True
        elif in_answer and not line.strip():
            in_answer = False
        elif in_answer:
            owner, ttl, _cls, rtype, data = line.split(None, 4)
            records.append((owner, int(ttl), rtype, data))
    return Answer(status[1], records)


class Unbound:
    """One Unbound process in the foreground (-d), stopped by its PID."""

    def __init__(self, directory: Path, name: str, config: str, env: dict[str, str] | None = None,
                 **values: object) -> None:
        self.dir, self.name = directory, name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = directory / f"{name}.conf"
        self.log = directory / f"{name}.log"
        self.port = _free_port("127.0.0.1")
        self.conf.write_text(config.format(port=self.port, dir=directory, name=name, **values))
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> Unbound:
        self.proc = subprocess.Popen([require_program("unbound"), "-d", "-c", str(self.conf)],
                                     env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"unbound {self.name} exited {self.proc.returncode}:\n{self.output()}")
            if "start of service" in self.log_text():
                return self
            time.sleep(0.05)
        raise AssertionError(f"unbound {self.name} did not start within {timeout}s:\n{self.output()}")

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def output(self) -> str:
        err = ""
        if self.proc is not None and self.proc.poll() is not None and self.proc.stderr:
            err = self.proc.stderr.read().decode(errors="replace")
        return self.log_text() + err

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


COMMON = """\
server:
  interface: 127.0.0.1
  port: {port}
  do-ip6: no
  chroot: ""
  username: ""
  directory: "{dir}"
  pidfile: "{dir}/{name}.pid"
  use-syslog: no
  logfile: "{dir}/{name}.log"
  num-threads: 1
"""

INTERNET_CONF = COMMON + """\
  module-config: "iterator"
  local-zone: "." static
  local-zone: "example." static
""" + "".join(f'  local-data: "{h}. 3600 IN A {ORIGIN}"\n  local-data: "{h}. 3600 IN AAAA ::2"\n'
              for h in INTERNET_HOSTS) + "".join(f"  local-data: {rr}\n" for rr in INTERNET_EXTRA) + """\
remote-control:
  control-enable: no
"""

RESOLVER_CONF = COMMON + """\
  verbosity: {verbosity}
  do-not-query-localhost: no
  module-config: "{modules}"
{extra}
python:
  python-script: "{script}"
forward-zone:
  name: "."
  forward-addr: 127.0.0.1@{internet}
remote-control:
{control}
"""
CONTROL_OFF = "  control-enable: no"


@pytest.fixture(scope="module")
def internet(tmp_path_factory: pytest.TempPathFactory):
    require_program("dig")
    server = Unbound(tmp_path_factory.mktemp("internet"), "internet", INTERNET_CONF).start()
    yield server
    server.stop()


@pytest.fixture
def start_resolver(internet: Unbound, plugin: Plugin, tmp_path: Path):
    """start_resolver(modules=..., extra=..., env=...) -> a running Unbound with our module."""
    unbound = require_program("unbound")
    require_program("dig")
    _check_embedded_python(unbound)
    started: list[Unbound] = []

    def start(modules: str = "python iterator", extra: str = "", verbosity: int = 1,
              env: dict[str, str] | None = None, wait: bool = True, control: str = CONTROL_OFF) -> Unbound:
        environment = {"PYTHONPATH": _python_path(), "BLOCKLIST_PLUGIN_CONFIG": str(plugin.config_path)}
        server = Unbound(tmp_path / f"resolver{len(started)}", "resolver", RESOLVER_CONF,
                         {**environment, **(env or {})}, modules=modules, extra=extra, script=MODULE,
                         internet=internet.port, verbosity=verbosity, control=control)
        started.append(server)
        return server.start() if wait else server

    yield start
    for server in started:
        server.stop()


def _wait_for(check, timeout: float = 10.0, interval: float = 0.2):
    """Poll `check()` until it returns something truthy; bounded."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() >= deadline:
            return result
        time.sleep(interval)


@pytest.fixture
def listed(hotline: Hotline, plugin: Plugin) -> Plugin:
    _listed(hotline)
    plugin.write_config(resolver=RESOLVER)
    plugin.install_published()
    return plugin


@pytest.mark.parametrize("modules", ["python iterator", "validator python iterator"])
def test_unbound_answers(listed: Plugin, start_resolver, modules: str) -> None:
    resolver = start_resolver(modules=modules)
    port = resolver.port

    blocked = dig(port, "blocked.example")
    assert (blocked.status, blocked.records) == ("NXDOMAIN", [])
    assert dig(port, "x.www.blocked.example", "AAAA").status == "NXDOMAIN"

    proxied = dig(port, "pages.example")
    assert proxied.status == "NOERROR"
    assert proxied.records == [("pages.example.", 30, "A", PROXY)]
    nodata = dig(port, "pages.example", "AAAA")  # no proxy_address6 configured
    assert (nodata.status, nodata.records) == ("NOERROR", [])

    assert dig(port, "good.example").data == [ORIGIN]
    assert dig(port, "good.example", "AAAA").data == ["::2"]
    assert dig(port, "www.pages.example").data == [PROXY]  # the www. twin of a host with pages
    assert dig(port, "a.pages.example").data == [ORIGIN]
    assert dig(port, "nowhere.example").status == "NXDOMAIN"  # the internet's own answer
    assert resolver.alive
    assert "blocked.example" not in resolver.log_text()
    # the hot path calls SWIG's C accessors, not the slower generated attributes
    assert "SWIG accessors direct" in resolver.log_text()
    # no remote control here: cached names cannot be flushed, and the log says so
    assert "remote-control is off" in resolver.log_text()


def test_unbound_block_mode_address(hotline: Hotline, plugin: Plugin, start_resolver) -> None:
    _listed(hotline)
    plugin.write_config(resolver={**RESOLVER, "block_mode": "address", "block_address": "192.0.2.1",
                                  "block_address6": "2001:db8::1", "proxy_address6": "fd00::3128"})
    plugin.install_published()
    port = start_resolver().port
    assert dig(port, "www.blocked.example").records == [("www.blocked.example.", 30, "A", "192.0.2.1")]
    assert dig(port, "blocked.example", "AAAA").data == ["2001:db8::1"]
    assert dig(port, "pages.example", "AAAA").data == ["fd00::3128"]
    mx = dig(port, "blocked.example", "MX")
    assert (mx.status, mx.records) == ("NOERROR", [])


def test_unbound_blocks_cname_to_listed_host(listed: Plugin, start_resolver) -> None:
    port = start_resolver().port
    assert dig(port, "chain.example").data == ["good.example.", ORIGIN]
    for _ in range(2):  # the second answer must not come from the iterator's cache
        answer = dig(port, "alias.example")
        assert (answer.status, answer.records) == ("NXDOMAIN", [])


def test_unbound_leaves_its_own_lookups_alone(listed: Plugin, start_resolver, internet: Unbound) -> None:
    """A zone served by a listed host still resolves; clients still get NXDOMAIN for that host."""
    stub = f'stub-zone:\n  name: "innocent.example"\n  stub-host: "ns1.blocked.example@{internet.port}"'
    resolver = start_resolver(extra=stub)
    assert dig(resolver.port, "www.innocent.example").data == [ORIGIN]
    # the iterator looked ns1.blocked.example up for itself; no client gets that from the cache
    assert dig(resolver.port, "ns1.blocked.example").status == "NXDOMAIN"
    assert dig(resolver.port, "www.innocent.example").data == [ORIGIN]


def test_unbound_hot_reload(hotline: Hotline, listed: Plugin, start_resolver) -> None:
    """A newly listed host changes its answer without a restart; a removed one resolves again."""
    resolver = start_resolver()
    port, pid = resolver.port, resolver.proc.pid
    assert dig(port, "blocked.example").status == "NXDOMAIN"

    hotline.run("add", "http://late.example/", "--scope", "domain")
    hotline.run("remove", "http://blocked.example/")
    hotline.run("publish")
    listed.install_published()

    # asking before the reload would put late.example in the iterator's cache: wait for it
    assert _wait_for(lambda: "enforcing default v2" in resolver.log_text(), timeout=10)
    assert dig(port, "late.example").status == "NXDOMAIN"
    assert dig(port, "blocked.example").data == [ORIGIN]  # synthesized answers are never cached
    assert resolver.alive and resolver.proc.pid == pid


def test_unbound_cached_answer_changes_within_cache_max_ttl(hotline: Hotline, listed: Plugin,
                                                            start_resolver) -> None:
    """A name the iterator has cached changes once the cache entry expires (cache-max-ttl)."""
    port = start_resolver(extra="  cache-max-ttl: 2").port
    assert dig(port, "cached.example").data == [ORIGIN]
    hotline.run("add", "http://cached.example/", "--scope", "domain")
    hotline.run("publish")
    listed.install_published()
    assert _wait_for(lambda: dig(port, "cached.example").status == "NXDOMAIN", timeout=10)


def _control(kind: str, folder: Path) -> tuple[str, str]:
    """Unbound's remote-control section, on a socket path or on TCP with certificates (TLS), and its address."""
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "socket":  # a path of at most 107 bytes: pytest's tmp_path keeps well under it
        path = folder / "control.sock"
        return f'  control-enable: yes\n  control-interface: "{path}"', str(path)
    require_program("unbound-control-setup")
    subprocess.run(["unbound-control-setup", "-d", str(folder)], capture_output=True, check=True, timeout=60)
    port = _free_port("127.0.0.1")
    return (f"  control-enable: yes\n  control-interface: 127.0.0.1\n  control-port: {port}\n"
            f'  server-key-file: "{folder}/unbound_server.key"\n  server-cert-file: "{folder}/unbound_server.pem"\n'
            f'  control-key-file: "{folder}/unbound_control.key"\n'
            f'  control-cert-file: "{folder}/unbound_control.pem"', f"127.0.0.1@{port}")


@pytest.mark.parametrize("kind", ["socket", "tls"])
def test_unbound_cached_name_gets_the_new_answer(hotline: Hotline, listed: Plugin, start_resolver,
                                                 tmp_path: Path, kind: str) -> None:
    """A name in Unbound's cache answers the new way soon after a new version: the module flushes the cache."""
    control, where = _control(kind, tmp_path / "control")
    resolver = start_resolver(control=control)
    port = resolver.port
    assert f"cache flush {where}" in resolver.log_text()  # found in Unbound's own config
    assert dig(port, "cached.example").data == [ORIGIN]  # now in the cache for 3600 s
    assert dig(port, "late.example").data == [ORIGIN]
    assert dig(port, "cached.example").records[0][1] > 30  # and answered from it
    # with the flush in place, our own answers are cached too (for resolver.ttl), and stay right
    assert dig(port, "pages.example").data == [PROXY]
    assert dig(port, "blocked.example").status == "NXDOMAIN"
    assert _wait_for(lambda: dig(port, "pages.example").records[0][1] < 30, timeout=3)  # from the cache
    assert dig(port, "blocked.example").status == "NXDOMAIN"
    hotline.run("add", "http://cached.example/", "--scope", "domain")
    hotline.run("add", "http://late.example/page.html", "--scope", "page")
    hotline.run("remove", "http://blocked.example/")
    hotline.run("publish")
    listed.install_published()
    assert _wait_for(lambda: dig(port, "cached.example").status == "NXDOMAIN", timeout=5, interval=0.05)
    assert _wait_for(lambda: dig(port, "late.example").data == [PROXY], timeout=5, interval=0.05)
    assert dig(port, "blocked.example").data == [ORIGIN]  # its cached NXDOMAIN went with the flush
    assert "cache flushed in" in resolver.log_text()
    assert dig(port, "good.example").data == [ORIGIN]
    assert resolver.alive
    assert "cached.example" not in resolver.log_text()  # no listed host in the log


def _current(plugin: Plugin) -> tuple[object, dict[str, bytes]]:
    """The cached state and files of the list "default", to be written back later as `sync` would."""
    cache = Cache(plugin.dir / "cache")
    state = cache.state("default")
    assert state is not None
    folder = cache.list_dir("default")
    return state, {name: (folder / name).read_bytes() for name in (state.snapshot, *state.deltas)}


def _resident_kb(pid: int) -> int:
    return int(re.search(r"^VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.M)[1])


def test_unbound_memory_flat_over_reloads(hotline: Hotline, listed: Plugin, start_resolver,
                                          tmp_path: Path) -> None:
    """Two versions in turn, each reload awaited by its answer: the resident size stays flat after a warm-up."""
    bulk = tmp_path / "bulk.txt"  # big enough that a list version kept alive per reload would show
    bulk.write_text("".join(f"http://h{i % 997}.bulk.example/p{i}.html\n" for i in range(RELOAD_LIST)))
    hotline.run("import", str(bulk))
    hotline.run("publish")
    listed.install_published()
    versions = [_current(listed)]
    hotline.run("add", "http://late.example/", "--scope", "domain")
    hotline.run("publish")
    listed.install_published()
    versions.append(_current(listed))
    resolver = start_resolver(control=_control("socket", tmp_path / "control")[0])
    cache = Cache(listed.dir / "cache")
    sizes = []
    for i in range(RELOADS):
        state, files = versions[i % 2]
        cache.write_list("default", state, files)
        want = "NOERROR" if i % 2 == 0 else "NXDOMAIN"
        assert _wait_for(lambda want=want: dig(resolver.port, "late.example").status == want, timeout=10,
                         interval=0.02), f"reload {i + 1} did not reach the answers"
        if i + 1 in (RELOADS // 4, RELOADS):
            sizes.append(_resident_kb(resolver.proc.pid))
    assert resolver.alive
    print(f"resident size over {RELOADS} reloads: {sizes[0]} kB -> {sizes[1]} kB")
    assert sizes[1] - sizes[0] < RELOAD_GROWTH_KB, f"resident size {sizes[0]} kB -> {sizes[1]} kB"
    assert resolver.log_text().count("cache flushed in") >= RELOADS - 1


RELOADS = 32              # new versions in the memory test (a quarter of them warm up)
RELOAD_LIST = 10000       # entries in its list: a version kept alive per reload adds about 170 kB
RELOAD_GROWTH_KB = 2560   # generous (clean runs grow < 100 kB); a matcher kept per reload adds ~4 MB


def test_unbound_survives_malformed_names(listed: Plugin, start_resolver) -> None:
    resolver = start_resolver()
    port = resolver.port
    huge = ".".join(["a" * 63] * 3 + ["b" * 61])
    many = ".".join(["a"] * 120) + ".example"
    for name in (huge, many, "a\\000b.good.example", "x\\.y.example", "\\255\\254\\000.example",
                 "a\\047b.example", "-.example", "%2f.example", "\\000"):
        for qtype in ("A", "AAAA", "TXT", "TYPE65"):
            answer = dig(port, name, qtype)
            assert answer.status in ("NOERROR", "NXDOMAIN", "SERVFAIL"), (name, answer)
    assert dig(port, "a\\000b.blocked.example").status == "NXDOMAIN"
    assert dig(port, "x\\.y.www.blocked.example").status == "NXDOMAIN"
    assert dig(port, "good.example").data == [ORIGIN]
    assert resolver.alive
    assert "Traceback" not in resolver.log_text() and "unexpected" not in resolver.log_text()


def test_unbound_survives_reload_signal(hotline: Hotline, listed: Plugin, start_resolver) -> None:
    """SIGHUP re-initializes the module (and the embedded interpreter on Unbound 1.17)."""
    resolver = start_resolver()
    assert dig(resolver.port, "blocked.example").status == "NXDOMAIN"
    for _ in range(2):
        resolver.signal(signal.SIGHUP)
        assert _wait_for(lambda: resolver.log_text().count("stage 1 ready") >= 2, timeout=10)
        assert _wait_for(lambda: dig(resolver.port, "blocked.example").status == "NXDOMAIN", timeout=10)
    assert dig(resolver.port, "pages.example").data == [PROXY]
    # the restarted interpreter still verifies and loads a new version
    hotline.run("add", "http://late.example/", "--scope", "domain")
    hotline.run("publish")
    listed.install_published()
    assert _wait_for(lambda: "enforcing default v2" in resolver.log_text(), timeout=10)
    assert dig(resolver.port, "late.example").status == "NXDOMAIN"
    assert resolver.alive


def test_unbound_debug_log_names_only_proxied_hosts(listed: Plugin, start_resolver) -> None:
    resolver = start_resolver(verbosity=3)
    port = resolver.port
    assert dig(port, "blocked.example").status == "NXDOMAIN"
    assert dig(port, "pages.example").data == [PROXY]
    log = _wait_for(lambda: (t := resolver.log_text()) and "sent to the proxy" in t and t)
    ours = [line for line in log.splitlines() if "blocklist:" in line]
    assert any("pages.example" in line for line in ours)
    assert not any("blocked.example" in line for line in ours)


def test_unbound_counts_reach_metrics(listed: Plugin, start_resolver) -> None:
    """Our counters land in cache_dir/metrics/ for the admin endpoint's /metrics (no URL, no host)."""
    import json

    from resolver_plugin.operations.metrics import Tally

    resolver = start_resolver()
    assert dig(resolver.port, "blocked.example").status == "NXDOMAIN"
    assert dig(resolver.port, "pages.example").data == [PROXY]
    assert dig(resolver.port, "good.example").data == [ORIGIN]
    resolver.stop()  # deinit writes the counters a last time
    files = list(Cache(listed.dir / "cache").metrics_dir.glob("*.json"))
    assert len(files) == 1
    text = files[0].read_text()
    assert "example" not in text
    tally = Tally.from_json(json.loads(text)["tally"])
    assert tally.checks[("unbound", "host")] == 3
    assert tally.blocks[("unbound", "default", "block")] == 1
    assert tally.blocks[("unbound", "default", "proxy")] == 1


def test_unbound_refuses_to_start_without_config(listed: Plugin, start_resolver, tmp_path: Path) -> None:
    resolver = start_resolver(env={"BLOCKLIST_PLUGIN_CONFIG": str(tmp_path / "missing.yaml")}, wait=False)
    with pytest.raises(AssertionError, match="exited"):
        resolver.start()
    assert "missing.yaml" in resolver.log_text()
    assert "refusing to start unfiltered" in resolver.log_text()


# -- end to end: Unbound, the proxy of stage 2 and an origin ---------------------------


class _Origin(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int]) -> None:
        self.seen: list[tuple[str, str, str | None]] = []  # host header, path, via header
        super().__init__(address, _OriginHandler)


class _OriginHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.server.seen.append((self.headers.get("Host", ""), self.path, self.headers.get("Via")))
        body = f"origin {self.headers.get('Host')}{self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


# The proxy needs a resolver of its own that is not stage 1 (else it would be sent
# to itself): in this test, a static map of the "internet" in front of getaddrinfo.
PROXY_LAUNCHER = """\
import socket
_hosts = {hosts!r}
_getaddrinfo = socket.getaddrinfo
def getaddrinfo(host, *args, **kwargs):
    if isinstance(host, str):
        host = _hosts.get(host.lower().rstrip("."), host)
    return _getaddrinfo(host, *args, **kwargs)
socket.getaddrinfo = getaddrinfo
from resolver_plugin.cli import main
main()
"""


def _http_get(address: str, port: int, host: str, path: str) -> tuple[int, str]:
    """What a browser does after DNS: connect to the resolved address, origin-form, Host header."""
    conn = http.client.HTTPConnection(address, port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": f"{host}:{port}", "User-Agent": "test-browser"})
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        conn.close()


def _https_get(address: str, port: int, host: str, path: str, cafile: Path) -> tuple[int, str]:
    """The same over HTTPS: TLS to the resolved address, naming `host` (SNI) and checking its certificate."""
    context = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection((address, port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            conn = http.client.HTTPConnection(host, port, timeout=10)
            conn.sock = tls
            conn.request("GET", path, headers={"Host": host, "User-Agent": "test-browser"})
            response = conn.getresponse()
            return response.status, response.read().decode(errors="replace")


def _resolve(dns_port: int, host: str) -> str:
    answer = dig(dns_port, host)
    assert answer.status == "NOERROR" and answer.data, (host, answer)
    return answer.data[-1]


def test_end_to_end_with_proxy(hotline: Hotline, plugin: Plugin, start_resolver, tmp_path: Path) -> None:
    _listed(hotline)
    port = _free_port(PROXY, ORIGIN)  # the same port on the proxy and the origin, as port 80 would be
    tls_port = _free_port(PROXY, ORIGIN)  # and as 443 would be
    plugin.write_config(resolver=RESOLVER, proxy={"listen": f"{PROXY}:{port}", "tls_listen": f"{PROXY}:{tls_port}",
                                                  "tls_origin_port": tls_port,
                                                  "allow_private_destinations": [f"{ORIGIN}/32"]})
    plugin.install_published()
    dns_port = start_resolver().port

    origin = _Origin((ORIGIN, port))
    threading.Thread(target=origin.serve_forever, daemon=True).start()
    cert, key = self_signed_cert(tmp_path, "pages.example", "good.example")
    tls_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls_context.load_cert_chain(cert, key)
    tls_origin = _Origin((ORIGIN, tls_port))
    tls_origin.socket = tls_context.wrap_socket(tls_origin.socket, server_side=True)
    threading.Thread(target=tls_origin.serve_forever, daemon=True).start()
    launcher = PROXY_LAUNCHER.format(hosts={h: ORIGIN for h in INTERNET_HOSTS})
    proxy = subprocess.Popen([sys.executable, "-c", launcher, "-c", str(plugin.config_path), "proxy"],
                             cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        def proxy_up() -> bool:
            assert proxy.poll() is None, proxy.stdout.read().decode(errors="replace")
            with socket.socket() as s:
                return s.connect_ex((PROXY, port)) == 0
        assert _wait_for(proxy_up, timeout=15, interval=0.1), "the proxy did not start listening"

        def tls_up() -> bool:
            with socket.socket() as s:
                return s.connect_ex((PROXY, tls_port)) == 0
        assert _wait_for(tls_up, timeout=5, interval=0.1), "the proxy's TLS listener did not open"

        # a listed page: DNS sends the browser to the proxy, which blocks it
        address = _resolve(dns_port, "pages.example")
        assert address == PROXY
        status, _body = _http_get(address, port, "pages.example", "/bad.html")
        assert status == 451, f"{status}: the proxy must take origin-form requests with a Host header"
        # another page on the same host: through the proxy to the origin
        status, body = _http_get(address, port, "pages.example", "/fine.html")
        assert (status, body) == (200, f"origin pages.example:{port}/fine.html")
        # an unlisted host: straight to the origin, never through the proxy
        address = _resolve(dns_port, "good.example")
        assert address == ORIGIN
        assert _http_get(address, port, "good.example", "/")[0] == 200
        # a domain-listed host does not resolve at all
        assert dig(dns_port, "blocked.example").status == "NXDOMAIN"
        # HTTPS to the host with listed pages: DNS sends it to the proxy, whose TLS listener
        # tunnels it by SNI to the origin (TLS end to end: the origin's certificate, no Via)
        status, body = _https_get(_resolve(dns_port, "pages.example"), tls_port, "pages.example", "/fine.html",
                                  cert)
        assert (status, body) == (200, "origin pages.example/fine.html")
        assert tls_origin.seen == [("pages.example", "/fine.html", None)]

        seen = {(h.split(":")[0], p): via for h, p, via in origin.seen}
        assert ("pages.example", "/bad.html") not in seen
        assert seen[("pages.example", "/fine.html")] is not None, "the proxy adds Via"
        assert seen[("good.example", "/")] is None, "the unlisted host went through the proxy"
    finally:
        proxy.terminate()
        try:
            proxy.wait(10)
        except subprocess.TimeoutExpired:
            proxy.kill()
            proxy.wait(5)
        for server in (origin, tls_origin):
            server.shutdown()
            server.server_close()


def test_unbound_selftest_needs_the_canary_zone_line(listed: Plugin, start_resolver) -> None:
    """Unbound answers .invalid itself (a default local-zone) before any module runs: without
    ZONE_LINE the canary never reaches our module and `selftest` says so (CRITICAL, with the
    line to add); with it, the canary's host is steered to the proxy and the control is not."""
    plain = start_resolver()
    result = plugin_cli(listed, "selftest", "--resolver", f"127.0.0.1:{plain.port}", "--json")
    doc = json.loads(result.output)
    assert result.exit_code == 2, doc
    canary = doc["probes"][0]
    assert (canary["expected"], canary["got"]) == ("blocked", "passed")
    assert canary["seen"].startswith("NXDOMAIN (Unbound answered .invalid itself?")
    assert ZONE_LINE in canary["seen"]

    resolver = start_resolver(extra=f"  {ZONE_LINE}")
    result = plugin_cli(listed, "selftest", "--resolver", f"127.0.0.1:{resolver.port}", "--json")
    doc = json.loads(result.output)
    assert result.exit_code == 0, doc
    canary, control = doc["probes"]
    assert (canary["stage"], canary["list"], canary["seen"]) == ("resolver", "default", f"NOERROR {PROXY}")
    assert control["seen"] == "NXDOMAIN" and control["got"] == "passed"  # the "internet" answered it
    assert dig(resolver.port, "blocklist-canary.invalid").status == "NXDOMAIN"
    assert "blocklist-canary" not in resolver.log_text()

    resolver.stop()
    result = plugin_cli(listed, "selftest", "--resolver", f"127.0.0.1:{resolver.port}", "--json")
    assert result.exit_code == 2
    assert "unreachable" in json.loads(result.output)["summary"]
