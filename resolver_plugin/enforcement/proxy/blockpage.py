"""The proxy's own responses: the block page and the error pages, as complete HTTP/1.1 bytes.

No oracle: a block response depends only on the list (its name and the
metadata the hotline signed for it: title, legal basis, appeal URL), the
configured status, the request method (HEAD gets no body) and the current
minute, never on the URL, the matched entry or its scope. Pages are rendered
once per list, metadata and minute and reused.

Templates are `string.Template` HTML with these variables, all HTML-escaped:
`$list` (list name), `$title` and `$legal_basis` (the list's, may be empty),
`$appeal_url` (the list's appeal URL, else proxy.appeal_url; may be empty),
`$time` (UTC, to the minute), `$status` (the HTTP status), `$list_info` (ready
paragraphs with the title and legal basis, or nothing) and `$appeal_link` (a
ready paragraph with the appeal link, or nothing when there is no appeal URL).
Unknown `$names` are left as they are (`safe_substitute`).

With an appeal URL the response carries `Link: <URL>; rel="blocked-by"` (RFC 7725),
when the URL is one a header can carry unchanged (the hotline's always is).
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path
from string import Template

from blocklist.core.errors import ConfigError
from blocklist.core.format.listmeta import ListMeta, meta_problem
from resolver_plugin.config import ProxyConfig

BUILTIN_TEMPLATE = Path(__file__).parents[2] / "templates" / "block.html"
MAX_TEMPLATE_BYTES = 1024 * 1024
_CACHE_SIZE = 64


def reason_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Blocked" if 400 <= status < 500 else "Error"


def _response(status: int, body: bytes, content_type: str, head_only: bool,
              extra: tuple[tuple[str, str], ...] = (), close: bool = True) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason_phrase(status)}",
             f"Content-Type: {content_type}",
             f"Content-Length: {len(body)}",
             "Cache-Control: no-store",
             *(f"{name}: {value}" for name, value in extra),
             *(["Connection: close"] if close else []), "", ""]
    head = "\r\n".join(lines).encode("latin-1")
    return head if head_only else head + body


def load_template(config: ProxyConfig) -> Template:
    """The configured block page template, or the built-in one; ConfigError if unusable."""
    path = Path(config.block_page) if config.block_page else BUILTIN_TEMPLATE
    try:
        with path.open("rb") as f:
            data = f.read(MAX_TEMPLATE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"proxy.block_page {path}: {exc.strerror}") from None
    if len(data) > MAX_TEMPLATE_BYTES:
        raise ConfigError(f"proxy.block_page {path}: larger than {MAX_TEMPLATE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"proxy.block_page {path}: not UTF-8") from None
    template = Template(text)
    if not template.is_valid():
        raise ConfigError(f"proxy.block_page {path}: invalid $-placeholder (write $$ for a dollar sign)")
    return template


_NO_META = ListMeta()


def _no_meta(name: str) -> ListMeta:
    return _NO_META


class BlockPage:
    """Renders the block response of a list; identical bytes for every URL it blocks.

    `list_meta` gives a list's metadata (LiveMatcher.list_meta: from the verified manifest).
    """

    def __init__(self, config: ProxyConfig, list_meta: Callable[[str], ListMeta] = _no_meta) -> None:
        self.status = config.block_status
        self.appeal_url = config.appeal_url
        self.template = load_template(config)
        self.list_meta = list_meta
        self._cache: dict[tuple[str, str, bool], tuple[ListMeta, bytes]] = {}
        self._minute_at = -1
        self._minute = ""

    def render(self, list_name: str, minute: str | None = None, meta: ListMeta = _NO_META) -> bytes:
        """The HTML body for `list_name` at `minute` ("YYYY-MM-DD HH:MM UTC"; default now)."""
        minute = minute or time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        appeal_url = meta.appeal_url or self.appeal_url
        appeal = html.escape(appeal_url, quote=True)
        link = (f'<p>If you believe this page was blocked in error, you can '
                f'<a href="{appeal}">appeal the block</a>.</p>') if appeal_url else ""
        title, basis = html.escape(meta.title, quote=True), html.escape(meta.legal_basis, quote=True)
        info = "".join([f'<p class="who">Blocked by <strong>{title}</strong>.</p>' if title else "",
                        f'<p class="basis">Legal basis: {basis}</p>' if basis else ""])
        text = self.template.safe_substitute(
            list=html.escape(list_name, quote=True), appeal_url=appeal, time=html.escape(minute),
            status=str(self.status), appeal_link=link, title=title, legal_basis=basis, list_info=info)
        return text.encode("utf-8")

    def response(self, list_name: str, head_only: bool = False, keep_alive: bool = False) -> bytes:
        """The complete HTTP response (status line, headers, body) blocking with `list_name`;
        with `Connection: close` unless `keep_alive`."""
        now = int(time.time()) // 60
        if now != self._minute_at:  # the page names the minute: one strftime a minute
            self._minute_at, self._minute = now, time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(now * 60))
        minute = self._minute
        meta = self.list_meta(list_name)
        key = (list_name, minute, keep_alive)
        hit = self._cache.get(key)
        if hit is not None and (hit[0] is meta or hit[0] == meta):  # made with the metadata in force now
            full = hit[1]
        else:
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            appeal_url = meta.appeal_url or self.appeal_url
            extra: tuple[tuple[str, str], ...] = ()
            if appeal_url and meta_problem(ListMeta(appeal_url=appeal_url)) is None:
                extra = (("Link", f'<{appeal_url}>; rel="blocked-by"'),)
            full = _response(self.status, self.render(list_name, minute, meta), "text/html; charset=utf-8",
                             False, extra, close=not keep_alive)
            self._cache[key] = (meta, full)
        if head_only:
            return full[:full.index(b"\r\n\r\n") + 4]
        return full


_ERROR_TEXT = {
    400: "The request could not be understood by the proxy.",
    403: "This proxy does not serve your network.",
    408: "The request was not received in time.",
    413: "The request body is larger than this proxy accepts.",
    414: "The requested URL is longer than this proxy accepts.",
    417: "The request's Expect header is not supported.",
    431: "The request headers are larger than this proxy accepts.",
    501: "The request uses a feature this proxy does not implement.",
    502: "The proxy could not get a valid response from the upstream server.",
    503: "The proxy is busy; please try again.",
    504: "The upstream server did not answer in time.",
    508: "The request came back to this proxy: its resolver must not point at the proxy.",
}


def error_response(status: int, head_only: bool = False, text: str | None = None) -> bytes:
    """A short, fixed error page (`text`, else the status's own): it never echoes anything from the request."""
    phrase = reason_phrase(status)
    text = text or _ERROR_TEXT.get(status, phrase)
    body = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{status} {phrase}"
            f"</title></head>\n<body><h1>{status} {phrase}</h1><p>{text}</p></body></html>\n").encode()
    return _response(status, body, "text/html; charset=utf-8", head_only)
