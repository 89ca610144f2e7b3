"""resolver_plugin: the ISP side: sync, cache, Squid helper, HTTP proxy, Unbound module, status."""
