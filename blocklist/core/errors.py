"""The one exception hierarchy of the project; shells turn it into user-facing errors.

Every error carries its `kind`, the ErrorKind a plugin's sync counts and reports
it under (status.json, the `kind` label of /metrics, log lines), so no caller
maps exception classes to kinds or reads a kind back out of a message.
"""

from __future__ import annotations

import enum

__all__ = [
    "BlocklistError", "ChecksumError", "ConfigError", "ErrorKind", "ExpiredError", "FormatError",
    "InvalidURL", "RollbackError", "SignatureError", "SizeError", "StoreError", "TransportError",
]


class ErrorKind(enum.StrEnum):
    """Why a sync failed. The values are the words status.json, /metrics and the logs show.

    A StrEnum so that formatting a kind ("%s", f-strings) gives its value, as the
    plain strings these replace did.
    """

    # The source sent something this node refused (see is_verification).
    SIGNATURE = "signature"
    ROLLBACK = "rollback"
    EXPIRED = "expired"
    CHECKSUM = "checksum"
    SIZE = "size"
    FORMAT = "format"
    # The source could not be reached, or what it sent could not be kept.
    NETWORK = "network"
    TIMEOUT = "timeout"
    HTTP = "http"
    CACHE = "cache"
    DISK = "disk"

    @property
    def is_verification(self) -> bool:
        """The source sent something we refused (someone may be tampering), as opposed to
        "we could not reach it or store it", which matters only once the node lags."""
        return self in _VERIFICATION


_VERIFICATION = frozenset({ErrorKind.SIGNATURE, ErrorKind.ROLLBACK, ErrorKind.EXPIRED, ErrorKind.CHECKSUM,
                           ErrorKind.SIZE, ErrorKind.FORMAT})


class BlocklistError(Exception):
    """Base of every error this project raises on purpose."""

    # An error no subclass classifies is counted as bytes that did not read as expected.
    kind: ErrorKind = ErrorKind.FORMAT


class InvalidURL(BlocklistError, ValueError):
    """A URL or host that cannot be canonicalized (bad scheme, bad host, ...)."""


class FormatError(BlocklistError):
    """Bytes that are not a valid snapshot, delta or manifest."""

    kind = ErrorKind.FORMAT


class SignatureError(FormatError):
    """A signature that does not verify, or a key that is not trusted."""

    kind = ErrorKind.SIGNATURE


class RollbackError(BlocklistError):
    """An artifact older than (or equal to) what is already trusted."""

    kind = ErrorKind.ROLLBACK


class ExpiredError(BlocklistError):
    """A manifest past its expiry: the source may be frozen."""

    kind = ErrorKind.EXPIRED


class ChecksumError(FormatError):
    """A file or a resulting digest set whose hash is not the one announced."""

    kind = ErrorKind.CHECKSUM


class SizeError(FormatError):
    """An artifact larger than its announced size or a configured limit."""

    kind = ErrorKind.SIZE


class TransportError(BlocklistError):
    """A failure that is not the artifact's fault: network, timeout, HTTP status, cache.

    Its kind is given where it is raised: one cause, one class, many kinds.
    """

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        # ErrorKind(kind) checks it: a kind outside ErrorKind fails where it is raised,
        # not later in status.json or a metrics label.
        self.kind = ErrorKind(kind)


class StoreError(BlocklistError):
    """The hotline store refused a change (duplicate, missing, bad list, ...)."""


class ConfigError(BlocklistError):
    """A configuration file or key that is missing or invalid."""
