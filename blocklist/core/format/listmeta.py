"""A list's display metadata: who blocks and why, as the hotline sets it and block pages show it.

    {"title": "...", "legal_basis": "...", "appeal_url": "https://..."}

An optional object of a list in the signed manifest (docs/FORMAT.md, section 4);
every field optional, absent when empty. Plain text, never markup: a block page
escapes it. The writer (the hotline) and the reader (the plugin) apply the same
bounds, so a block page, a Squid message and an HTTP header can carry it as it is:

- title at most 200 and legal_basis at most 1000 characters, with no control
  characters (C0, DEL, C1), no line or paragraph separators and no bidirectional
  formatting characters (which could reorder what a page shows);
- appeal_url at most 2000 characters, an absolute http(s) URL with a host, of
  printable ASCII without space, `"`, `<`, `>`, `\\`, `^`, `` ` ``, `{`, `|` or `}`
  (it goes into an href and a `Link` header unchanged).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from blocklist.core.errors import FormatError

__all__ = ["MAX_APPEAL_URL", "MAX_LEGAL_BASIS", "MAX_TITLE", "ListMeta", "meta_from_json", "meta_problem"]

MAX_TITLE = 200
MAX_LEGAL_BASIS = 1000
MAX_APPEAL_URL = 2000
_FIELDS = ("title", "legal_basis", "appeal_url")
_NOT_TEXT = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")
_URL = re.compile(r"https?://[A-Za-z0-9.\-\[\]:]+(?::[0-9]{1,5})?(?:[/?#][!#-;=?-\[\]_a-z~]*)?", re.ASCII)


@dataclass(frozen=True)
class ListMeta:
    """Who blocks with a list, on what basis, and where to appeal; "" is unset."""

    title: str = ""
    legal_basis: str = ""
    appeal_url: str = ""

    def __bool__(self) -> bool:
        return bool(self.title or self.legal_basis or self.appeal_url)

    def as_json(self) -> dict[str, str]:
        """The manifest's object: only the fields that are set."""
        return {name: value for name in _FIELDS if (value := getattr(self, name))}


def meta_problem(meta: ListMeta) -> str | None:
    """What is wrong with `meta`, or None."""
    for name, limit in (("title", MAX_TITLE), ("legal_basis", MAX_LEGAL_BASIS)):
        value = getattr(meta, name)
        if len(value) > limit:
            return f"{name} longer than {limit} characters"
        if _NOT_TEXT.search(value):
            return f"{name} holds a control or formatting character: plain text on one line only"
        if value != value.strip():
            return f"{name} starts or ends with blanks"
    if len(meta.appeal_url) > MAX_APPEAL_URL:
        return f"appeal_url longer than {MAX_APPEAL_URL} characters"
    if meta.appeal_url and not _URL.fullmatch(meta.appeal_url):
        return ("appeal_url must be an absolute http(s) URL of printable ASCII, without spaces, "
                'quotes, <, >, \\, ^, `, {, | or } (percent-encode them)')
    return None


def meta_from_json(value: Any, what: str) -> ListMeta:
    """The ListMeta of a manifest's `meta` object; FormatError if it breaks a bound."""
    if not isinstance(value, dict) or not set(value) <= set(_FIELDS) or not all(
            isinstance(v, str) for v in value.values()):
        raise FormatError(f"{what}: meta must be an object of title, legal_basis and appeal_url strings")
    meta = ListMeta(**value)
    problem = meta_problem(meta)
    if problem is not None:
        raise FormatError(f"{what}: meta: {problem}")
    return meta
