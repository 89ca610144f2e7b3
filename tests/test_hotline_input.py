"""What the hotline accepts as an entry: hosts a browser can reach, with the reach staff chose."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from blocklist.core.digests import Scope, make_new_entry
from blocklist.core.errors import InvalidURL
from blocklist.core.listable import unlistable_reason
from tests.conftest import Hotline

# (what staff typed, why it is refused): hosts that still hold what no browser accepts
REFUSED = [
    ("not a url", "U+0020"),
    ("http://a b.example/", "U+0020"),
    ("http://a%20b.example/x", "U+0020"),
    ("http://a%00b.example/", "U+0000"),
    ("http://a%09b.example/", "U+0009"),
    ("http://evil.example\\page.html", "U+005C '\\\\'"),
    ("http://a<b.example/", "U+003C '<'"),
    ("http://a>b.example/", "U+003E '>'"),
    ("http://a^b.example/", "U+005E '^'"),
    ("http://a|b.example/", "U+007C '|'"),
    ("http://ex%25ample.com/", "U+0025 '%'"),
    ("http://a%7Fb.example/", "U+007F"),
    ("http://a%01b.example/", "U+0001"),
    ("http://" + "a" * 64 + ".example/", "64 octets (at most 63)"),
    ("http://" + ("a" * 62 + ".") * 4 + "ab/", "254 octets (at most 253)"),
    ("http://xn--a.example/", "'xn--a' is not valid punycode"),
    ("http://xn--abc-.example/", "not valid punycode"),          # decodes to plain ASCII
    ("http://xn--.example/", "not valid punycode"),              # decodes to nothing
    ("http://xn--0.example/", "not valid punycode"),             # no punycode at all
    ("http://xn--zz-.example/", "not valid punycode"),
    ("http://256.1.1.1/", "ends in a number"),                   # IPv4 out of range
    ("http://1.2.3.4.5/", "ends in a number"),
    ("http://09/", "ends in a number"),                          # bad octal
    ("http://example.123/", "ends in a number"),
    ("http://0x100000000/", "ends in a number"),
    ("http://example.0x/", "ends in a number"),                  # "0x" alone is the number 0
    ("http://www.1.2.3.4/", "ends in a number"),
    ("http://%F0%28%8C%28.example/", "no valid internationalized name"),  # bytes that are no UTF-8
]

# (what staff typed, the entry's canonical URL): what browsers accept keeps being accepted
ACCEPTED = [
    ("http:///blah", "http://blah/"),                            # every browser reads http://blah/
    ("http://a_b.example/x", "http://a_b.example/x"),
    ("http://" + "a" * 63 + ".example/", "http://" + "a" * 63 + ".example/"),
    ("http://bücher.example/x", "http://xn--bcher-kva.example/x"),
    ("http://xn--bcher-kva.example/x", "http://xn--bcher-kva.example/x"),
    ("http://💩.la/x", "http://xn--ls8h.la/x"),                    # mapped as the browser maps it
    ("http://xn--ls8h.la/x", "http://xn--ls8h.la/x"),
    ("http://0x7f.1/", "http://127.0.0.1/"),                     # IPv4 forms, in range
    ("http://167838211/a", "http://10.1.2.3/a"),
    ("http://[::1]/", "http://[::1]/"),
    ("http://example.com./a", "http://example.com/a"),
    ("http://1.example/", "http://1.example/"),
    ("http://" + ("a" * 62 + ".") * 4 + "a/", "http://" + ("a" * 62 + ".") * 4 + "a/"),  # 253 octets
    ("http://example.0xg/", "http://example.0xg/"),              # no hex number: a name
]


@pytest.mark.parametrize("typed, reason", REFUSED)
def test_refused_hosts_name_the_reason(typed: str, reason: str) -> None:
    with pytest.raises(InvalidURL, match=None) as caught:
        make_new_entry(typed, Scope.PAGE)
    assert reason in str(caught.value)


@pytest.mark.parametrize("typed, canonical", ACCEPTED)
def test_hosts_browsers_accept_are_accepted(typed: str, canonical: str) -> None:
    assert make_new_entry(typed, Scope.PAGE).url == canonical


def test_the_plugin_canonicalization_is_unchanged() -> None:
    """Validation is the hotline's: a request URL on such a host still gets an answer."""
    from blocklist.core.urls import canonicalize
    assert str(canonicalize("not a url")) == "http://not%20a%20url/"
    assert canonicalize("http://💩.la/x").host == "%F0%9F%92%A9.la"
    assert unlistable_reason("not%20a%20url") is not None and unlistable_reason("example.org") is None


def test_add_refuses_with_the_reason_and_changes_nothing(hotline: Hotline) -> None:
    result = hotline.run("add", "http://ok.example/a", "not a url", ok=None)
    assert result.exit_code == 2 and "U+0020" in result.output and "Traceback" not in result.output
    result = hotline.run("add", "http://a b.example/", ok=None)
    assert result.exit_code == 2 and "no browser accepts" in result.output
    assert json.loads(hotline.run("ls", "--json").output) == []
    assert hotline.run("add", "http:///blah").exit_code == 0
    assert [e["url"] for e in json.loads(hotline.run("ls", "--json").output)] == ["http://blah/"]


def test_import_names_every_refused_line_and_imports_nothing(hotline: Hotline, tmp_path: Path) -> None:
    lines = ["http://good.example/1", *(typed for typed, _ in REFUSED), "http://good.example/2"]
    path = tmp_path / "in.txt"
    path.write_text("\n".join(lines) + "\n")
    result = hotline.run("import", str(path), ok=None)
    assert result.exit_code == 2 and f"{len(REFUSED)} bad line(s); nothing imported" in result.output
    for number, (_, reason) in enumerate(REFUSED, 2):
        line = next(x for x in result.output.splitlines() if x.startswith(f"{path}:{number}: "))
        assert reason in line, line
    assert json.loads(hotline.run("ls", "--json").output) == []


def test_reach_options_and_the_csv_column(hotline: Hotline, tmp_path: Path) -> None:
    hotline.run("add", "http://www.twin.example/a.html")
    hotline.run("add", "--exact-host", "http://exact.example/a.html")
    hotline.run("add", "--subdomains", "--scope", "folder", "http://www.subs.example/kit/")
    both = hotline.run("add", "--subdomains", "--exact-host", "http://x.example/", ok=None)
    assert both.exit_code == 2 and "exclude each other" in both.output
    domain = hotline.run("add", "--subdomains", "--scope", "domain", "http://d.example/", ok=None)
    assert domain.exit_code == 2 and "already covers every subdomain" in domain.output
    dup = hotline.run("add", "http://twin.example/a.html", ok=None)  # the same twin entry
    assert dup.exit_code == 3 and "already listed" in dup.output
    path = tmp_path / "in.csv"
    path.write_text("url,scope,subdomains\nhttp://c.example/p.html,page,true\nhttp://e.example/q/,folder,no\n"
                    "http://f.example/,domain,\n")
    hotline.run("import", "--exact-host", str(path))
    rows = {e["url"]: (e["scope"], e["reach"]) for e in json.loads(hotline.run("ls", "--json").output)}
    assert rows == {"http://www.twin.example/a.html": ("page", "twin"),
                    "http://exact.example/a.html": ("page", "exact"),
                    "http://www.subs.example/kit/": ("folder", "subdomains"),
                    "http://c.example/p.html": ("page", "subdomains"), "http://e.example/q/": ("folder", "exact"),
                    "http://f.example/": ("domain", "exact")}
    table = hotline.run("ls").output
    assert "REACH" in table and "subdomains" in table
    for url, listed in [("http://twin.example/a.html", True), ("http://www.www.twin.example/a.html", True),
                        ("http://www.exact.example/a.html", False), ("http://a.b.subs.example/kit/x", True),
                        ("http://x.c.example/p.html", True), ("http://www.e.example/q/", False)]:
        assert (hotline.run("check", url, ok=None).exit_code == 0) is listed, url
    out = json.loads(hotline.run("check", "http://www.twin.example/a.html", "--json").output)
    assert out["reach"] == "twin" and out["entries"][0]["url"] == "http://www.twin.example/a.html"
    hotline.run("remove", "http://twin.example/a.html")  # the twin entry, named from either side
    assert hotline.run("check", "http://www.twin.example/a.html", ok=None).exit_code == 1
    bad = tmp_path / "bad.csv"
    bad.write_text("url,scope,subdomains\nhttp://g.example/,page,maybe\nhttp://h.example/,domain,true\n")
    result = hotline.run("import", str(bad), ok=None)
    assert result.exit_code == 2 and f"{bad}:2: subdomains must be true or false" in result.output
    assert f"{bad}:3: a domain entry already covers every subdomain" in result.output


def test_help_states_the_overblocking_trade_off(hotline: Hotline) -> None:
    text = " ".join(hotline.run("add", "--help").output.split())
    assert "www. twin" in text and "--exact-host" in text and "shared host" in text
    assert "--subdomains" in " ".join(hotline.run("import", "--help").output.split())
