"""Prometheus metrics of a plugin process: checks, blocks, latency and Bloom outcomes.

Enforcement shells call `observe_check` / `observe_host_check` on every
decision; labels are list names and components, never URLs or hosts.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from blocklist.matcher import HostVerdict, Verdict

CHECKS = Counter("blocklist_checks_total", "URL and host checks answered",
                 ["component", "kind"])
BLOCKS = Counter("blocklist_blocks_total", "Checks answered 'blocked' (or sent to the proxy), by list",
                 ["component", "list", "action"])
INVALID = Counter("blocklist_invalid_requests_total", "Requests that could not be checked",
                  ["component"])
CHECK_SECONDS = Histogram("blocklist_check_seconds", "Time to answer one check",
                          ["component"],
                          buckets=(1e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2, 0.1))


def observe_check(component: str, verdict: Verdict, seconds: float) -> None:
    CHECKS.labels(component, "url").inc()
    CHECK_SECONDS.labels(component).observe(seconds)
    if verdict.blocked:
        BLOCKS.labels(component, verdict.list or "", "block").inc()


def observe_host_check(component: str, verdict: HostVerdict, seconds: float) -> None:
    CHECKS.labels(component, "host").inc()
    CHECK_SECONDS.labels(component).observe(seconds)
    if verdict.list is not None:
        BLOCKS.labels(component, verdict.list, verdict.action.value).inc()


def observe_invalid(component: str) -> None:
    INVALID.labels(component).inc()
