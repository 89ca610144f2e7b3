#!/usr/bin/env bash
# Set up what blocklist needs on a fresh Debian: system programs (as root), a venv, the package.
#
# Idempotent and quiet when everything is there already. As root it apt-get installs the
# real programs the integration tests start (Squid, squidGuard, Unbound, nginx, Chromium,
# dig, curl, Prometheus and promtool, systemd-analyze); as another user it skips that step and those tests skip with a reason.
set -euo pipefail
cd "$(dirname "$0")/.."

# prometheus brings promtool; systemd brings systemd-analyze (the unit checks), absent from slim images.
DEBS="squid squidguard unbound python3-unbound dnsutils dnsperf nginx-light chromium curl prometheus systemd"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    missing=""
    for pkg in $DEBS; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
    done
    if [ -n "$missing" ]; then
        echo "bootstrap: installing Debian packages:$missing" >&2
        apt-get update -qq
        # policy-rc.d keeps the packages' own daemons from starting: tests start their own.
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
        rm -f /usr/sbin/policy-rc.d
    fi
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -e "$stamp" ]; then
    echo "bootstrap: installing Python packages into .venv" >&2
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    .venv/bin/python -m pip install -q -e '.[test]'
    rm -f .venv/.installed-* && touch "$stamp"
fi
