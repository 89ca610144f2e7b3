"""The shared core both sides stand on: the hotline publishes with it, the plugin enforces with it.

Pure and synchronous: no sockets, no event loop, no hotline store. Hotline and plugin
must agree on every byte these modules produce.

    urls       canonical URLs and their lookup expressions (Google Safe Browsing)
    digests    scopes, entries and the salted digests of what is listed
    matcher    the verdict on a URL or a host: Bloom filter, then exact digests
    format     the bytes of snapshots, deltas, manifests and keys, a module per part (docs/FORMAT.md)
    protocol   the poll headers between a plugin and `blocklist serve`
    errors     one exception tree for both sides
    atomic     files replaced whole or not at all
    severity   Nagios states; timefmt and table: how operators read times and tables
"""

__version__ = "0.1.0"
