"""The proxy's own responses: the block page and the error pages, as complete HTTP/1.1 bytes.

No oracle: a block response depends only on the list's name, the
configured status, the request method (HEAD gets no body) and the current
minute, never on the URL, the matched entry or its scope. Pages are rendered
once per list and minute and reused.

Templates are `string.Template` HTML with these variables, all HTML-escaped:
`$list` (list name), `$appeal_url` (proxy.appeal_url, may be empty), `$time`
(UTC, to the minute), `$status` (the HTTP status), and `$appeal_link` (a
ready paragraph with the appeal link, or nothing when there is no appeal_url).
Unknown `$names` are left as they are (`safe_substitute`).
"""

from __future__ import annotations

import html
import time
from http import HTTPStatus
from pathlib import Path
from string import Template

from blocklist.core.errors import ConfigError
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
              extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason_phrase(status)}",
             f"Content-Type: {content_type}",
             f"Content-Length: {len(body)}",
             "Cache-Control: no-store",
             *(f"{name}: {value}" for name, value in extra),
             "Connection: close", "", ""]
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


class BlockPage:
    """Renders the block response of a list; identical bytes for every URL it blocks."""

    def __init__(self, config: ProxyConfig) -> None:
        self.status = config.block_status
        self.appeal_url = config.appeal_url
        self.template = load_template(config)
        self._cache: dict[tuple[str, str], bytes] = {}

    def render(self, list_name: str, minute: str | None = None) -> bytes:
        """The HTML body for `list_name` at `minute` ("YYYY-MM-DD HH:MM UTC"; default now)."""
        minute = minute or time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        appeal = html.escape(self.appeal_url, quote=True)
        link = (f'<p>If you believe this page was blocked in error, you can '
                f'<a href="{appeal}">appeal the block</a>.</p>') if self.appeal_url else ""
        text = self.template.safe_substitute(
            list=html.escape(list_name, quote=True), appeal_url=appeal, time=html.escape(minute),
            status=str(self.status), appeal_link=link)
        return text.encode("utf-8")

    def response(self, list_name: str, head_only: bool = False) -> bytes:
        """The complete HTTP response (status line, headers, body) blocking with `list_name`."""
        minute = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        key = (list_name, minute)
        full = self._cache.get(key)
        if full is None:
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            full = _response(self.status, self.render(list_name, minute), "text/html; charset=utf-8", False)
            self._cache[key] = full
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
