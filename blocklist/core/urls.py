"""Canonicalize URLs and derive the host-suffix/path-prefix expressions that get hashed.

This is Google Safe Browsing v4 "URLs and Hashing" (canonicalization and
suffix/prefix expressions), with the project's additions marked [project].
Pure and CPU-only: no I/O, no DNS. Every failure on a ``str`` input is an
:class:`~blocklist.core.errors.InvalidURL`.

Canonicalization, in order:

1. [project] Refuse input longer than ``MAX_URL_LENGTH`` characters. Internally
   the URL is handled as bytes: UTF-8, with lone surrogates ``U+DC80..U+DCFF``
   standing for raw bytes (Python's ``surrogateescape``), so the spec's
   ``"http://\\x01\\x80.com/"`` is written ``"http://\\x01\\udc80.com/"``.
2. Remove every tab, CR and LF; trim leading and trailing bytes <= 0x20.
3. Cut the fragment at the first ``#``. [project] In a URL that starts with
   ``http:`` or ``https:``, drop userinfo at the last ``@`` of the authority
   *as written*, before anything is unescaped: every HTTP client finds the
   host that way, so ``http://x%2F@host/`` must name ``host`` (unescaping
   first would read the host ``x`` while the request goes to ``host``).
4. Percent-unescape the whole URL repeatedly until no ``%XX`` is left. As the
   spec orders it, this happens *before* the URL is split, so ``%2F`` is a real
   ``/`` and ``%3F`` a real ``?`` afterwards. (Bounded: see ``_unescape_fully``.)
5. Split ``[scheme ":"] ["//"] [userinfo "@"] host [":" port] [path] ["?" query]``.
   The scheme must be http or https, any case [project]; none means http. A
   ``name:digits`` prefix without ``//`` is a host and port, not a scheme.
   Userinfo and port are dropped; the port must be decimal and <= 65535.
6. Host: map internationalized labels to punycode with UTS #46 as browsers do
   (only labels with non-ASCII characters; a label the ``idna`` package refuses
   keeps its bytes and is percent-escaped like any other byte) [project];
   remove leading and trailing dots; collapse consecutive dots; lowercase;
   normalize an IPv4 address written in any inet_aton form (decimal, octal,
   hex, 1 to 4 parts) to dotted decimal. A bracketed IPv6 literal is
   compressed and lowercased; an IPv4-mapped or NAT64 (64:ff9b::/96) one
   becomes its IPv4 address (from the newer Safe Browsing reference).
   A host that is empty, only dots, or contains ``:``, ``[`` or ``]`` outside
   a valid IPv6 literal is refused.
7. Path: resolve ``.`` and ``..`` segments and collapse runs of ``/``. The
   query is not normalized.
8. Percent-escape bytes <= 0x20, >= 0x7F, ``#`` and ``%`` in host, path and
   query, with uppercase hex.
9. [project] Refuse a result longer than ``MAX_URL_LENGTH``, so that every
   canonical URL can itself be canonicalized: ``canonicalize`` is idempotent.

Choices where the spec is silent:

- A numeric-looking host that is no valid IPv4 address (``256.1.1.1``,
  ``1.2.3.4.5``, ``09``) stays an ordinary host name: the spec normalizes only
  what "can be parsed as an IPv4 address".
- A bare ``?`` is kept (the spec's ``http://www.google.com/q?``), so the first
  expression is always the canonical URL without its scheme, ``"host/q?"``.

``server_view`` is the one other reading a lookup checks [project]: servers
split the query at the first ``?`` *as written* and decode ``%3F`` as a path
character, so nginx serves ``/page.html`` for ``/x%3F/../page.html``, which the
spec reads as path ``/x`` and query ``/../page.html``.

``web_form`` says how a URL of another scheme is checked [project], before and
outside canonicalization, which stays http(s) only: a WebSocket URL (``ws``,
``wss``) is the HTTP(S) request that opens it; any other scheme with an
authority (``ftp://``, ``gopher://``) names a host but no web page, so only
its host counts.
"""

from __future__ import annotations

import ipaddress
import re
from typing import NamedTuple
from urllib.parse import unquote_to_bytes

import idna

from blocklist.core.errors import InvalidURL

__all__ = [
    "MAX_URL_LENGTH",
    "CanonicalURL",
    "canonicalize",
    "canonicalize_host",
    "expressions",
    "host_suffixes",
    "path_prefixes",
    "server_view",
    "web_form",
]

MAX_URL_LENGTH = 8192
"""Longest URL accepted, before and after canonicalization (characters)."""

_MAX_HOSTS = 5  # the exact host plus up to 4 suffixes of its last five labels
_MAX_PREFIXES = 4  # path prefixes besides the exact path, with and without query

# Plain lowercase ASCII host whose last label starts with a letter: no escapes,
# no dot problems, no IDN, and it cannot be an IPv4 number.
_FAST_HOST = r"(?:[a-z0-9_-]+\.)*[a-z][a-z0-9_-]*"
_FAST_HOST_RE = re.compile(_FAST_HOST)
# A URL that canonicalizes to itself, provided its path has no "//" or "/.".
_FAST_URL_RE = re.compile(
    r"(https?)://(" + _FAST_HOST + r")"
    r"(/[^\x00-\x20\x7f-\U0010ffff#%?]*)?"
    r"(?:\?([^\x00-\x20\x7f-\U0010ffff#%]*))?"
)

_C0_AND_SPACE = bytes(range(0x21))
_SCHEME_RE = re.compile(rb"([A-Za-z][A-Za-z0-9+.\-]*):")
_PORT_NOT_SCHEME_RE = re.compile(rb"[0-9]+(?:[/?]|\Z)|\Z")  # "host:8080/x", "host:"
_AUTHORITY_END_RE = re.compile(rb"[/?]")
_DOTS_RE = re.compile(rb"\.\.+")
_IDN_DOTS_RE = re.compile("[.\u3002\uff0e\uff61]")  # UTS #46 label separators
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
_NEEDS_ESCAPE_RE = re.compile(rb"[\x00-\x20\x7f-\xff#%]")
_ESCAPED = [
    chr(b) if 0x20 < b < 0x7F and b not in b"#%" else f"%{b:02X}" for b in range(256)
]
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_ANY_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://")
_WEBSOCKET = {"ws": "http://", "wss": "https://"}
# Passes of the cheap C-level unescape before switching to the linear one.
_QUICK_UNESCAPE_PASSES = 4


class CanonicalURL(NamedTuple):
    """A URL in the spec's canonical form, split into the parts matching uses."""

    scheme: str  # "http" or "https"
    host: str  # canonical host: name, dotted-quad IPv4 or "[ipv6]"
    path: str  # canonical path, always starts with "/"
    query: str | None  # without "?"; None when there is no "?", "" for a bare "?"

    def __str__(self) -> str:
        if self.query is None:
            return f"{self.scheme}://{self.host}{self.path}"
        return f"{self.scheme}://{self.host}{self.path}?{self.query}"


def canonicalize(url: str) -> CanonicalURL:
    """Return the canonical form of ``url``; raise InvalidURL if it has none."""
    if len(url) > MAX_URL_LENGTH:
        raise InvalidURL(f"URL longer than {MAX_URL_LENGTH} characters")
    fast = _canonicalize_fast(url)
    return fast if fast is not None else _canonicalize_slow(url)


def web_form(url: str) -> tuple[str, bool]:
    """The http(s) URL a check reads for ``url`` of any scheme, and whether only its host counts.

    http and https URLs come back as they are, and so does anything without
    ``scheme://`` (canonicalize judges it). ``ws://`` and ``wss://`` become
    ``http://`` and ``https://``: a WebSocket opens with an HTTP(S) request for
    that resource. Any other ``scheme://`` URL comes back with ``http://`` in
    place of its scheme and True: its host is what to check (a host listed
    whole), its path names no web page.
    """
    match = _ANY_SCHEME_RE.match(url)
    if match is None:
        return url, False
    scheme = match[1].lower()
    if scheme in ("http", "https"):
        return url, False
    websocket = _WEBSOCKET.get(scheme)
    if websocket is not None:
        return websocket + url[match.end():], False
    return "http://" + url[match.end():], True


def is_canonical_name(host: str) -> bool:
    """Whether `host` is a DNS name that canonicalize_host returns unchanged (not an IP form)."""
    return _FAST_HOST_RE.fullmatch(host) is not None


def canonicalize_host(host: str) -> str:
    """Return the canonical form of a bare host (DNS name, "host:port", "[v6]:port")."""
    if len(host) > MAX_URL_LENGTH:
        raise InvalidURL(f"host longer than {MAX_URL_LENGTH} characters")
    if _FAST_HOST_RE.fullmatch(host):
        return host
    if any(c in host for c in "/?#"):
        raise InvalidURL(f"not a bare host: {_show(host)}")
    # Same rules as the host of a URL, so a DNS name and a URL agree.
    return _canonicalize_slow("http://" + host).host


def expressions(url: str | CanonicalURL) -> list[str]:
    """Return the spec's host-suffix/path-prefix expressions, most specific first."""
    canonical = url if isinstance(url, CanonicalURL) else canonicalize(url)
    hosts = [canonical.host]
    for suffix in host_suffixes(canonical.host)[1:]:
        if suffix.count(".") < _MAX_HOSTS and len(hosts) < _MAX_HOSTS:
            hosts.append(suffix)
    path = canonical.path
    paths = [path] if canonical.query is None else [f"{path}?{canonical.query}", path]
    for prefix in path_prefixes(path)[:_MAX_PREFIXES]:
        if prefix not in paths:
            paths.append(prefix)
    return [host + p for host in hosts for p in paths]


def host_suffixes(host: str) -> list[str]:
    """Return a canonical host and each parent down to its last two labels.

    No limit on depth (the matcher decides how many to use); an IP address or a
    single-label host is its own only suffix.
    """
    if host.startswith("[") or _is_canonical_ipv4(host):
        return [host]
    labels = host.split(".")
    return [".".join(labels[i:]) for i in range(max(1, len(labels) - 1))]


def path_prefixes(path: str) -> list[str]:
    """Return every "/"-terminated prefix of a canonical path, shortest first, no limit."""
    if not path.startswith("/"):
        raise InvalidURL(f"path does not start with '/': {_show(path)}")
    prefixes = ["/"]
    slash = path.find("/", 1)
    while slash != -1:
        prefixes.append(path[: slash + 1])
        slash = path.find("/", slash + 1)
    return prefixes


def _canonicalize_fast(url: str) -> CanonicalURL | None:
    """Return ``url`` split up if it is already canonical, else None (use the slow path)."""
    match = _FAST_URL_RE.fullmatch(url)
    if match is None:
        return None
    scheme, host, path, query = match.groups()
    if path is None:
        path = "/"
    elif "//" in path or "/." in path:
        return None
    return CanonicalURL(scheme, host, path, query)


def _canonicalize_slow(url: str) -> CanonicalURL:
    """Canonicalize any URL by the full rules in the module docstring."""
    if len(url) > MAX_URL_LENGTH:
        raise InvalidURL(f"URL longer than {MAX_URL_LENGTH} characters")
    raw = _to_bytes(url).translate(None, b"\t\r\n").strip(_C0_AND_SPACE)
    raw = _unescape_fully(_drop_userinfo(raw.partition(b"#")[0]))

    scheme, rest = b"http", raw
    match = _SCHEME_RE.match(raw)
    if match is not None:
        name = match[1].lower()
        after = raw[match.end() :]
        if name in (b"http", b"https"):
            # Browsers ignore any number of slashes after a special scheme.
            scheme, rest = name, after.lstrip(b"/")
        elif not _PORT_NOT_SCHEME_RE.match(after):
            raise InvalidURL(
                f"unsupported scheme {name.decode('ascii')!r} (only http and https)"
            )

    end = _AUTHORITY_END_RE.search(rest)
    authority, tail = (rest, b"") if end is None else (rest[: end.start()], rest[end.start() :])
    host = _canonical_host(_strip_userinfo_and_port(authority))

    if tail.startswith(b"/"):
        raw_path, question, raw_query = tail.partition(b"?")
        path = _escape(_normalize_path(raw_path))
    else:
        path, question, raw_query = "/", tail[:1], tail[1:]
    query = _escape(raw_query) if question else None

    result = CanonicalURL(scheme.decode("ascii"), host, path, query)
    length = len(result.scheme) + 3 + len(host) + len(path)
    if query is not None:
        length += 1 + len(query)
    if length > MAX_URL_LENGTH:
        # Escaping can triple the length; refusing here keeps str(result) re-canonicalizable.
        raise InvalidURL(f"canonical URL longer than {MAX_URL_LENGTH} characters")
    return result


def server_view(url: str) -> CanonicalURL | None:
    """``url`` as an HTTP server splits it, if that differs from ``canonicalize(url)``; else None.

    The query starts at the first ``?`` as written; a ``?`` that only unescaping
    produced stays in the path (as ``%3F``), where ``.`` and ``..`` are resolved
    over it, as nginx does. Raises InvalidURL when ``canonicalize`` would.
    """
    canonical = canonicalize(url)
    if "%" not in url:
        return None
    raw = _drop_userinfo(_to_bytes(url).translate(None, b"\t\r\n").strip(_C0_AND_SPACE).partition(b"#")[0])
    start, stop = _raw_authority(raw)
    raw_path, question, raw_query = raw[stop:].partition(b"?")
    if not raw_path.startswith(b"/"):
        return None
    path = _unescape_fully(raw_path)
    if b"?" not in path:
        return None  # no escaped "?": both readings split at the same place
    query = _escape(_unescape_fully(raw_query)) if question else None
    result = CanonicalURL(canonical.scheme, canonical.host,
                          _escape(_normalize_path(path)).replace("?", "%3F"), query)
    return None if result == canonical else result


def _raw_authority(raw: bytes) -> tuple[int, int]:
    """(start, end) of the authority of a URL as written (before unescaping)."""
    start = 0
    match = _SCHEME_RE.match(raw)
    if match is not None and match[1].lower() in (b"http", b"https"):
        start = match.end()
        while start < len(raw) and raw[start] == 0x2F:  # any number of slashes, as browsers
            start += 1
    end = _AUTHORITY_END_RE.search(raw, start)
    return start, len(raw) if end is None else end.start()


def _drop_userinfo(raw: bytes) -> bytes:
    """Remove userinfo up to the last "@" of the authority as written (step 3)."""
    if b"@" not in raw:
        return raw
    match = _SCHEME_RE.match(raw)
    if match is None or match[1].lower() not in (b"http", b"https"):
        # No scheme as written (it may be escaped, "http%3A%2F%2F..."), another scheme or
        # "host:port": step 5 decides after unescaping. Requests always carry the scheme.
        return raw
    start, stop = _raw_authority(raw)
    at = raw.rfind(b"@", start, stop)
    if at == -1 or at + 1 == stop:
        return raw  # no userinfo, or nothing after it: step 5 refuses the empty host
    return raw[:start] + raw[at + 1:]


def _to_bytes(text: str) -> bytes:
    """Encode as UTF-8, turning surrogate-escaped bytes back into those bytes."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        # Other lone surrogates have no byte meaning; keep them deterministic.
        return text.encode("utf-8", "surrogatepass")


def _unescape_fully(data: bytes) -> bytes:
    """Percent-unescape until no %XX is left, in time linear in len(data).

    A few C-level passes settle real URLs. Crafted nesting ("%252525...") would
    need one pass per level, so after that a single stack pass finishes the job;
    it reaches the same result because escapes never overlap, so the order in
    which they are decoded does not matter.
    """
    for _ in range(_QUICK_UNESCAPE_PASSES):
        if b"%" not in data:
            return data
        decoded = unquote_to_bytes(data)
        if decoded == data:
            return data
        data = decoded
    out = bytearray()
    for byte in data:
        out.append(byte)
        while (
            len(out) >= 3 and out[-3] == 0x25 and out[-2] in _HEX_DIGITS and out[-1] in _HEX_DIGITS
        ):
            value = int(out[-2:], 16)
            del out[-3:]
            out.append(value)
    return bytes(out)


def _strip_userinfo_and_port(authority: bytes) -> bytes:
    """Return the host part of an authority, checking the port it drops."""
    host = authority.rpartition(b"@")[2]  # browsers split at the last "@"
    if host.startswith(b"["):
        close = host.find(b"]")
        if close == -1:
            raise InvalidURL(f"unterminated IPv6 literal: {_show(host)}")
        host, port = host[: close + 1], host[close + 1 :]
        if port and not port.startswith(b":"):
            raise InvalidURL(f"junk after IPv6 literal: {_show(port)}")
        port = port[1:]
    else:
        host, _, port = host.rpartition(b":") if b":" in host else (host, b"", b"")
    if port and not (port.isdigit() and len(port) <= 5 and int(port) <= 65535):
        raise InvalidURL(f"invalid port: {_show(port)}")
    return host


def _canonical_host(host: bytes) -> str:
    """Canonicalize an unescaped host (step 6 of the module docstring)."""
    if host.startswith(b"["):
        return _canonical_ipv6(host)
    if not host.isascii():
        host = _idna_labels(host)
    host = _DOTS_RE.sub(b".", host).strip(b".")
    if not host:
        raise InvalidURL("empty host")
    if b":" in host or b"[" in host or b"]" in host:
        raise InvalidURL(f"invalid host: {_show(host)}")
    host = host.lower()
    ipv4 = _parse_ipv4(host)
    return ipv4 if ipv4 is not None else _escape(host)


def _idna_labels(host: bytes) -> bytes:
    """Map each non-ASCII label to punycode by UTS #46; keep what idna refuses."""
    try:
        text = host.decode("utf-8")
    except UnicodeDecodeError:
        return host  # not text at all: the bytes get percent-escaped
    labels = []
    for label in _IDN_DOTS_RE.split(text):
        if label.isascii():
            # ASCII labels are only lowercased: idna would refuse "_" and the like.
            labels.append(label.encode("ascii"))
            continue
        try:
            labels.append(idna.encode(label, uts46=True, transitional=False))
        except (UnicodeError, ValueError):  # idna.IDNAError is both
            labels.append(label.encode("utf-8", "surrogateescape"))
    return b".".join(labels)


def _parse_ipv4(host: bytes) -> str | None:
    """Return dotted decimal if ``host`` is an inet_aton-style IPv4 address, else None."""
    parts = host.split(b".")
    if len(parts) > 4:
        return None
    numbers = []
    for part in parts:
        number = _parse_ipv4_number(part)
        if number is None:
            return None
        numbers.append(number)
    # Every part but the last is one byte; the last fills the remaining bytes.
    *leading, last = numbers
    if any(n > 255 for n in leading) or last >= 1 << (8 * (5 - len(numbers))):
        return None
    value = last
    for index, number in enumerate(leading):
        value |= number << (8 * (3 - index))
    return f"{value >> 24}.{(value >> 16) & 255}.{(value >> 8) & 255}.{value & 255}"


def _parse_ipv4_number(part: bytes) -> int | None:
    """Parse one lowercase IPv4 part: 0x hex, 0-prefixed octal or decimal."""
    if part.startswith(b"0x"):
        digits, base, alphabet = part[2:], 16, b"0123456789abcdef"
    elif part.startswith(b"0") and len(part) > 1:
        digits, base, alphabet = part[1:], 8, b"01234567"
    else:
        digits, base, alphabet = part, 10, b"0123456789"
    if not digits:
        return 0 if base == 16 else None  # "0x" alone is 0, as in browsers
    if digits.translate(None, alphabet):
        return None
    digits = digits.lstrip(b"0") or b"0"
    if len(digits) > 11:
        return None  # larger than 2**32 in any base; also keeps int() cheap
    return int(digits, base)


def _canonical_ipv6(host: bytes) -> str:
    """Normalize a bracketed IPv6 literal; embedded IPv4 forms become IPv4."""
    inner = host[1:-1]
    if b"%" in inner:
        raise InvalidURL(f"IPv6 zone identifiers are not allowed: {_show(host)}")
    try:
        address = ipaddress.IPv6Address(inner.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise InvalidURL(f"invalid IPv6 literal: {_show(host)}") from None
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    if address in _NAT64:
        return str(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return f"[{address.compressed}]"


def _normalize_path(path: bytes) -> bytes:
    """Resolve "." and ".." segments and collapse "//" in an unescaped path."""
    segments: list[bytes] = []
    for segment in path.split(b"/"):
        if segment == b"..":
            if segments:
                segments.pop()
        elif segment and segment != b".":
            segments.append(segment)
    normalized = b"/" + b"/".join(segments)
    # "/a/", "/a/." and "/a/b/.." all name a directory: keep the trailing slash.
    if segments and path.rpartition(b"/")[2] in (b"", b".", b".."):
        normalized += b"/"
    return normalized


def _escape(data: bytes) -> str:
    """Percent-escape bytes <= 0x20, >= 0x7F, "#" and "%" (uppercase hex)."""
    if _NEEDS_ESCAPE_RE.search(data) is None:
        return data.decode("ascii")
    return "".join([_ESCAPED[byte] for byte in data])


def _is_canonical_ipv4(host: str) -> bool:
    """Tell whether a canonical host is a dotted-quad IPv4 address."""
    parts = host.split(".")
    return len(parts) == 4 and all(
        part.isascii() and part.isdigit() and str(int(part)) == part and int(part) <= 255
        for part in parts
    )


def _show(text: str | bytes, limit: int = 80) -> str:
    """Render (part of) user input for an error message, bounded in length."""
    shown = repr(text[:limit])
    return shown + "..." if len(text) > limit else shown
