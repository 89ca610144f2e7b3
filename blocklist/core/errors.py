"""The one exception hierarchy of the project; shells turn it into user-facing errors."""

from __future__ import annotations


class BlocklistError(Exception):
    """Base of every error this project raises on purpose."""


class InvalidURL(BlocklistError, ValueError):
    """A URL or host that cannot be canonicalized (bad scheme, bad host, ...)."""


class FormatError(BlocklistError):
    """Bytes that are not a valid snapshot, delta or manifest."""


class SignatureError(FormatError):
    """A signature that does not verify, or a key that is not trusted."""


class RollbackError(BlocklistError):
    """An artifact older than (or equal to) what is already trusted."""


class ExpiredError(BlocklistError):
    """A manifest past its expiry: the source may be frozen."""


class ChecksumError(FormatError):
    """A file or a resulting digest set whose hash is not the one announced."""


class SizeError(FormatError):
    """An artifact larger than its announced size or a configured limit."""


class StoreError(BlocklistError):
    """The hotline store refused a change (duplicate, missing, bad list, ...)."""


class ConfigError(BlocklistError):
    """A configuration file or key that is missing or invalid."""
