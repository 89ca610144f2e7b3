"""The Matcher: scope semantics, Bloom-then-exact confirmation, deltas, stage-1 host answers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pybloom_live import BloomFilter

from blocklist.core.digests import Reach, Scope, make_entry
from blocklist.core.errors import ChecksumError, FormatError, InvalidURL
from blocklist.core.format.digestset import digest_array, set_checksum
from blocklist.core.matcher import ALLOWED, HostAction, ListFilter, Matcher
from blocklist.core.urls import host_suffixes
from tests.support.artifacts import make_filter
from tests.support.properties import Branches

ENTRIES = [
    ("http://site.example/", Scope.PAGE),
    ("http://site.example/bad/page.html", Scope.PAGE),
    ("http://site.example/q.php?id=7", Scope.PAGE),
    ("http://site.example/dir", Scope.FOLDER),
    ("http://a.b.c.d.e.f.g.example/1/2/3/4/5/6/", Scope.FOLDER),
    ("http://evil.example/", Scope.DOMAIN),
    ("http://h.i.j.k.l.m.n.example/", Scope.DOMAIN),
    ("http://10.1.2.3/", Scope.DOMAIN),
    ("http://www.twin.example/w/", Scope.FOLDER),                        # a twin entry listed on www.
    ("http://exact.example/only.html", Scope.PAGE, Reach.EXACT),
    ("http://www.exact.example/www-only.html", Scope.PAGE, Reach.EXACT),
    ("http://www.subs.example/kit/", Scope.FOLDER, Reach.SUBDOMAINS),    # its base: subs.example
    ("http://subs.example/p.html", Scope.PAGE, Reach.SUBDOMAINS),
    ("http://10.9.9.9/ip.html", Scope.PAGE),
]
LIST = make_filter(ENTRIES)
MATCHER = Matcher([LIST])
# the same list as published before subtree markers existed: the walk must not need them
MATCHERS = [MATCHER, Matcher([make_filter(ENTRIES, markers=False)])]


@pytest.mark.parametrize("url, scope", [
    ("http://site.example/", Scope.PAGE),
    ("http://site.example/?anything=1", Scope.PAGE),          # a page without query: any query
    ("http://site.example/bad/page.html", Scope.PAGE),
    ("http://site.example/bad/page.html?x=1#frag", Scope.PAGE),
    ("http://site.example/q.php?id=7", Scope.PAGE),
    ("http://site.example/dir", Scope.FOLDER),                # the folder itself
    ("http://site.example/dir/", Scope.FOLDER),
    ("http://site.example/dir/a/b/c/d/e/f/g/h.html", Scope.FOLDER),  # any depth
    ("http://a.b.c.d.e.f.g.example/1/2/3/4/5/6/7/8/9.html", Scope.FOLDER),  # deeper than the spec's limits
    ("http://evil.example/anything", Scope.DOMAIN),
    ("http://www.evil.example/x", Scope.DOMAIN),
    ("http://x.y.z.w.v.u.h.i.j.k.l.m.n.example/", Scope.DOMAIN),  # more than 5 host components
    ("http://10.1.2.3/x", Scope.DOMAIN),
    ("http://0x0a.1.2.3/x", Scope.DOMAIN),                    # IP forms
    ("http://167838211/", Scope.DOMAIN),
    # www twins, both ways and through several www. labels
    ("http://www.site.example/bad/page.html", Scope.PAGE),
    ("http://WWW.www.site.example/dir/x", Scope.FOLDER),
    ("http://twin.example/w/x.html", Scope.FOLDER),
    ("http://www.twin.example/w/", Scope.FOLDER),
    ("http://www.www.twin.example/w", Scope.FOLDER),
    # exact reach: the host as written
    ("http://exact.example/only.html", Scope.PAGE),
    ("http://www.exact.example/www-only.html", Scope.PAGE),
    # subdomain reach: the base and every name below it
    ("http://subs.example/kit/a", Scope.FOLDER),
    ("http://a.b.subs.example/kit/", Scope.FOLDER),
    ("http://www.subs.example/p.html?q=1", Scope.PAGE),
    ("http://x.www.subs.example/p.html", Scope.PAGE),
    ("http://10.9.9.9/ip.html", Scope.PAGE),
])
def test_listed(url: str, scope: Scope) -> None:
    for matcher in MATCHERS:
        verdict = matcher.check(url)
        assert verdict.blocked and verdict.scope is scope and verdict.list == "iwf"


@pytest.mark.parametrize("url", [
    "http://site.example/other",           # listing the home page never blocks the site
    "http://site.example/bad/",            # the page's folder
    "http://site.example/bad/page.html2",
    "http://site.example/q.php?id=8",      # a page with a query: only that query
    "http://site.example/q.php",
    "http://site.example/dirty",           # folder "/dir/" is not a string prefix match
    "http://a.site.example/bad/page.html",    # a twin is not a subdomain
    "http://www1.site.example/bad/page.html",  # only the label "www" makes a twin
    "http://wwwsite.example/bad/page.html",
    "http://site.www.example/bad/page.html",
    "http://x.www.twin.example/w/",            # below a twin: not a twin
    "http://www.exact.example/only.html",      # exact reach, both ways
    "http://exact.example/www-only.html",
    "http://www.www.exact.example/www-only.html",
    "http://subs.example/kitten",              # subdomain reach keeps the path rules
    "http://other.example/kit/",
    "http://xsubs.example/p.html",
    "http://www.10.9.9.9/ip.html",             # an IP address has no twin
    "http://notevil.example/",             # domain is label-wise
    "http://evil.example.com/",
    "http://10.1.2.4/",
    "http://unlisted.example/",
])
def test_not_listed(url: str) -> None:
    assert not any(matcher.check(url).blocked for matcher in MATCHERS)


def test_bloom_false_positive_never_blocks() -> None:
    """A saturated Bloom filter says yes to everything; the exact digests say no."""
    f = make_filter([("http://site.example/bad.html", Scope.PAGE)])
    saturated = BloomFilter(capacity=10, error_rate=0.5)
    saturated.bitarray.setall(True)
    f.entry_bloom = f.host_bloom = saturated
    m = Matcher([f])
    assert not m.check("http://innocent.example/page").blocked
    assert not m.check("http://site.example/good.html").blocked
    assert m.check("http://site.example/bad.html").blocked
    assert f.bloom_refuted > 0 and f.bloom_confirmed > 0


def test_exact_only_filter_agrees_with_bloom_filter() -> None:
    exact = make_filter([("http://site.example/dir", Scope.FOLDER)], bloom=False)
    assert Matcher([exact]).check("http://site.example/dir/x").blocked
    assert not Matcher([exact]).check("http://site.example/x").blocked


@pytest.mark.parametrize("matcher", MATCHERS, ids=["markers", "no-markers"])
def test_check_host_stages(matcher: Matcher) -> None:
    assert matcher.check_host("www.EVIL.example.").action is HostAction.BLOCK
    assert matcher.check_host("site.example").action is HostAction.PROXY
    assert matcher.check_host("other.example").action is HostAction.PASS
    assert matcher.check_host("www.site.example").action is HostAction.PROXY       # the twin
    assert matcher.check_host("www.www.twin.example").action is HostAction.PROXY
    assert matcher.check_host("twin.example").action is HostAction.PROXY
    assert matcher.check_host("a.site.example").action is HostAction.PASS
    assert matcher.check_host("www.exact.example").action is HostAction.PROXY      # listed as written
    assert matcher.check_host("www.www.exact.example").action is HostAction.PASS
    assert matcher.check_host("q.r.subs.example").action is HostAction.PROXY       # every subdomain
    assert matcher.check_host("subs.example").action is HostAction.PROXY
    assert matcher.check_host("subs.example.org").action is HostAction.PASS
    assert matcher.check_host("x.a.b.c.d.e.f.g.example").action is HostAction.PASS
    assert matcher.check_host("a.b.c.d.e.f.g.example").action is HostAction.PROXY
    assert matcher.check_host("x.h.i.j.k.l.m.n.example").action is HostAction.BLOCK
    assert matcher.check_host("10.1.2.3").action is HostAction.BLOCK


def _bare(host: str) -> str:
    """The host without its leading "www." labels, by the definition (two labels stay)."""
    labels = host.split(".")
    while labels[0] == "www" and len(labels) > 2:
        labels = labels[1:]
    return ".".join(labels)


def _expected_host_action(host: str, domains: set[str], listed: dict[Reach, set[str]]) -> HostAction:
    """Stage 1 by its definition, on plaintext: what every filter must answer."""
    if any(suffix in domains for suffix in host_suffixes(host)):
        return HostAction.BLOCK
    if (host in listed[Reach.EXACT] or _bare(host) in {_bare(h) for h in listed[Reach.TWIN]}
            or any(host == h or host.endswith("." + h) for h in map(_bare, listed[Reach.SUBDOMAINS]))):
        return HostAction.PROXY
    return HostAction.PASS


_LABELS = st.sampled_from(["a", "b", "c", "www", "x1"])


def test_host_stage_walk_agrees_with_its_definition() -> None:
    """With and without subtree markers, in any query order (the walk's caches), for every host."""
    ran = Branches()

    @settings(max_examples=300, deadline=None)
    @given(listed=st.lists(st.tuples(st.lists(_LABELS, min_size=1, max_size=4), st.sampled_from(list(Scope)),
                                     st.sampled_from(list(Reach))), max_size=8),
           queries=st.lists(st.lists(_LABELS, min_size=0, max_size=5), min_size=1, max_size=20))
    def prop(listed, queries) -> None:
        rows = [(f"http://{'.'.join(labels)}.example/p", scope,
                 Reach.EXACT if scope is Scope.DOMAIN else reach) for labels, scope, reach in listed]
        rows = [(url.rsplit("/", 1)[0] + "/" if scope is Scope.DOMAIN else url, scope, reach)
                for url, scope, reach in rows]
        domains = {make_entry(u, s, r).host for u, s, r in rows if s is Scope.DOMAIN}
        by_reach: dict[Reach, set[str]] = {r: set() for r in Reach}
        for url, scope, reach in rows:
            if scope is not Scope.DOMAIN:
                by_reach[reach].add(url.split("/")[2])
        filters = [make_filter(rows, markers=True), make_filter(rows, markers=False),
                   make_filter(rows, markers=True, bloom=False)]
        for labels in queries:
            host = ".".join([*labels, "example"])
            expected = _expected_host_action(host, domains, by_reach)
            ran(expected.value)
            if expected is HostAction.PROXY and host not in by_reach[Reach.EXACT]:
                ran("proxy by twin or subdomains")
            for f in filters:
                assert f.host_stage(host)[0] is expected, (host, f.subtree_markers)
                suffix = f.clear_suffix(host)
                if suffix is not None:  # everything at or below it passes
                    ran("clear suffix")
                    assert host.endswith(suffix) and not any(
                        h == suffix or h.endswith("." + suffix) for h in domains | by_reach[Reach.EXACT])
                    assert not any(_bare(h).endswith(suffix) for h in by_reach[Reach.TWIN] | by_reach[Reach.SUBDOMAINS])

    prop()
    assert ran["block"] and ran["proxy"] and ran["pass"] and ran["proxy by twin or subdomains"], ran
    assert ran["clear suffix"], ran


def test_a_fresh_name_under_a_known_parent_costs_no_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    f = make_filter(ENTRIES)
    calls = []
    real = f._digest
    monkeypatch.setattr(f, "_digest", lambda kind, key: calls.append(key) or real(kind, key))
    assert f.host_stage("q1.cdn.unlisted.example")[0] is HostAction.PASS
    assert calls == ["unlisted.example"]  # one marker lookup: nothing is listed below it
    for i in range(2, 50):
        assert f.host_stage(f"q{i}.cdn.unlisted.example")[0] is HostAction.PASS
    assert calls == ["unlisted.example"]
    assert f.clear_suffix("q99.cdn.unlisted.example") == "unlisted.example"
    assert f.clear_suffix("x.site.example") == "x.site.example"  # site.example carries entries
    assert f.clear_suffix("www.site.example") is None             # and they apply on its twin
    assert f.clear_suffix("q.www.site.example") == "q.www.site.example"
    assert f.clear_suffix("q.subs.example") is None               # subdomain reach: every name below
    assert f.clear_suffix("site.example") is None and f.clear_suffix("www.evil.example") is None
    assert make_filter(ENTRIES, markers=False).clear_suffix("q1.unlisted.example") is None


_SUFFIX_LABELS = st.sampled_from(["site", "www", "unlisted", "cdn", "subs", "evil", "example", "q1", "1", "255",
                                  "300", "x-y"])


@settings(max_examples=300, deadline=None)
@given(labels=st.lists(_SUFFIX_LABELS, min_size=1, max_size=5))
def test_clear_suffix_walk_from_the_right_is_the_domain_keys_walk(labels: list[str]) -> None:
    """The right-to-left walk answers as the walk over domain_keys (IP forms and one label included)."""
    host = ".".join(labels)
    fast, slow = make_filter(ENTRIES), make_filter(ENTRIES)
    assert fast.clear_suffix(host) == slow._clear_suffix_slow(host), host
    for odd in ("1.2.3.4", "10.0.0.300", "[::1]", "example", "a.1.2.3.4"):
        assert fast.clear_suffix(odd) == slow._clear_suffix_slow(odd), odd


def test_matcher_clear_suffix_holds_in_every_list() -> None:
    first = make_filter([("http://a.one.example/x", Scope.PAGE)])
    second = make_filter([("http://deep.b.two.example/x", Scope.PAGE)], name="second")
    m = Matcher([first, second])
    assert m.clear_suffix("q.b.two.example") == "q.b.two.example"
    assert m.clear_suffix("q.z.two.example") == "z.two.example"
    assert m.clear_suffix("q.one.example") == "q.one.example"
    assert m.clear_suffix("x.a.one.example") == "x.a.one.example"
    assert m.clear_suffix("a.one.example") is None
    assert Matcher().clear_suffix("anything.example") is None


def test_first_matching_list_is_named() -> None:
    other = make_filter([("http://site.example/other", Scope.PAGE)], name="second", version=9)
    m = Matcher([LIST, other])
    assert m.check("http://site.example/other").list == "second"
    assert m.check("http://evil.example/").list == "iwf"
    assert m.versions() == {"iwf": 1, "second": 9}
    assert m.replace(make_filter([], name="second", version=10)).versions() == {"iwf": 1, "second": 10}


def test_invalid_url_raises_our_error() -> None:
    with pytest.raises(InvalidURL):
        MATCHER.check("ftp://site.example/")


def _delta(old: ListFilter, new: ListFilter):
    from blocklist.core.format.artifacts import Delta
    return Delta(old.name, old.version, new.version, 0, new.checksum,
                 digest_array(set(new.entries) - set(old.entries)),
                 digest_array(set(old.entries) - set(new.entries)),
                 digest_array(set(new.hosts) - set(old.hosts)),
                 digest_array(set(old.hosts) - set(new.hosts)))


def test_apply_delta_adds_and_removes() -> None:
    v1 = make_filter([("http://a.example/1", Scope.PAGE), ("http://b.example/", Scope.DOMAIN)])
    v2 = make_filter([("http://a.example/2", Scope.PAGE), ("http://c.example/", Scope.DOMAIN)], version=2)
    applied = v1.apply(_delta(v1, v2))
    m = Matcher([applied])
    assert applied.version == 2 and applied.checksum == v2.checksum
    assert m.check("http://a.example/2").blocked and m.check("http://c.example/").blocked
    assert not m.check("http://a.example/1").blocked and not m.check("http://b.example/").blocked
    assert Matcher([v1]).check("http://a.example/1").blocked  # the old filter is untouched


def test_delta_with_wrong_checksum_or_version_is_refused() -> None:
    v1 = make_filter([("http://a.example/1", Scope.PAGE)])
    v2 = make_filter([("http://a.example/2", Scope.PAGE)], version=2)
    bad = _delta(v1, v2)
    object.__setattr__(bad, "checksum", set_checksum(digest_array([]), digest_array([])))
    with pytest.raises(ChecksumError):
        v1.apply(bad)
    with pytest.raises(FormatError):
        v2.apply(_delta(v1, v2))


def test_large_delta_rebuilds_sorted_sets() -> None:
    v1 = make_filter([(f"http://a.example/{i}", Scope.PAGE) for i in range(400)])
    v2 = make_filter([(f"http://a.example/{i}", Scope.PAGE) for i in range(200, 800)], version=2)
    applied = v1.apply(_delta(v1, v2))
    assert list(applied.entries) == list(v2.entries)
    assert Matcher([applied]).check("http://a.example/799").blocked
    assert not Matcher([applied]).check("http://a.example/5").blocked


def test_a_host_listed_whole_is_remembered_with_its_block_and_never_hides_a_more_specific_entry() -> None:
    m = Matcher([LIST])
    first = m.check("http://www.evil.example/x")
    assert first.blocked and first.scope is Scope.DOMAIN
    assert m._authority_verdicts["www.evil.example"] is first
    assert m.check("http://www.evil.example/y?z").scope is Scope.DOMAIN
    # a host one list lists whole and another carries entries under: its path still matters
    pages = make_filter([("http://evil.example/page.html", Scope.PAGE)], name="pages")
    both = Matcher([LIST, pages])
    assert both.check("http://evil.example/other").scope is Scope.DOMAIN
    assert "evil.example" not in both._authority_verdicts
    page = both.check("http://evil.example/page.html")
    assert (page.list, page.scope) == ("pages", Scope.PAGE)


def test_remembered_authorities_never_hide_an_entry() -> None:
    m = Matcher([LIST])
    # a host that carries entries is never remembered as unlisted
    assert not m.check("http://site.example/other").blocked
    assert m.check("http://site.example/bad/page.html").blocked
    # an unlisted host is remembered; its URLs stay allowed, other hosts are unaffected
    assert not m.check("http://unlisted.example/a").blocked
    assert m._authority_verdicts["unlisted.example"] is ALLOWED
    assert not m.check("http://unlisted.example/b?c#d").blocked
    assert m.check("http://www.evil.example/x").blocked
    # the authority is taken as written only when canonicalization cannot reinterpret it
    for url in ("http://EVIL.example/", "http://x@evil.example/", "http://evil%2eexample/",
                "http://evil.example./", "http://167838211/"):
        verdict = m.check(url)
        assert verdict.blocked, url
