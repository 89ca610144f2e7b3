"""blocklist: hotline publisher and the shared core (urls, digests, format, matcher)."""

__version__ = "0.1.0"
