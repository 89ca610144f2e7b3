"""Local policy (plugin.yaml `local.allow`, `local.block`) and monitored lists, in every stage.

Stages in process (the Squid helper's `answer`, Unbound's `decide`, the proxy's
`tunnel_verdict` that its TLS listener and CONNECT ask) and through the real
programs: `blocklist-plugin proxy`, Squid with our helper, Unbound with our module.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest

from blocklist.core.errors import ConfigError
from blocklist.core.matcher import HostAction
from resolver_plugin.cache import LiveMatcher
from resolver_plugin.config import load_config
from resolver_plugin.enforcement.proxy.server import ProxyServer
from resolver_plugin.enforcement.squid_helper import SquidHelper
from resolver_plugin.enforcement.unbound_module import RR_A, Reply, _Stage, decide
from resolver_plugin.operations import metrics
from resolver_plugin.operations.status import gather, render
from tests.conftest import Hotline, Plugin
from tests.support.proxy import raw_exchange, start_proxy
from tests.test_unbound import ORIGIN, PROXY, RESOLVER, dig, internet, start_resolver  # noqa: F401

ALLOW = {"url": "http://blocked.example/", "scope": "domain"}
BLOCK = {"url": "http://local-order.example/", "scope": "domain"}


def _publish(hotline: Hotline) -> None:
    """default: blocked.example whole, a page of pages.example; trial: trial.example whole."""
    hotline.run("add", "--scope", "domain", "http://blocked.example/")
    hotline.run("add", "http://pages.example/bad.html")
    hotline.run("add", "--scope", "domain", "http://trial.example/", "--list", "trial", "--create-list")
    hotline.run("publish")


def _live(hotline: Hotline, plugin: Plugin, component: str = "check", **extra: object) -> LiveMatcher:
    _publish(hotline)
    plugin.write_config(**{"lists": ("default", "trial"), "resolver": RESOLVER, **extra})
    plugin.install_published()
    return LiveMatcher(plugin.config(), component=component)


def test_allow_unblocks_and_block_blocks_for_urls_and_hosts(hotline: Hotline, plugin: Plugin) -> None:
    live = _live(hotline, plugin, local={"allow": [ALLOW], "block": [BLOCK]})
    assert not live.check("http://www.blocked.example/x").blocked
    assert live.check_host("blocked.example").action is HostAction.PASS
    verdict = live.check("http://a.local-order.example/")
    assert verdict.blocked and verdict.list == "local"
    assert live.check_host("local-order.example").action is HostAction.BLOCK
    assert live.check("http://pages.example/bad.html").blocked  # the lists still apply elsewhere
    assert live.local_counts == {("check", "allow"): 2, ("check", "block"): 2}


def test_allow_beats_block_and_a_local_page_block_steers_stage_one(hotline: Hotline, plugin: Plugin) -> None:
    local = {"allow": [{"url": "http://both.example/", "scope": "domain"}],
             "block": [{"url": "http://both.example/", "scope": "domain"},
                       {"url": "http://court.example/order/", "scope": "folder"}]}
    live = _live(hotline, plugin, local=local)
    assert not live.check("http://both.example/").blocked
    assert live.check_host("both.example").action is HostAction.PASS
    assert live.check("http://court.example/order/x.html").blocked
    assert not live.check("http://court.example/other.html").blocked
    assert live.check_host("court.example").action is HostAction.PROXY


def test_monitored_list_blocks_nothing_and_is_counted(hotline: Hotline, plugin: Plugin,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    _publish(hotline)
    plugin.write_config(lists=["default", {"name": "trial", "mode": "monitor"}], resolver=RESOLVER)
    plugin.install_published()
    live = LiveMatcher(plugin.config(), component="squid")
    with caplog.at_level(logging.INFO, logger="blocklist.plugin.cache"):
        assert not live.check("http://www.trial.example/page").blocked
        assert live.check_host("trial.example").action is HostAction.PASS
    assert live.check("http://blocked.example/").blocked
    assert live.monitor_counts == {("squid", "trial"): 2}
    assert "list=trial would have blocked scope=domain stage=squid" in caplog.text
    assert "trial.example" not in caplog.text


def test_squid_helper_applies_the_policy(hotline: Hotline, plugin: Plugin) -> None:
    live = _live(hotline, plugin, "squid", lists=["default", {"name": "trial", "mode": "monitor"}],
                 local={"allow": [ALLOW], "block": [BLOCK]})
    helper = SquidHelper(live)
    assert helper.answer(b"0 http://blocked.example/x -") == b"0 ERR"
    assert helper.answer(b"1 blocked.example:443 -") == b"1 ERR"
    assert helper.answer(b"http://local-order.example/ -").startswith(b'OK message="blocked by list local"')
    assert helper.answer(b"www.local-order.example:443 -").startswith(b"OK ")
    assert helper.answer(b"http://trial.example/ -") == b"ERR"
    assert helper.answer(b"http://pages.example/bad.html -").startswith(b"OK ")


def test_squid_helper_batches_never_answer_past_the_policy_from_the_matchers_memory(hotline: Hotline,
                                                                                   plugin: Plugin) -> None:
    """The lists alone allow local-order.example, and the matcher remembers that; the local block
    still answers every line of it, batch after batch, and every one is counted."""
    live = _live(hotline, plugin, "squid", local={"block": [BLOCK]})
    assert not live.matcher.check("http://local-order.example/").blocked  # remembered as allowed
    assert live.remembered() is None
    helper = SquidHelper(live)
    for batch in range(3):
        helper.start_batch()
        assert helper.answer(b"%d http://local-order.example/p -" % batch).startswith(b"%d OK " % batch)
        assert helper.answer(b"http://other.example/ -") == b"ERR"
    assert live.local_counts[("squid", "block")] == 3


def test_unbound_decide_applies_the_policy(hotline: Hotline, plugin: Plugin) -> None:
    local = {"allow": [ALLOW], "block": [BLOCK, {"url": "http://court.example/order/", "scope": "folder"}]}
    live = _live(hotline, plugin, "unbound", lists=["default", {"name": "trial", "mode": "monitor"}], local=local)
    assert decide(live, "www.blocked.example.", RR_A).reply is Reply.PASS
    assert decide(live, "x.local-order.example.", RR_A).reply is Reply.NXDOMAIN
    assert decide(live, "court.example.", RR_A).address == PROXY
    assert decide(live, "trial.example.", RR_A).reply is Reply.PASS
    assert live.monitor_counts[("unbound", "trial")] == 1


def test_unbound_quick_path_does_not_skip_local_blocks(hotline: Hotline, plugin: Plugin) -> None:
    local = {"block": [BLOCK, {"url": "http://court.example/order/", "scope": "folder"}]}
    live = _live(hotline, plugin, "unbound", lists=["default", {"name": "trial", "mode": "monitor"}], local=local)
    stage = _Stage(live.config, live)
    assert not stage.quick_pass(b"\x0blocal-order\x07example\x00")
    assert not stage.quick_pass(b"\x03www\x0blocal-order\x07example\x00")
    assert not stage.quick_pass(b"\x05court\x07example\x00")
    assert not stage.quick_pass(b"\x05trial\x07example\x00")  # monitored: decide() counts it
    assert stage.quick_pass(b"\x04good\x07example\x00")


def test_proxy_tunnels_follow_the_policy(hotline: Hotline, plugin: Plugin) -> None:
    """What CONNECT and the TLS listener (tls.sni_tunnel) ask: ProxyServer.tunnel_verdict."""
    live = _live(hotline, plugin, "proxy", lists=["default", {"name": "trial", "mode": "monitor"}],
                 local={"allow": [ALLOW], "block": [BLOCK]})
    server = ProxyServer(live.config, live)
    allowed, local, monitored = (server.tunnel_verdict(h) for h in ("blocked.example", "local-order.example",
                                                                    "trial.example"))
    assert allowed is not None and allowed.action is HostAction.PASS
    assert local is not None and local.action is HostAction.BLOCK and local.list == "local"
    assert monitored is not None and monitored.action is HostAction.PASS


def test_no_policy_means_no_policy_object(installed: Plugin) -> None:
    live = LiveMatcher(installed.config(), check_interval=math.inf)
    assert live.policy is None
    assert live.check("http://bad.example/a.html").blocked


@pytest.mark.parametrize("local, line, message", [
    ({"allow": [{"url": "http://ok.example/", "scope": "domain"}, {"url": "http://x.example/", "scope": "site"}]},
     None, "local.allow[1].scope must be page, folder or domain"),
    ({"block": [{"url": "ftp:////", "scope": "page"}]}, None, "local.block[0].url"),
    ({"block": [{"url": "http://a.example/", "scop": "page"}]}, None, "unknown key local.block[0].scop"),
    ({"deny": []}, None, "unknown key local.deny"),
    ({"allow": [{"url": "http://a.example/x", "scope": "domain"}]}, None, "a domain entry names a host only"),
])
def test_config_errors_name_the_line(plugin: Plugin, local: dict, line: int | None, message: str) -> None:
    path = plugin.write_config(local=local)
    text = path.read_text().splitlines()
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    where, _, rest = str(caught.value).partition(": ")
    number = int(where.rpartition(":")[2])
    assert where.startswith(str(path)) and message in rest
    assert 1 <= number <= len(text) and any(k in text[number - 1] for k in ("url", "scope", "scop", "deny", "- "))


def test_list_mode_errors_name_the_line(plugin: Plugin) -> None:
    path = plugin.write_config(lists=["default", {"name": "trial", "mode": "watch"}])
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    line = int(str(caught.value).split(": ")[0].rpartition(":")[2])
    assert "lists[1].mode must be enforce or monitor" in str(caught.value)
    assert "trial" in path.read_text().splitlines()[line - 1] or "watch" in path.read_text().splitlines()[line - 1]


def test_status_shows_local_policy_and_monitor_hits(hotline: Hotline, plugin: Plugin) -> None:
    live = _live(hotline, plugin, "proxy", lists=["default", {"name": "trial", "mode": "monitor"}],
                 local={"allow": [ALLOW], "block": [BLOCK]})
    metrics.watch(live)
    assert not live.check("http://trial.example/").blocked
    assert live.check("http://local-order.example/").blocked
    report = gather(live.config)
    doc = report.as_json()
    assert doc["local"]["entries"] == {"allow": 1, "block": 1}
    assert doc["local"]["decisions"]["block"] >= 1 and doc["monitor_hits"]["trial"] >= 1
    assert [r["mode"] for r in doc["lists"]] == ["enforce", "monitor"]
    text = render(report)
    assert "local policy: 1 allow, 1 block entries" in text and "trial would have blocked" in text
    assert "trial (monitor)" in text and "local-order" not in text


# -- the real programs -----------------------------------------------------------------


async def test_proxy_process_applies_the_policy(hotline: Hotline, plugin: Plugin, origin: str,
                                                tmp_path: Path) -> None:
    hotline.run("add", f"http://{origin}/blocked.html")
    hotline.run("add", f"http://{origin}/trial.html", "--list", "trial", "--create-list")
    hotline.run("publish")
    plugin.extra.update(lists=["default", {"name": "trial", "mode": "monitor"}],
                        local={"allow": [{"url": f"http://{origin}/blocked.html"}],
                               "block": [{"url": f"http://{origin}/order/", "scope": "folder"}]})
    plugin.write_config()
    plugin.install_published()
    proxy = start_proxy(plugin, tmp_path)
    try:
        answers = [await raw_exchange(proxy.port, f"GET http://{origin}{path} HTTP/1.1\r\nHost: {origin}\r\n"
                                      "Connection: close\r\n\r\n".encode())
                   for path in ("/blocked.html", "/order/x.html", "/trial.html")]
    finally:
        proxy.stop()
    assert answers[0].startswith(b"HTTP/1.1 200") and b"origin content at /blocked.html" in answers[0]
    assert answers[1].startswith(b"HTTP/1.1 451")
    assert answers[2].startswith(b"HTTP/1.1 200")
    assert b"/order/" not in proxy.stderr.read_bytes() and b"/order/" not in proxy.access_log.read_bytes()


def test_unbound_process_applies_the_policy(hotline: Hotline, plugin: Plugin, start_resolver) -> None:  # noqa: F811
    hotline.run("add", "--scope", "domain", "http://blocked.example/")
    hotline.run("add", "http://pages.example/bad.html")
    hotline.run("add", "--scope", "domain", "http://cached.example/", "--list", "trial", "--create-list")
    hotline.run("publish")
    plugin.write_config(lists=["default", {"name": "trial", "mode": "monitor"}], resolver=RESOLVER,
                        local={"allow": [ALLOW, {"url": "http://pages.example/", "scope": "domain"}],
                               "block": [{"url": "http://good.example/", "scope": "domain"},
                                         {"url": "http://late.example/x/", "scope": "folder"}]})
    plugin.install_published()
    port = start_resolver().port
    assert dig(port, "www.blocked.example").data == [ORIGIN]  # listed whole, allowed here
    assert dig(port, "pages.example").data == [ORIGIN]         # carries a listed page, allowed whole
    assert dig(port, "good.example").status == "NXDOMAIN"      # the ISP's own domain block
    assert dig(port, "late.example").data == [PROXY]           # the ISP's own folder block: to the proxy
    assert dig(port, "cached.example").data == [ORIGIN]        # monitored: never blocks
