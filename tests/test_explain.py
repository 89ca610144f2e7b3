"""`blocklist-plugin check --explain`: which list, version, scope, reach and stage decided, never an entry."""

from __future__ import annotations

import json
import random

from pybloom_live import BloomFilter

from blocklist.core.digests import Reach, Scope
from blocklist.core.explain import explain
from blocklist.core.matcher import HostAction, Matcher
from tests.conftest import Hotline, Plugin
from tests.support.artifacts import make_filter
from tests.support.plugin import plugin_cli

FIRST = [("http://evil.example/", Scope.DOMAIN), ("http://site.example/dir/", Scope.FOLDER),
         ("http://site.example/p.html", Scope.PAGE, Reach.EXACT)]
SECOND = [("http://www.site.example/dir/x.html", Scope.PAGE, Reach.SUBDOMAINS)]


def test_explanations_agree_with_the_verdicts() -> None:
    m = Matcher([make_filter(FIRST), make_filter(SECOND, name="second", bloom=False)])
    rng = random.Random(3)
    hosts = ["evil.example", "www.evil.example", "site.example", "www.site.example", "a.site.example",
             "good.example", "10.0.0.1"]
    paths = ["/", "/dir/", "/dir/x.html", "/dir/x.html?q=1", "/p.html", "/other", "/x%3F/../dir/x.html"]
    for _ in range(300):
        url = f"http://{rng.choice(hosts)}{rng.choice(paths)}"
        found = explain(m, url)
        assert found.verdict == m.check(url), url
        assert found.stage1 is m.check_host(url.split("/")[2]).action
        for x in found.lists:
            if x.verdict is not None:
                assert x.decided_by is not None and x.decided_by.confirmed, url


def test_what_an_explanation_says() -> None:
    m = Matcher([make_filter(FIRST), make_filter(SECOND, name="second", bloom=False)])
    doc = explain(m, "http://q.www.site.example/dir/x.html").as_json()
    assert (doc["list"], doc["scope"], doc["reach"], doc["stage"], doc["stage1"]) == (
        "second", "page", "subdomains", "entry", "proxy")
    first, second = doc["lists"]
    assert first["blocked"] is False and first["stage1"] == "pass"
    assert second["bloom"] == "found in the exact digests (no Bloom filter)" and len(second["digest"]) == 16
    doc = explain(m, "http://x.evil.example/a").as_json()
    assert (doc["scope"], doc["stage"], doc["stage1"]) == ("domain", "host", "block")
    assert doc["lists"][0]["bloom"] == "a Bloom filter hit, confirmed by the exact digests"
    lines = explain(m, "http://www.site.example/dir/a/b").lines()
    assert lines[0] == ("blocked by iwf v1: folder entry, on the host and its www. twin, decided at the entry "
                        "stage (stage 2: the proxy or Squid checks the URL)")
    assert explain(m, "http://site.example/nothing").lines()[:2] == [
        "allowed: no list has an entry that covers this URL", "stage 1 (DNS) for this host: proxy"]


def test_a_refuted_bloom_hit_is_shown_and_never_blocks() -> None:
    f = make_filter([("http://site.example/bad.html", Scope.PAGE)])
    saturated = BloomFilter(capacity=10, error_rate=0.5)
    saturated.bitarray.setall(True)
    f.entry_bloom = f.host_bloom = saturated
    found = explain(Matcher([f]), "http://site.example/good.html")
    doc = found.as_json()
    assert not found.verdict.blocked and doc["lists"][0]["bloom_refuted"] > 0
    assert doc["lists"][0]["bloom_hits"] > doc["lists"][0]["bloom_refuted"]  # the host's own digests held
    assert found.stage1 is HostAction.PROXY


def test_check_explain_on_the_node(hotline: Hotline, plugin: Plugin) -> None:
    hotline.run("add", "--scope", "folder", "http://secret-host.example/secret-dir/")
    hotline.run("add", "--scope", "domain", "http://whole-site.example/")
    hotline.run("publish")
    plugin.write_config()
    plugin.install_published()
    result = plugin_cli(plugin, "check", "--explain", "http://www.secret-host.example/secret-dir/x.html")
    assert result.exit_code == 0
    assert result.output.startswith("blocked by default v1: folder entry, on the host and its www. twin, "
                                    "decided at the entry stage")
    assert "stage 1 (DNS) for this host: proxy" in result.output and "confirmed by the exact digests" in result.output
    assert "secret" not in result.output  # no plaintext: not even the part of the URL that is listed
    result = plugin_cli(plugin, "check", "--explain", "--json", "http://a.whole-site.example/x")
    doc = json.loads(result.output)
    assert result.exit_code == 0 and (doc["scope"], doc["stage"], doc["stage1"]) == ("domain", "host", "block")
    assert doc["enforced"] == {"default": 1} and "whole-site" not in result.output
    result = plugin_cli(plugin, "check", "--explain", "http://good.example/")
    assert result.exit_code == 1 and result.output.startswith("allowed")
    assert plugin_cli(plugin, "check", "--explain", "ftp://x.example/").exit_code == 2


def test_check_explain_when_failing_closed(plugin: Plugin) -> None:
    plugin.write_config(fail_closed=True)
    result = plugin_cli(plugin, "check", "--explain", "--json", "http://any.example/")
    assert result.exit_code == 0 and json.loads(result.output)["stage"] == "fail-closed"
