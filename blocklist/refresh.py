"""Freshness: the published manifest re-signed with a new expiry, by `blocklist refresh` or serve's refresher.

A plugin calls a manifest stale at its expiry (24 hours after publishing by
default), so a mirror or network path that freezes what a node sees is
noticed within hours. When nothing changed, the manifest is signed again
under the same version with a later `created` and `expires`: plugins take
that as no change (docs/FORMAT.md, "Freshness"). `blocklist serve` runs the
refresher, which re-signs once half of the manifest's lifetime is gone;
static mirrors get the same from `blocklist refresh` run by cron or a timer.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time

from blocklist.core.errors import BlocklistError, ConfigError, StoreError
from blocklist.core.format.manifest import Manifest
from blocklist.home import MAX_EXPIRES_HOURS, Home
from blocklist.publish import MANIFEST_NAME, current_manifest, resign
from blocklist.store import Store

log = logging.getLogger("blocklist.refresh")

MIN_LIFETIME = 60
MAX_LIFETIME = MAX_EXPIRES_HOURS * 3600
REFRESH_CHECK = 60.0  # seconds between the refresher's looks at the manifest, at most
_DURATION = re.compile(r"([0-9]{1,7})([smhd])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """Seconds of "90s", "30m", "24h" or "2d", from MIN_LIFETIME to MAX_LIFETIME."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ConfigError(f"{text[:20]!r} is not a duration like 90s, 30m, 24h or 2d")
    seconds = int(match.group(1)) * _UNIT[match.group(2)]
    if not MIN_LIFETIME <= seconds <= MAX_LIFETIME:
        raise ConfigError(f"{text[:20]}: a manifest lives from {MIN_LIFETIME}s to {MAX_LIFETIME // 3600}h")
    return seconds


def refresh(home: Home, actor: str, expires_in: int | None = None, now: int | None = None,
            only_if_due: bool = False) -> tuple[Manifest, bool]:
    """Re-sign the published manifest to live `expires_in` seconds from now; (manifest, re-signed).

    Without `expires_in` it lives as long as blocklist.yaml's expires_hours
    says, or, with `only_if_due` (the refresher), as long as it lived before;
    `only_if_due` re-signs only once half of that lifetime is gone. Under the
    store's write lock, so it never re-signs a manifest that a publish replaces.
    """
    now = int(time.time()) if now is None else now
    store = Store(home.store_path)
    try:
        with store.transaction():
            key, root = home.online_key()
            previous = current_manifest(home, key)
            if previous is None:
                raise StoreError("nothing published yet: run `blocklist publish`")
            lifetime = expires_in or int(home.config().expires_hours * 3600)
            if only_if_due:
                lifetime = min(max(previous.expires - previous.created, MIN_LIFETIME), MAX_LIFETIME)
                if previous.expires - now > lifetime / 2 and previous.root_version == root.version:
                    return previous, False
            manifest = resign(home, key, previous, root.version, now, now + lifetime)
            store.audit(actor, "refresh", "", {"manifest": manifest.version, "expires": manifest.expires})
    finally:
        store.close()
    return manifest, True


async def run_refresher(home: Home, interval: float = REFRESH_CHECK) -> None:
    """Keep the manifest fresh until cancelled; errors are logged and retried at the next look."""
    while True:
        wait = interval
        if not (home.publish_dir / MANIFEST_NAME).exists():
            await asyncio.sleep(wait)
            continue
        try:
            manifest, renewed = await asyncio.to_thread(refresh, home, "serve", None, None, True)
            if renewed:
                log.info("manifest re-signed version=%d expires_in=%ds", manifest.version,
                         manifest.expires - manifest.created)
            # look again before a quarter of the lifetime is left, however short it is
            wait = min(interval, max(1.0, (manifest.expires - manifest.created) / 4))
        except (BlocklistError, OSError) as exc:
            log.warning("manifest not re-signed reason=%r", str(exc)[:200])
        await asyncio.sleep(wait)
