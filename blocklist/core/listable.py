"""Whether a canonical host can be listed: the hotline refuses names no browser can reach.

Canonicalization (blocklist.core.urls) is the Safe Browsing spec's, which turns any
text into some URL: `not a url` becomes `http://not%20a%20url/`. That is right for a
request (whatever a client sends gets an answer), but an entry on such a host never
matches anything a browser sends, so the hotline refuses it, saying why. The rules
are the WHATWG URL Standard's host parser, applied to the canonical host:

- no forbidden domain code point (a forbidden host code point, a C0 control, `%`
  or DEL) once the host's escapes are read back;
- a label of non-ASCII characters is mapped as browsers map it (UTS #46,
  non-transitional) to its punycode form, and refused if it cannot be;
- labels of at most 63 octets, a name of at most 253;
- an `xn--` label must decode to what its punycode encodes (not empty, not plain
  ASCII, NFC, no leading combining mark, valid under UTS #46);
- a name whose last label is a number is an IPv4 address to a browser: it must
  be one (`256.1.1.1` and `1.2.3.4.5` are refused). IPv6 literals are checked
  by canonicalization already.

And one rule of ours: a name in CANARY_ZONE is reserved for the canary that every
published list carries (blocklist.core.canary), so no entry can shadow or remove it.

The plugin never calls this: what it does with a request URL is unchanged.
"""

from __future__ import annotations

import unicodedata
from urllib.parse import unquote_to_bytes

import idna

from blocklist.core.errors import InvalidURL

__all__ = ["CANARY_ZONE", "browser_host", "check_listable_host", "unlistable_reason"]

CANARY_ZONE = "blocklist-canary.invalid"  # RFC 6761 .invalid: see blocklist.core.canary

MAX_LABEL = 63
MAX_NAME = 253
_FORBIDDEN = frozenset(range(0x20)) | frozenset(b" #/:<>?@[\\]^|%\x7f")


def unlistable_reason(host: str) -> str | None:
    """Why a canonical host cannot be listed, or None when a browser can reach it."""
    if host.startswith("["):
        return None  # an IPv6 literal: canonicalization accepts only valid ones
    if host == CANARY_ZONE or host.endswith("." + CANARY_ZONE):
        return f"host {host!r} is in {CANARY_ZONE}, which is reserved for the lists' canaries"
    raw = unquote_to_bytes(host)
    bad = sorted({byte for byte in raw if byte in _FORBIDDEN})
    if bad:
        shown = ", ".join(f"U+{b:04X}" + (f" {chr(b)!r}" if 0x20 < b < 0x7F else "") for b in bad)
        return f"host {host!r} holds {shown}, which no browser accepts in a host name"
    if not raw.isascii():
        return (f"host {host!r} has a label that is no valid internationalized name "
                "(browsers refuse it; list the punycode form they send, xn--...)")
    if len(host) > MAX_NAME:
        return f"host name of {len(host)} octets (at most {MAX_NAME})"
    labels = host.split(".")
    for label in labels:
        if len(label) > MAX_LABEL:
            return f"host label {label[:20]!r}... of {len(label)} octets (at most {MAX_LABEL})"
        if label.startswith("xn--") and not _valid_punycode(label):
            return f"host label {label!r} is not valid punycode"
    if _ends_in_number(labels[-1]) and not _is_ipv4(labels):
        return f"host {host!r} ends in a number, so browsers read it as an IPv4 address, and it is not one"
    return None


def check_listable_host(host: str) -> None:
    """Raise InvalidURL, with the reason, if the canonical `host` cannot be listed."""
    reason = unlistable_reason(host)
    if reason is not None:
        raise InvalidURL(reason)


def browser_host(host: str) -> str | None:
    """The punycode form a browser sends for a canonical host with non-ASCII labels, or None.

    Canonicalization keeps (escaped) the bytes of a label the `idna` package refuses
    under IDNA 2008, such as an emoji; browsers map it by UTS #46 and send that form.
    """
    raw = unquote_to_bytes(host)
    if raw.isascii():
        return None
    try:
        text = raw.decode("utf-8")
        labels = []
        for label in text.split("."):
            if label.isascii():
                labels.append(label)
                continue
            mapped = idna.uts46_remap(label, std3_rules=False, transitional=False)
            labels.append("xn--" + unicodedata.normalize("NFC", mapped).encode("punycode").decode("ascii"))
    except (UnicodeError, ValueError):
        return None
    name = ".".join(labels)
    return name if all(not label.startswith("xn--") or _valid_punycode(label) for label in labels) else None


def _valid_punycode(label: str) -> bool:
    try:
        decoded = label[4:].encode("ascii").decode("punycode")
        if not decoded or decoded.isascii() or unicodedata.normalize("NFC", decoded) != decoded:
            return False
        if unicodedata.category(decoded[0]).startswith("M"):
            return False
        if idna.uts46_remap(decoded, std3_rules=False, transitional=False) != decoded:
            return False
        return "xn--" + decoded.encode("punycode").decode("ascii") == label
    except (UnicodeError, ValueError):  # idna.IDNAError is both
        return False


def _ends_in_number(label: str) -> bool:
    if label.isdigit() and label.isascii():
        return True
    return label.startswith("0x") and all(c in "0123456789abcdef" for c in label[2:])


def _is_ipv4(labels: list[str]) -> bool:
    """Whether the labels of a canonical host are a dotted-quad IPv4 address (canonical form)."""
    return len(labels) == 4 and all(
        label.isdigit() and label.isascii() and str(int(label)) == label and int(label) <= 255 for label in labels)
