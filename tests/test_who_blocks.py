"""Who blocks: a list's title, legal basis and appeal URL, from `blocklist lists set` to the 451 page.

The hotline stores and audits them, publish signs them in the manifest, sync keeps
them from the verified manifest, and the proxy's block page and Link header show the
text of the list that blocked: the most specific entry's list when several block.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from blocklist.core.digests import Scope
from blocklist.core.errors import FormatError
from blocklist.core.format.listmeta import ListMeta, meta_from_json, meta_problem
from blocklist.core.format.manifest import read_manifest, write_manifest
from blocklist.core.matcher import Matcher
from resolver_plugin.cache import Cache, LiveMatcher
from tests.conftest import Hotline, Plugin
from tests.support.artifacts import KEY, KEYS, make_filter, manifest
from tests.support.proxy import raw_exchange, start_proxy

TITLE = 'Hotline <script>alert("x")</script> & Co'


def test_the_manifest_carries_meta_signed_and_bounded() -> None:
    meta = ListMeta(TITLE, "Act 1978, s. 1", "https://hotline.example/appeal?x=1&y=2")
    m = manifest()
    m = replace(m, lists={"iwf": replace(m.lists["iwf"], meta=meta)})
    data = write_manifest(m, [KEY])
    assert json.loads(data)["signed"]["lists"]["iwf"]["meta"] == meta.as_json()
    assert read_manifest(data, KEYS).lists["iwf"].meta == meta
    assert "meta" not in json.loads(write_manifest(manifest(), [KEY]))["signed"]["lists"]["iwf"]  # optional
    assert read_manifest(write_manifest(manifest(), [KEY]), KEYS).lists["iwf"].meta == ListMeta()
    for bad in ({"title": "x" * 201}, {"title": "two\nlines"}, {"legal_basis": "\u202eevil"},
                {"appeal_url": "javascript:alert(1)"}, {"appeal_url": 'https://a.example/"><b>'},
                {"appeal_url": "https://a.example/ space"}, {"appeal_url": "https://é.example/"},
                {"colour": "red"}, {"title": 7}):
        with pytest.raises(FormatError):
            meta_from_json(bad, "test")
    assert meta_problem(ListMeta(appeal_url="http://[::1]:8080/a?b=c#d")) is None


def test_lists_set_is_stored_audited_and_bounded(hotline: Hotline) -> None:
    hotline.run("lists", "set", "default", "--title", "IWF", "--appeal-url", "https://iwf.example/appeal")
    hotline.run("lists", "set", "default", "--legal-basis", "Protection of Children Act 1978")
    rows = {r["list"]: r for r in json.loads(hotline.run("lists", "--json").output)}
    assert rows["default"]["meta"] == {"title": "IWF", "legal_basis": "Protection of Children Act 1978",
                                       "appeal_url": "https://iwf.example/appeal"}
    record = json.loads(hotline.run("log", "--json").output)[-1]
    assert record["action"] == "set-list-meta" and record["detail"]["to"]["title"] == "IWF"
    bad = hotline.run("lists", "set", "default", "--appeal-url", "ftp://x.example/", ok=None)
    assert bad.exit_code == 3 and "appeal_url must be an absolute http(s) URL" in bad.output
    assert hotline.run("lists", "set", "default", ok=None).exit_code == 2
    hotline.run("lists", "set", "default", "--title", "")  # clears one field
    rows = {r["list"]: r for r in json.loads(hotline.run("lists", "--json").output)}
    assert "title" not in rows["default"]["meta"] and rows["default"]["meta"]["legal_basis"]
    assert "Example" in hotline.run("lists", "set", "--help").output


def test_metadata_alone_is_published_and_kept_by_sync(hotline: Hotline, plugin: Plugin) -> None:
    hotline.run("add", "http://bad.example/a.html")
    hotline.run("publish")
    plugin.install_published()
    live = LiveMatcher(plugin.config())
    assert live.list_meta("default") == ListMeta()
    hotline.run("lists", "set", "default", "--title", "IWF")
    result = hotline.run("publish")
    assert "default: metadata published" in result.output
    plugin.install_published()
    assert live.maybe_reload() is False  # the lists did not change: only their metadata was read again
    assert live.list_meta("default") == ListMeta("IWF")
    assert live.block_message("default") == "blocked by list default: IWF"
    assert json.loads((plugin.config().cache_dir / "meta.json").read_text()) == {"lists": {"default": {"title": "IWF"}}}
    (plugin.config().cache_dir / "meta.json").write_text('{"lists": {"default": {"title": "a\\nb"}}}')
    assert Cache(plugin.config().cache_dir).list_meta() == {}  # refused as the manifest would be
    assert "nothing changed" in hotline.run("publish").output


def test_several_lists_name_the_most_specific_entry() -> None:
    """Page over folder over domain; a tie goes to the first list. A list's own answer is the first
    its lookup finds: a domain entry at the host stage, before its page and folder entries."""
    first = make_filter([("http://who.example/", Scope.DOMAIN), ("http://tie.example/f/", Scope.FOLDER),
                         ("http://tie.example/t.html", Scope.PAGE)], name="first")
    second = make_filter([("http://who.example/f/", Scope.FOLDER), ("http://who.example/f/p.html", Scope.PAGE),
                          ("http://tie.example/f/", Scope.FOLDER), ("http://tie.example/t.html", Scope.PAGE)],
                         name="second")
    m = Matcher([first, second])
    assert m.check("http://who.example/f/p.html").list == "second"   # page over domain
    assert m.check("http://who.example/f/x").list == "second"        # folder over domain
    assert m.check("http://who.example/other").list == "first"       # only the domain entry
    assert m.check("http://tie.example/f/x").list == "first"         # ties: list order
    assert m.check("http://www.tie.example/t.html").list == "first"
    assert Matcher([second, first]).check("http://tie.example/t.html").list == "second"


@pytest.fixture
def two_lists(hotline: Hotline, plugin: Plugin) -> Plugin:
    hotline.run("lists", "--create", "second")
    hotline.run("add", "--scope", "domain", "http://who.test/")
    hotline.run("add", "--list", "second", "http://who.test/page.html", "http://plain.test/x.html")
    hotline.run("lists", "set", "default", "--title", TITLE, "--legal-basis", "Court order 12/2024",
                "--appeal-url", "https://first.example/appeal?a=1&b=2")
    hotline.run("lists", "set", "second", "--title", "Second list", "--appeal-url", "https://second.example/")
    hotline.run("publish")
    plugin.extra["lists"] = ["default", "second"]  # in every config the test writes
    plugin.write_config()
    plugin.install_published()
    return plugin


async def test_the_451_page_shows_the_blocking_list_and_links_its_appeal(two_lists: Plugin, tmp_path) -> None:
    running = start_proxy(two_lists, tmp_path, appeal_url="")
    try:
        answer = await raw_exchange(running.port, b"GET http://who.test/any.html HTTP/1.1\r\nHost: who.test\r\n\r\n")
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 451 ")
        assert b'\r\nLink: <https://first.example/appeal?a=1&b=2>; rel="blocked-by"' in head
        text = body.decode()
        assert "Hotline &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; Co" in text and "<script>" not in text
        assert "Legal basis: Court order 12/2024" in text
        assert 'href="https://first.example/appeal?a=1&amp;b=2"' in text and "any.html" not in text

        # both lists block it: the page entry of "second" is more specific than the domain of "default"
        answer = await raw_exchange(running.port, b"GET http://www.who.test/page.html HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _, body = answer.partition(b"\r\n\r\n")
        assert b'Link: <https://second.example/>; rel="blocked-by"' in head
        assert b"<code>second</code>" in body and b"Second list" in body and b"Court order" not in body

        answer = await raw_exchange(running.port, b"HEAD http://plain.test/x.html HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b'Link: <https://second.example/>; rel="blocked-by"' in answer and answer.endswith(b"\r\n\r\n")
    finally:
        running.stop()
    assert "Traceback" not in running.stderr.read_text()


def test_no_appeal_url_means_no_link_header(tmp_path) -> None:
    from resolver_plugin.config import ProxyConfig
    from resolver_plugin.enforcement.proxy.blockpage import BlockPage

    metas = {"titled": ListMeta("Only a title")}
    page = BlockPage(ProxyConfig(appeal_url=""), lambda name: metas.get(name, ListMeta()))
    assert b"Link:" not in page.response("titled") and b"Only a title" in page.response("titled")
    page = BlockPage(ProxyConfig(appeal_url="https://isp.example/why"), lambda name: metas.get(name, ListMeta()))
    assert b'Link: <https://isp.example/why>; rel="blocked-by"' in page.response("other")
    page = BlockPage(ProxyConfig(appeal_url="https://isp.example/<bad>"))
    assert b"Link:" not in page.response("other")  # only what a header carries unchanged
