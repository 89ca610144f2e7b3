"""The URL a request names: its absolute-form target, or http://Host + its origin-form path.

Absolute-form (`GET http://host/path`) is what browsers and Squid send to a
proxy they are configured to use; origin-form (`GET /path` + `Host:`) is what
a client that stage 1's DNS answer (resolver.proxy_address) or an interception
rule sent here sends, as if we were the origin. One that already carries our
Via came from us (our own resolver points at us): a loop, 508.
"""

from __future__ import annotations

import re

from resolver_plugin.enforcement.proxy.forward import VIA
from resolver_plugin.enforcement.proxy.head import RequestHead

OTHER_SCHEME = -1  # absolute_target: a "scheme://" target of a scheme we do not forward
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]+)(?::[0-9]{1,5})?")


def absolute_target(head: RequestHead) -> str | int:
    """The request's absolute URL, or the status that refuses it (400 malformed, 508 a loop through us),
    or OTHER_SCHEME for an absolute target of a scheme other than http(s)."""
    target = head.target
    if target.startswith("/"):
        # Origin-form: a client sent here by stage 1's DNS answer, or by interception.
        intercepted = intercepted_url(head)
        if intercepted is None:
            return 400
        if any(VIA in value for value in head.values("Via")):
            return 508  # it came from us: a loop
        return intercepted
    if not target[:8].lower().startswith(("http://", "https://")):
        return OTHER_SCHEME if _SCHEME.match(target) else 400
    return target


def intercepted_url(head: RequestHead) -> str | None:
    """The absolute URL of an origin-form request: http:// + its one valid Host + its target."""
    hosts = head.values("Host")
    if len(hosts) != 1 or not _HOST.fullmatch(hosts[0]):
        return None
    return f"http://{hosts[0]}{head.target}"
