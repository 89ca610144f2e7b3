"""Nagios plugin states, shared by the plugin's `status` and the hotline's `fleet`."""

from __future__ import annotations

import enum
from collections.abc import Iterable

__all__ = ["Severity", "worst"]


class Severity(enum.IntEnum):
    """A Nagios plugin state; the value is the exit code."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3


# UNKNOWN outranks WARNING (we cannot tell how bad it is) but not CRITICAL (a known outage).
_RANK = {Severity.OK: 0, Severity.WARNING: 1, Severity.UNKNOWN: 2, Severity.CRITICAL: 3}


def worst(states: Iterable[Severity]) -> Severity:
    return max(states, key=_RANK.__getitem__, default=Severity.OK)
