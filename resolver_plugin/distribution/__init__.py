"""Distribution: fetch the published files, verify every one, and keep the cache (trust, sync)."""
