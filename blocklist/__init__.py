"""blocklist: the hotline application (store, import, publish, keys, serve, fleet, CLI).

The code both sides share lives in `blocklist.core`.
"""

from blocklist.core import __version__

__all__ = ["__version__"]
