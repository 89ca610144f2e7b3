"""resolver_plugin: the ISP side. Distribution (trust, sync), enforcement (Squid helper, proxy,
Unbound module) and operations (status, admin, metrics), on a shared config and cache.

It imports nothing of the hotline application: only `blocklist.core`.
"""
