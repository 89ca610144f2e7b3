"""The Squid helper protocol over a real `blocklist-plugin squid-helper` subprocess.

What Squid sends (squid.conf.documented, external_acl_type): `[channel-ID ]` then
the URL-escaped FORMAT values, here `%URI` followed by `%DATA` ("-"). What we
answer: `[channel-ID ]OK|ERR|BH [message="..." log="..."]`, one line per line.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.squid import ANSWER, OK_DEFAULT, Helper

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def published(hotline, plugin):
    hotline.run("add", "http://bad.example/page.html", "http://bad.example/a%20b.html",
                "http://bad.example/caf%C3%A9/")
    hotline.run("add", "--scope", "domain", "http://evil.test/")
    hotline.run("publish")
    plugin.write_config()
    plugin.install_published()
    return plugin


@pytest.fixture
def helper(published, tmp_path):
    running = Helper(published.config_path, tmp_path)
    yield running
    assert running.close() == 0
    assert "Traceback" not in running.stderr


def test_listed_ok_unlisted_err_without_channel_ids(helper: Helper) -> None:
    assert helper.ask(b"http://bad.example/page.html -") == OK_DEFAULT
    assert helper.ask(b"http://bad.example/page.html") == OK_DEFAULT
    assert helper.ask(b"http://BAD.example:80/./page.html?any=query -") == OK_DEFAULT
    assert helper.ask(b"http://www.evil.test/anything -") == OK_DEFAULT
    assert helper.ask(b"http://bad.example/other.html -") == b"ERR"
    assert helper.ask(b"https://good.example/ -") == b"ERR"


def test_channel_ids_are_echoed_and_a_batch_is_answered_in_order(helper: Helper) -> None:
    urls = [b"http://bad.example/page.html", b"http://good.example/", b"http://evil.test/x"] * 30
    helper.send(b"".join(b"%d %s -\n" % (i, url) for i, url in enumerate(urls)))
    answers = helper.read_lines(len(urls))
    for i, (url, answer) in enumerate(zip(urls, answers, strict=True)):
        expected = b"ERR" if b"good" in url else OK_DEFAULT
        assert answer == b"%d %s" % (i, expected)


def test_squid_escaped_values_are_unescaped_once(helper: Helper) -> None:
    # Squid escapes %URI with rfc1738 rules, '%' included: the URL a%20b.html arrives as a%2520b.html.
    assert helper.ask(b"7 http://bad.example/a%2520b.html -") == b"7 " + OK_DEFAULT
    assert helper.ask(b"8 http://bad.example/caf%25C3%25A9/ -") == b"8 " + OK_DEFAULT
    assert helper.ask(b"9 http://bad.example/page%252Ehtml -") == b"9 " + OK_DEFAULT
    assert helper.ask(b"10 http://bad.example/a%2520c.html -") == b"10 ERR"


def test_connect_authority_is_checked_by_host(helper: Helper) -> None:
    assert helper.ask(b"1 evil.test:443 -") == b"1 " + OK_DEFAULT
    assert helper.ask(b"2 www.evil.test:8443 -") == b"2 " + OK_DEFAULT
    assert helper.ask(b"3 bad.example:443 -") == b"3 ERR"  # only pages listed: a tunnel cannot be judged
    assert helper.ask(b"4 [2001:db8::1]:443 -") == b"4 ERR"


def test_other_schemes_are_checked_as_the_proxy_checks_them(helper: Helper) -> None:
    """The red team's way around a host listed whole: ws://, wss:// and ftp:// URLs of it (Squid
    proxies ftp, and a WebSocket URL is its HTTP upgrade request)."""
    for i, url in enumerate([b"ws://evil.test/socket", b"wss://www.evil.test/socket?x=1", b"WS://EVIL.test/",
                             b"ftp://evil.test/file", b"ftp://user:pw@www.evil.test:21/pub/f.txt",
                             b"FTP://a.b.evil.test/", b"gopher://evil.test/1", b"whois://evil.test/",
                             b"ftp://evil.test%2Fx@www.evil.test/"]):
        assert helper.ask(b"%d %s -" % (i, url)) == b"%d %s" % (i, OK_DEFAULT), url
    # ws and wss are http and https: page entries count
    assert helper.ask(b"20 ws://bad.example/page.html -") == b"20 " + OK_DEFAULT
    assert helper.ask(b"21 wss://bad.example/a%2520b.html -") == b"21 " + OK_DEFAULT
    assert helper.ask(b"22 ws://bad.example/other.html -") == b"22 ERR"
    # another scheme names a host, not a web page: only a host listed whole blocks it
    assert helper.ask(b"23 ftp://bad.example/page.html -") == b"23 ERR"
    assert helper.ask(b"24 ftp://good.example/ -") == b"24 ERR"
    assert helper.ask(b"25 ftp://[::1/ -") == b'25 BH message="invalid URL"'


def test_malformed_lines_get_bh_and_the_helper_goes_on(helper: Helper) -> None:
    assert helper.ask(b"") == b'BH message="empty request"'
    assert helper.ask(b"3   ") == b'3 BH message="empty request"'
    assert helper.ask(b"4 " + b"x" * 200_000 + b" -") == b'4 BH message="request line too long"'
    assert helper.ask(b"5 http://[::1/ -") == b'5 BH message="invalid URL"'
    assert helper.ask(b"6 http://" + b"a" * 9000 + b".example/ -") == b'6 BH message="invalid URL"'
    for junk in (b"\x00\x01\x02", b"6 \xff\xfe%zz%%%", b"\r", b"7 %", b"\x1b[31m"):
        assert ANSWER.fullmatch(helper.ask(junk)), junk
    assert helper.ask(b"8 http://bad.example/page.html -") == b"8 " + OK_DEFAULT


def test_every_url_of_a_list_gets_the_same_answer(helper: Helper) -> None:
    answers = {helper.ask(url) for url in (b"http://bad.example/page.html", b"http://evil.test/",
                                           b"http://a.b.evil.test/x?y", b"http://bad.example/a%2520b.html")}
    assert answers == {OK_DEFAULT}


def test_new_publish_is_enforced_without_restart(helper: Helper, hotline, published) -> None:
    assert helper.ask(b"1 http://later.example/new.html -") == b"1 ERR"
    hotline.run("add", "http://later.example/new.html")
    hotline.run("publish")
    published.install_published()
    deadline = time.monotonic() + 10
    answer = b""
    while time.monotonic() < deadline:
        answer = helper.ask(b"2 http://later.example/new.html -")
        if answer.startswith(b"2 OK"):
            break
        time.sleep(0.2)
    assert answer == b'2 OK message="blocked by list default" log="blocklist:default:v2"'
    assert helper.proc.poll() is None


def test_fail_closed_without_a_cached_list_blocks(plugin, tmp_path: Path) -> None:
    plugin.write_config(fail_closed=True)
    helper = Helper(plugin.config_path, tmp_path)
    try:
        assert helper.ask(b"1 http://anything.example/ -").startswith(b'1 OK message="blocked by list (no list')
        assert helper.ask(b"2 anything.example:443 -").startswith(b"2 OK ")
    finally:
        assert helper.close() == 0


def test_helper_does_not_import_the_event_loop_stack() -> None:
    code = ("import sys, resolver_plugin.enforcement.squid_helper; "
            "print(sorted(m for m in ('aiohttp', 'asyncio', 'yarl') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)},
                         timeout=30, check=True).stdout
    assert out.strip() == b"[]"


def test_in_process_answers(published) -> None:
    """The same protocol without a subprocess: SquidHelper.answer and serve() on byte streams."""
    import io

    from resolver_plugin.cache import LiveMatcher
    from resolver_plugin.enforcement.squid_helper import SquidHelper, serve

    helper = SquidHelper(LiveMatcher(published.config()))
    assert helper.answer(b"12 http://bad.example/page.html -") == b"12 " + OK_DEFAULT
    out = io.BytesIO()
    serve(helper, io.BytesIO(b"1 http://good.example/ -\r\n2 http://evil.test/\n3 http://bad.example/page.html"), out)
    assert out.getvalue().split(b"\n") == [b"1 ERR", b"2 " + OK_DEFAULT, b"3 " + OK_DEFAULT, b""]


def test_fail_closed_is_a_state_of_the_verdict(plugin) -> None:
    """No list name is compared: the verdicts say fail_closed, and users see the same label as before."""
    from blocklist.core.matcher import HostAction
    from resolver_plugin.cache import LiveMatcher
    from resolver_plugin.enforcement.squid_helper import SquidHelper

    plugin.write_config(fail_closed=True)
    live = LiveMatcher(plugin.config())
    verdict, host = live.check("http://anything.example/"), live.check_host("anything.example")
    assert verdict.blocked and verdict.fail_closed and verdict.list == "(no list loaded: fail-closed)"
    assert host.fail_closed and host.action is HostAction.PROXY
    expected = (b'OK message="blocked by list (no list loaded: fail-closed)" '
                b'log="blocklist:(no list loaded: fail-closed)"')
    helper = SquidHelper(live)
    assert helper.answer(b"http://anything.example/ -") == expected
    assert helper.answer(b"anything.example:443 -") == expected


_PIECES = st.sampled_from([b"", b"7 ", b"1234567890 ", b"12345678901 ", b" ", b"12  "])
_URLS = st.sampled_from([b"http://", b"https://", b"HTTP://", b"ftp://", b""])
_AUTHORITIES = st.sampled_from([b"good.example", b"bad.example", b"evil.test", b"www.evil.test", b"good.example:8080",
                                b"good.example:99999", b"GOOD.example", b"good%2eexample", b"a@good.example",
                                b"good.example.", b"[::1]", b"10.1.2.3", b"good.example:"])
_RESTS = st.lists(st.sampled_from([b"/", b"/page.html", b"/a%20b.html", b"%2F", b"?q=1", b"#f", b"/caf\xc3\xa9/",
                                   b"/%00", b" -", b"\t-", b"\x0b", b"\r", b" ", b"/x y", b"%", b":80"]), max_size=4)


@given(st.lists(st.tuples(_PIECES, _URLS, _AUTHORITIES, _RESTS), min_size=1, max_size=30))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_answers_from_the_matchers_memory_are_those_of_a_check(published, parts) -> None:
    """A line whose authority the matcher remembers as allowed is answered without a check:
    for any line, the answer is the one the full check gives (the same LiveMatcher behind both)."""
    from resolver_plugin.cache import LiveMatcher
    from resolver_plugin.enforcement.squid_helper import SquidHelper

    live = LiveMatcher(published.config())
    checked, quick = SquidHelper(live), SquidHelper(live)
    for channel, scheme, authority, rest in parts:
        line = channel + scheme + authority + b"".join(rest)
        expected = checked.answer(line)  # no batch started: every line is checked
        quick.start_batch()
        assert quick.answer(line) == expected, line


def test_a_remembered_authority_is_answered_without_a_check_and_a_listed_one_with(published, monkeypatch) -> None:
    from resolver_plugin.cache import LiveMatcher
    from resolver_plugin.enforcement.squid_helper import SquidHelper

    helper = SquidHelper(LiveMatcher(published.config()))
    checks: list[bytes] = []
    check = helper._check
    monkeypatch.setattr(helper, "_check", lambda line: checks.append(line) or check(line))
    helper.start_batch()
    assert helper.answer(b"3 http://good.example/a -") == b"3 ERR"
    assert helper.answer(b"4 http://good.example/b?c -") == b"4 ERR"
    assert helper.answer(b"http://bad.example/page.html -") == OK_DEFAULT
    assert helper.answer(b"http://bad.example/page.html -") == OK_DEFAULT
    assert checks == [b"3 http://good.example/a -", b"http://bad.example/page.html -",
                      b"http://bad.example/page.html -"]
