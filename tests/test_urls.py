"""Tests for blocklist.core.urls: the Safe Browsing v4 examples, evasions, limits, properties."""

from __future__ import annotations

import string
import time
from urllib.parse import unquote_to_bytes

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blocklist.core import urls
from blocklist.core.errors import BlocklistError, InvalidURL
from blocklist.core.urls import (
    MAX_URL_LENGTH,
    CanonicalURL,
    canonicalize,
    canonicalize_host,
    expressions,
    host_suffixes,
    path_prefixes,
)
from tests.support.properties import Branches

# Every Canonicalize(...) example of https://developers.google.com/safe-browsing/v4/urls-hashing,
# in the spec's order. The spec's "\x80" is a byte, not U+0080: in a Python str a raw
# byte is written as its surrogate escape "\udc80" (see the module docstring).
SPEC_CANONICALIZE = [
    ("http://host/%25%32%35", "http://host/%25"),
    ("http://host/%25%32%35%25%32%35", "http://host/%25%25"),
    ("http://host/%2525252525252525", "http://host/%25"),
    ("http://host/asdf%25%32%35asd", "http://host/asdf%25asd"),
    ("http://host/%%%25%32%35asd%%", "http://host/%25%25%25asd%25%25"),
    ("http://www.google.com/", "http://www.google.com/"),
    (
        "http://%31%36%38%2e%31%38%38%2e%39%39%2e%32%36/%2E%73%65%63%75%72%65/%77%77%77%2E%65%62%61%79%2E%63%6F%6D/",
        "http://168.188.99.26/.secure/www.ebay.com/",
    ),
    (
        "http://195.127.0.11/uploads/%20%20%20%20/.verify/.eBaysecure=updateuserdataxplimnbqmn-xplmvalidateinfoswqpcmlx=hgplmcx/",
        "http://195.127.0.11/uploads/%20%20%20%20/.verify/.eBaysecure=updateuserdataxplimnbqmn-xplmvalidateinfoswqpcmlx=hgplmcx/",
    ),
    (
        "http://host%23.com/%257Ea%2521b%2540c%2523d%2524e%25f%255E00%252611%252A22%252833%252944_55%252B",
        "http://host%23.com/~a!b@c%23d$e%25f^00&11*22(33)44_55+",
    ),
    ("http://3279880203/blah", "http://195.127.0.11/blah"),
    ("http://www.google.com/blah/..", "http://www.google.com/"),
    ("www.google.com/", "http://www.google.com/"),
    ("www.google.com", "http://www.google.com/"),
    ("http://www.evil.com/blah#frag", "http://www.evil.com/blah"),
    ("http://www.GOOgle.com/", "http://www.google.com/"),
    ("http://www.google.com.../", "http://www.google.com/"),
    ("http://www.google.com/foo\tbar\rbaz\n2", "http://www.google.com/foobarbaz2"),
    ("http://www.google.com/q?", "http://www.google.com/q?"),
    ("http://www.google.com/q?r?", "http://www.google.com/q?r?"),
    ("http://www.google.com/q?r?s", "http://www.google.com/q?r?s"),
    ("http://evil.com/foo#bar#baz", "http://evil.com/foo"),
    ("http://evil.com/foo;", "http://evil.com/foo;"),
    ("http://evil.com/foo?bar;", "http://evil.com/foo?bar;"),
    ("http://\x01\udc80.com/", "http://%01%80.com/"),
    ("http://notrailingslash.com", "http://notrailingslash.com/"),
    ("http://www.gotaport.com:1234/", "http://www.gotaport.com/"),
    ("  http://www.google.com/  ", "http://www.google.com/"),
    ("http:// leadingspace.com/", "http://%20leadingspace.com/"),
    ("http://%20leadingspace.com/", "http://%20leadingspace.com/"),
    ("%20leadingspace.com/", "http://%20leadingspace.com/"),
    ("https://www.securesite.com/", "https://www.securesite.com/"),
    ("http://host.com/ab%23cd", "http://host.com/ab%23cd"),
    ("http://host.com//twoslashes?more//slashes", "http://host.com/twoslashes?more//slashes"),
]

# The spec's suffix/prefix expression examples, in the spec's order.
SPEC_EXPRESSIONS = [
    (
        "http://a.b.c/1/2.html?param=1",
        [
            "a.b.c/1/2.html?param=1",
            "a.b.c/1/2.html",
            "a.b.c/",
            "a.b.c/1/",
            "b.c/1/2.html?param=1",
            "b.c/1/2.html",
            "b.c/",
            "b.c/1/",
        ],
    ),
    (
        # b.c.d.e.f.g is skipped: only the last five labels and the full host.
        "http://a.b.c.d.e.f.g/1.html",
        [
            "a.b.c.d.e.f.g/1.html",
            "a.b.c.d.e.f.g/",
            "c.d.e.f.g/1.html",
            "c.d.e.f.g/",
            "d.e.f.g/1.html",
            "d.e.f.g/",
            "e.f.g/1.html",
            "e.f.g/",
            "f.g/1.html",
            "f.g/",
        ],
    ),
    ("http://1.2.3.4/1/", ["1.2.3.4/1/", "1.2.3.4/"]),
    (
        "http://a.b.c/saw-a-lot-of-examples",
        ["a.b.c/saw-a-lot-of-examples", "a.b.c/", "b.c/saw-a-lot-of-examples", "b.c/"],
    ),
]

BASE = "http://www.example.com/page/index.html?q=1"
# Spellings of BASE that a filter must not be fooled by.
EVASIONS = [
    "HTTP://WWW.EXAMPLE.COM/page/index.html?q=1",
    "hTtP://www.ExAmPlE.cOm/page/index.html?q=1",
    "http://%77ww.example.com/page/index.html?q=1",
    "http://%57%57%57.%65%78%61%6d%70%6c%65.%63%6f%6d/page/index.html?q=1",
    "http://www%2eexample%2ecom/page/index.html?q=1",
    "http://www.example.com/%70age/index.html?q=1",
    "http://www.example.com/%2570age/index.html?q=1",
    "http://www.example.com/%252570age/%69ndex.html?q=1",
    "http://www.example.com/page/index.html?%71=1",
    "http://www.example.com../page/index.html?q=1",
    "http://..www.example.com/page/index.html?q=1",
    "http://www..example...com/page/index.html?q=1",
    "http://www.example.com./page/index.html?q=1",
    "http://www.example.com/./page/./index.html?q=1",
    "http://www.example.com/other/../page/index.html?q=1",
    "http://www.example.com/a/b/../../page/x/../index.html?q=1",
    "http://www.example.com/../../page/index.html?q=1",
    "http://www.example.com/%2e%2e/page/%2E/index.html?q=1",
    "http://www.example.com//page///index.html?q=1",
    "http://www.example.com/page%2Findex.html?q=1",
    "http://www.example.com:8080/page/index.html?q=1",
    "http://www.example.com:/page/index.html?q=1",
    "http://user:pass@www.example.com/page/index.html?q=1",
    "http://user@www.example.com:80/page/index.html?q=1",
    "http://good.com@www.example.com/page/index.html?q=1",
    "http://www.example.com/page/index.html?q=1#fragment",
    "http://www.example.com/page/index.html?q=1#",
    "http://www.example.com/page/\tindex.html?q=1\n",
    "  http://www.example.com/page/index.html?q=1\r\n",
    "www.example.com/page/index.html?q=1",
    "www.example.com:8080/page/index.html?q=1",
    "http:/www.example.com/page/index.html?q=1",
    "http:///www.example.com/page/index.html?q=1",
    "http%3A%2F%2Fwww.example.com%2Fpage%2Findex.html%3Fq%3D1",
    "http://ｗｗｗ.ｅｘａｍｐｌｅ.ｃｏｍ/page/index.html?q=1",  # fullwidth: UTS 46 maps to ASCII
    "http://www。example。com/page/index.html?q=1",  # ideographic full stops
]

IP_BASE = "http://127.0.0.1/x"
IP_EVASIONS = [
    "http://2130706433/x",  # one decimal number
    "http://0x7f000001/x",  # one hex number
    "http://0x7F.1/x",  # two parts, hex
    "http://0177.0.0.1/x",  # octal
    "http://0177.1/x",
    "http://127.1/x",
    "http://127.0.1/x",
    "http://0x7f.0.0.0x1/x",
    "http://00000177.0x00000.0.01/x",  # leading zeros
    "http://127.0.0.1./x",
    "http://%31%32%37.%30.%30.%31/x",
    "http://127.0.0.1:80/x",
    "http://[::ffff:127.0.0.1]/x",  # IPv4-mapped IPv6
    "http://[::ffff:7f00:1]/x",
    "http://[64:ff9b::127.0.0.1]/x",  # NAT64
]

IDN_BASE = "http://xn--bcher-kva.example/"
IDN_EVASIONS = [
    "http://bücher.example/",
    "http://BÜCHER.example/",
    "http://BÜCHER.EXAMPLE/",
    "http://Bücher.Example./",
    "http://b%C3%BCcher.example/",
    "http://b%c3%bccher.example/",
    "http://b%25C3%25BCcher.example/",
    "http://XN--BCHER-KVA.example/",
    "http://bu\u0308cher.example/",  # combining diaeresis: UTS 46 normalizes to NFC
]


def _idempotent(url: str) -> None:
    first = canonicalize(url)
    assert canonicalize(str(first)) == first


# --- the spec -----------------------------------------------------------------------


@pytest.mark.parametrize(("url", "expected"), SPEC_CANONICALIZE)
def test_spec_canonicalize_examples(url: str, expected: str) -> None:
    assert str(canonicalize(url)) == expected
    assert str(urls._canonicalize_slow(url)) == expected
    _idempotent(url)


@pytest.mark.parametrize(("url", "expected"), SPEC_EXPRESSIONS)
def test_spec_expression_examples(url: str, expected: list[str]) -> None:
    assert expressions(url) == expected
    assert expressions(canonicalize(url)) == expected


def test_spec_byte_0x80_also_as_escape() -> None:
    # The same example with the raw byte written as an escape; U+0080 as text is UTF-8.
    assert str(canonicalize("http://\x01%80.com/")) == "http://%01%80.com/"
    assert str(canonicalize("http://\x01\x80.com/")) == "http://%01%C2%80.com/"


# --- parts and rules beyond the examples --------------------------------------------


def test_canonical_url_fields_and_str() -> None:
    got = canonicalize("HTTPS://User@Example.COM:443/a/./b/../c?x=%41#top")
    assert got == CanonicalURL("https", "example.com", "/a/c", "x=A")
    assert str(got) == "https://example.com/a/c?x=A"
    assert canonicalize("http://a.com/q?").query == ""
    assert canonicalize("http://a.com/q").query is None
    assert str(CanonicalURL("http", "a.com", "/", None)) == "http://a.com/"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://a.com/b/.", "http://a.com/b/"),
        ("http://a.com/b/./", "http://a.com/b/"),
        ("http://a.com/b/c/..", "http://a.com/b/"),
        ("http://a.com/..", "http://a.com/"),
        ("http://a.com/./../.", "http://a.com/"),
        ("http://a.com/.../..a/a..", "http://a.com/.../..a/a.."),
        ("http://a.com/.hidden/.x", "http://a.com/.hidden/.x"),
        ("http://a.com//", "http://a.com/"),
        ("http://a.com?x", "http://a.com/?x"),
        ("http://a.com/?a/../b//c", "http://a.com/?a/../b//c"),  # query is not a path
        ("http://a.com/%3Fnot-a-path?really", "http://a.com/?not-a-path?really"),
        ("http://a.com/a b?c d", "http://a.com/a%20b?c%20d"),
        ("http://a.com/%00%7F%ff", "http://a.com/%00%7F%FF"),
        ("http://a.com/ü", "http://a.com/%C3%BC"),
        ("http://a.com/%23?%23", "http://a.com/%23?%23"),
        ("http://a.com/caf%C3%A9?q=%C3%A9", "http://a.com/caf%C3%A9?q=%C3%A9"),
        ("http://a_b.example/", "http://a_b.example/"),  # ASCII hosts are not IDNA-checked
        ("http://-dash-.example/", "http://-dash-.example/"),
        ("http://localhost:3128", "http://localhost/"),
        ("localhost:8080/path", "http://localhost/path"),
        ("example.com:443", "http://example.com/"),
        ("http://[2001:DB8::1]/", "http://[2001:db8::1]/"),
        ("http://[2001:0db8:0000:0000:0000:0000:0000:0001]:8080/", "http://[2001:db8::1]/"),
        ("http://[::1]/", "http://[::1]/"),
        ("http://straße.example/", "http://xn--strae-oqa.example/"),  # non-transitional
        ("http://\u0080.example/", "http://%C2%80.example/"),  # idna refuses: bytes escaped
        ("http://a\udcff.example/", "http://a%FF.example/"),  # not UTF-8: bytes escaped
    ],
)
def test_canonicalize_more(url: str, expected: str) -> None:
    assert str(canonicalize(url)) == expected
    _idempotent(url)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("3279880203", "195.127.0.11"),
        ("0x7f.1", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("1.2.3", "1.2.0.3"),
        ("1.2", "1.0.0.2"),
        ("1.16777215", "1.255.255.255"),
        ("1.2.65535", "1.2.255.255"),
        ("4294967295", "255.255.255.255"),
        ("0", "0.0.0.0"),
        ("0x", "0.0.0.0"),
        ("012.034.01.055", "10.28.1.45"),
        ("0x12.0x43.0x44.0x01", "18.67.68.1"),
        ("12.0x12.01234", "12.18.2.156"),
        ("0XFF.0.0.1", "255.0.0.1"),
        # Not parseable as IPv4, so ordinary host names (the spec's "can be parsed" rule):
        ("4294967296", "4294967296"),
        ("256.1.1.1", "256.1.1.1"),
        ("1.256.1.1", "1.256.1.1"),
        ("1.16777216", "1.16777216"),
        ("1.2.65536", "1.2.65536"),
        ("1.2.3.4.5", "1.2.3.4.5"),
        ("09.1.1.1", "09.1.1.1"),
        ("0x1g.1.1.1", "0x1g.1.1.1"),
        ("1.2.3.a", "1.2.3.a"),
        ("99999999999999999999999999999999", "99999999999999999999999999999999"),
    ],
)
def test_ipv4_forms(host: str, expected: str) -> None:
    assert canonicalize(f"http://{host}/").host == expected
    assert canonicalize_host(host) == expected


@pytest.mark.parametrize(
    "url",
    [
        "ftp://ftp.myfiles.com/",
        "FTP://example.com/",
        "javascript:alert(1)",
        "javascript%3Aalert(1)",
        "mailto:bryner@google.com",
        "file:///etc/passwd",
        "data:text/html,<script>",
        "ws://example.com/",
        "user:pass@example.com/",  # without "//", "user" reads as a scheme
    ],
)
def test_rejects_other_schemes(url: str) -> None:
    with pytest.raises(InvalidURL, match="scheme"):
        canonicalize(url)


@pytest.mark.parametrize(
    "url",
    [
        "",
        " ",
        ":",
        "/blah",
        "#ref",
        "/blah#ref",
        "?query#ref",
        "http://",
        "http://#ref",
        "http://?query#ref",
        "http://user@/x",
        "http://.../",
        "http://:80/",
        "//",
        "http://[::1/",
        "http://[::g]/",
        "http://[1:2:3]/",
        "http://[]/",
        "http://[::1]x/",
        "http://[fe80::1%25eth0]/",
        "http://[1.2.3.4]/",
        "http://::1/",
        "http://a:b:c/",
        "http://example.com:http/",
        "http://example.com:65536/",
        "http://example.com:-1/",
        "http://ex[ample.com/",
        "http://.[::1]/",
        "http://%5B::1%5D:x/",
    ],
)
def test_rejects_bad_urls(url: str) -> None:
    with pytest.raises(InvalidURL):
        canonicalize(url)


def test_invalid_url_is_the_project_error() -> None:
    with pytest.raises(BlocklistError):
        canonicalize("ftp://x/")
    with pytest.raises(ValueError):
        canonicalize("ftp://x/")


def test_length_limits() -> None:
    head = "http://example.com/"
    longest = head + "a" * (MAX_URL_LENGTH - len(head))
    assert str(canonicalize(longest)) == longest
    with pytest.raises(InvalidURL, match="longer"):
        canonicalize(longest + "a")
    with pytest.raises(InvalidURL, match="longer"):
        canonicalize_host("a" * (MAX_URL_LENGTH + 1))
    # Escaping can triple the length; a result past the limit is refused too.
    with pytest.raises(InvalidURL, match="canonical URL longer"):
        canonicalize(head + "\x01" * 3000 + "x")


def test_deep_percent_nesting_is_linear() -> None:
    # One pass per level would be quadratic: 4000 levels of "%25" around "%41".
    url = "http://h/%" + "25" * 4000 + "41"
    start = time.perf_counter()
    assert str(canonicalize(url)) == "http://h/A"
    assert time.perf_counter() - start < 1.0


# --- evasions ------------------------------------------------------------------------


@pytest.mark.parametrize("variant", EVASIONS)
def test_evasions_reach_the_same_url(variant: str) -> None:
    assert canonicalize(variant) == canonicalize(BASE)
    assert expressions(variant) == expressions(BASE)


@pytest.mark.parametrize("variant", IP_EVASIONS)
def test_ip_evasions_reach_the_same_url(variant: str) -> None:
    assert canonicalize(variant) == canonicalize(IP_BASE)


@pytest.mark.parametrize("variant", IDN_EVASIONS)
def test_idn_evasions_reach_the_same_url(variant: str) -> None:
    assert canonicalize(variant) == canonicalize(IDN_BASE)


# --- hosts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("www.example.com", "www.example.com"),
        ("WWW.Example.COM.", "www.example.com"),  # DNS query name with root dot
        ("example.com:443", "example.com"),  # CONNECT target
        ("[2001:DB8::1]:443", "[2001:db8::1]"),
        ("[::1]", "[::1]"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("_dmarc.example.com", "_dmarc.example.com"),
        ("0x7f.1", "127.0.0.1"),
        ("user@example.com", "example.com"),
    ],
)
def test_canonicalize_host(host: str, expected: str) -> None:
    assert canonicalize_host(host) == expected
    assert canonicalize_host(expected) == expected


@pytest.mark.parametrize("host", ["", ".", "...", "a/b", "a?b", "a#b", "[::1", "[zz::]", "a:b"])
def test_canonicalize_host_rejects(host: str) -> None:
    with pytest.raises(InvalidURL):
        canonicalize_host(host)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("a.b.c", ["a.b.c", "b.c"]),
        ("b.c", ["b.c"]),
        ("localhost", ["localhost"]),
        ("1.2.3.4", ["1.2.3.4"]),
        ("[2001:db8::1]", ["[2001:db8::1]"]),
        ("256.1.1.1", ["256.1.1.1", "1.1.1", "1.1"]),  # a name, not an address
        (
            "a.b.c.d.e.f.g.h",
            ["a.b.c.d.e.f.g.h", "b.c.d.e.f.g.h", "c.d.e.f.g.h", "d.e.f.g.h",
             "e.f.g.h", "f.g.h", "g.h"],
        ),
    ],
)
def test_host_suffixes(host: str, expected: list[str]) -> None:
    assert host_suffixes(host) == expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/", ["/"]),
        ("/a", ["/"]),
        ("/a/", ["/", "/a/"]),
        ("/a/b/c.html", ["/", "/a/", "/a/b/"]),
        ("/a/b/", ["/", "/a/", "/a/b/"]),
        (
            "/1/2/3/4/5/6/7/8/x.html",
            ["/", "/1/", "/1/2/", "/1/2/3/", "/1/2/3/4/", "/1/2/3/4/5/", "/1/2/3/4/5/6/",
             "/1/2/3/4/5/6/7/", "/1/2/3/4/5/6/7/8/"],
        ),
    ],
)
def test_path_prefixes(path: str, expected: list[str]) -> None:
    assert path_prefixes(path) == expected


def test_path_prefixes_wants_a_canonical_path() -> None:
    with pytest.raises(InvalidURL):
        path_prefixes("a/b")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://b/", ["b/"]),
        ("http://a.b/", ["a.b/"]),
        ("http://a.b/?", ["a.b/?", "a.b/"]),  # a bare "?" is part of the canonical URL
        ("http://[2001:470:1:18::114]/a/b",
         ["[2001:470:1:18::114]/a/b", "[2001:470:1:18::114]/", "[2001:470:1:18::114]/a/"]),
        ("http://a.b.c/1/2/3/4/5/",
         ["a.b.c/1/2/3/4/5/", "a.b.c/", "a.b.c/1/", "a.b.c/1/2/", "a.b.c/1/2/3/",
          "b.c/1/2/3/4/5/", "b.c/", "b.c/1/", "b.c/1/2/", "b.c/1/2/3/"]),
    ],
)
def test_expressions_more(url: str, expected: list[str]) -> None:
    assert expressions(url) == expected


def test_expressions_limits() -> None:
    got = expressions("http://a.b.c.d.e.f.g.h.i/1/2/3/4/5/6/7/8.html?x")
    assert len(got) == 5 * 6
    assert len({e.partition("/")[0] for e in got}) == 5
    assert len({e[e.index("/"):] for e in got}) == 6


# --- speed ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://www.example.com/some/path/page.html?q=1", None),
        ("https://a.b/", None),
        ("http://localhost", "http://localhost/"),
        ("http://x.com?q=a/b", "http://x.com/?q=a/b"),
    ],
)
def test_common_urls_take_the_fast_path(
    url: str, expected: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_slow_path(url: str) -> CanonicalURL:
        raise AssertionError("slow path taken")

    monkeypatch.setattr(urls, "_canonicalize_slow", no_slow_path)
    assert str(canonicalize(url)) == (expected or url)


# --- properties ----------------------------------------------------------------------

PROPERTY_SETTINGS = settings(
    max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

_HOST_CHARS = string.ascii_letters + string.digits + "-_.%~!$&'()*+,;=" + "äüßÜ。．"
_PATH_CHARS = string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@/%?# \t\\ü"


def _with_escapes(draw: st.DrawFn, text: str) -> str:
    """Percent-escape some characters of ``text``, some twice."""
    out = []
    for char in text:
        mode = draw(st.integers(0, 7))
        if mode == 1 and char.isascii():
            out.append(f"%{ord(char):02X}")
        elif mode == 2 and char.isascii():
            out.append(f"%25{ord(char):02x}")
        else:
            out.append(char)
    return "".join(out)


@st.composite
def url_like(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(["http://", "https://", "HTTP://", "hTtPs://", "", "http:", "ftp://"]))
    userinfo = draw(st.sampled_from(["", "user@", "u:p@", "a@b@"]))
    labels = draw(st.lists(st.text(_HOST_CHARS, min_size=0, max_size=8), min_size=1, max_size=6))
    host = ".".join(labels)
    host = draw(
        st.one_of(
            st.just(host),
            st.builds(lambda a, b, c, d: f"{a}.{b}.{c}.{d}", *[st.integers(0, 300)] * 4),
            st.integers(0, 2**33).map(str),
            st.integers(0, 2**32).map(hex),
            st.sampled_from(["[::1]", "[2001:DB8::1]", "[::ffff:1.2.3.4]", "[::g]", "0177.1"]),
        )
    )
    port = draw(st.sampled_from(["", ":80", ":8080", ":", ":99999", ":x"]))
    segments = draw(st.lists(st.text(_PATH_CHARS, max_size=6) | st.sampled_from([".", ".."]), max_size=6))
    path = "/" + "/".join(segments) if segments or draw(st.booleans()) else ""
    query = draw(st.none() | st.text(_PATH_CHARS, max_size=10))
    fragment = draw(st.none() | st.text(_PATH_CHARS, max_size=5))
    url = scheme + userinfo + _with_escapes(draw, host) + port + _with_escapes(draw, path)
    if query is not None:
        url += "?" + _with_escapes(draw, query)
    if fragment is not None:
        url += "#" + fragment
    return url


@st.composite
def canonical_looking(draw: st.DrawFn) -> str:
    """URLs that may or may not qualify for the fast path, to compare both paths."""
    scheme = draw(st.sampled_from(["http", "https"]))
    label = st.text(string.ascii_lowercase + string.digits + "-_", min_size=1, max_size=6)
    labels = draw(st.lists(label, min_size=1, max_size=5))
    path = draw(st.text(string.printable.replace("\x0b", "").replace("\x0c", ""), max_size=30))
    return f"{scheme}://{'.'.join(labels)}/{path}"


def _check(url: str, ran: Branches) -> None:
    try:
        result = canonicalize(url)
    except InvalidURL:
        ran("invalid")
        return
    text = str(result)
    assert text.isascii()
    assert result.scheme in ("http", "https")
    assert result.path.startswith("/")
    assert canonicalize(text) == result
    assert result == urls._canonicalize_slow(url)
    assert expressions(result)[0] == text.partition("://")[2]
    ran("canonical")


def test_arbitrary_text_is_idempotent_or_invalid() -> None:
    ran = Branches()

    @PROPERTY_SETTINGS
    @given(st.text(max_size=200))
    def prop(url: str) -> None:
        _check(url, ran)

    prop()
    assert ran["invalid"] and ran["canonical"], ran


def test_url_like_is_idempotent_or_invalid() -> None:
    ran = Branches()

    @PROPERTY_SETTINGS
    @given(url_like())
    def prop(url: str) -> None:
        _check(url, ran)

    prop()
    assert ran["canonical"] and ran["invalid"], ran


def test_host_is_idempotent_or_invalid() -> None:
    ran = Branches()

    @PROPERTY_SETTINGS
    @given(st.text(max_size=60))
    def prop(host: str) -> None:
        try:
            canonical = canonicalize_host(host)
        except InvalidURL:
            ran("invalid")
            return
        assert canonicalize_host(canonical) == canonical
        ran("canonical")

    prop()
    assert ran["invalid"] and ran["canonical"], ran


def test_fast_path_equals_slow_path() -> None:
    ran = Branches()

    @PROPERTY_SETTINGS
    @given(canonical_looking())
    def prop(url: str) -> None:
        try:
            slow = urls._canonicalize_slow(url)
        except InvalidURL:
            slow = None
        fast = urls._canonicalize_fast(url)
        if fast is None:
            ran("slow only")
            return
        assert fast == slow
        assert str(fast) == url  # the fast path only accepts what is already canonical
        ran("fast")

    prop()
    assert ran["fast"] and ran["slow only"], ran


@PROPERTY_SETTINGS
@given(st.binary(max_size=40).map(lambda b: b.replace(b"\xff", b"%").replace(b"\xfe", b"%2")))
def test_unescape_matches_repeated_passes(data: bytes) -> None:
    expected = data
    while (decoded := unquote_to_bytes(expected)) != expected:
        expected = decoded
    assert urls._unescape_fully(data) == expected


@pytest.mark.parametrize(("url", "form"), [
    ("http://a.example/p", ("http://a.example/p", False)),
    ("HTTPS://a.example/p", ("HTTPS://a.example/p", False)),
    ("ws://a.example/chat?x=1", ("http://a.example/chat?x=1", False)),
    ("WSS://a.example/chat", ("https://a.example/chat", False)),
    ("ftp://u:p@a.example:21/f.txt", ("http://u:p@a.example:21/f.txt", True)),
    ("gopher://a.example/1", ("http://a.example/1", True)),
    ("svn+ssh://a.example/r", ("http://a.example/r", True)),
    ("a.example:443", ("a.example:443", False)),
    ("a.example/p", ("a.example/p", False)),
    ("mailto:x@a.example", ("mailto:x@a.example", False)),
])
def test_web_form_reads_other_schemes(url: str, form: tuple[str, bool]) -> None:
    assert urls.web_form(url) == form
    target, host_only = urls.web_form(url)
    if host_only or target != url:  # what comes back canonicalizes to the same host as an http URL
        assert urls.canonicalize(target).host == "a.example"
