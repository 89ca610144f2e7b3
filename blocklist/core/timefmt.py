"""Times as operators read them in tables and status lines: "5m 3s ago", "2026-12-01 10:22Z"."""

from __future__ import annotations

import time

__all__ = ["human_duration", "relative", "utc"]


def human_duration(seconds: float) -> str:
    """The largest unit and the next, if not zero: "45s", "5m 3s", "2h", "3d 4h"."""
    total = int(abs(seconds))
    units = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
    first = next((i for i, (_, size) in enumerate(units) if total >= size), len(units) - 1)
    (big, big_size), (small, small_size) = units[first], units[min(first + 1, len(units) - 1)]
    text = f"{total // big_size}{big}"
    rest = total % big_size // small_size
    return text + (f" {rest}{small}" if rest and small != big else "")


def relative(ts: float, now: float) -> str:
    """"5m 3s ago" or "in 6d 23h"."""
    if ts <= now:
        return f"{human_duration(now - ts)} ago"
    return f"in {human_duration(ts - now)}"


def utc(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts)) + "Z"
