"""The filtering HTTP proxy: request heads, forwarding, the TLS listener and the block page."""
