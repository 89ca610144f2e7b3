"""Enforcement stages: the Squid helper, the filtering proxy and the Unbound module."""
