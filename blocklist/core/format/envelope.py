"""Signed JSON documents: {"signed": ..., "signatures": [...]}, written, opened and counted against a threshold.

Each signature is an Ed25519 signature over the canonical JSON of "signed",
however the file itself is laid out. A reader refuses a document with more
than MAX_SIGNATURES entries before it checks any, and checks only entries of
at most MAX_SIG_TEXT characters naming a key it asks for that no earlier entry
proved, each distinct entry once: a crafted document costs at most
MAX_SIGNATURES checks, and its errors are one short line.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from blocklist.core.errors import FormatError, SignatureError, SizeError
from blocklist.core.format.keys import Keyring, key_id, verify_signature
from blocklist.core.format.strictjson import canonical_json, strict_loads, typed_field

__all__ = ["MAX_SIGNATURES", "MAX_SIG_TEXT", "Envelope", "seal", "open_envelope", "count_signers",
           "require_threshold"]

MAX_SIGNATURES = 32   # twice the keys a role may name (core.format.root.MAX_ROLE_KEYS)
MAX_SIG_TEXT = 100    # base64 of a 64-byte signature is 88 characters


@dataclass(frozen=True)
class Envelope:
    """An opened document: its "signed" object, the canonical bytes signed, and the raw signature entries."""

    signed: dict[str, Any]
    message: bytes
    signatures: tuple[Any, ...]


def seal(signed: dict[str, Any], private_keys: Iterable[Ed25519PrivateKey]) -> bytes:
    """The document: `signed` and one signature by each key (each key once)."""
    message = canonical_json(signed)
    seen: set[str] = set()
    signatures = []
    for key in private_keys:
        kid = key_id(key.public_key())
        if kid not in seen:
            seen.add(kid)
            signatures.append({"key_id": kid, "sig": base64.b64encode(key.sign(message)).decode()})
    doc = {"signed": signed, "signatures": signatures}
    return json.dumps(doc, sort_keys=True, indent=1).encode("ascii") + b"\n"


def open_envelope(data: bytes, what: str, max_size: int) -> Envelope:
    """Parse a document within `max_size` bytes and MAX_SIGNATURES signatures; nothing is verified yet."""
    if len(data) > max_size:
        raise SizeError(f"{what}: {len(data)} bytes exceeds the limit of {max_size}")
    doc = strict_loads(data, what)
    if not isinstance(doc, dict):
        raise FormatError(f"{what}: not a JSON object")
    signed = typed_field(doc, "signed", dict, what)
    signatures = typed_field(doc, "signatures", list, what)
    if len(signatures) > MAX_SIGNATURES:
        raise SignatureError(f"{what}: {len(signatures)} signatures, more than the {MAX_SIGNATURES} "
                             "a document may carry")
    return Envelope(signed, canonical_json(signed), tuple(signatures))


def count_signers(envelope: Envelope, keys: Keyring) -> frozenset[str]:
    """The ids of `keys` with a valid signature in `envelope` (at most MAX_SIGNATURES checks)."""
    tried: set[tuple[str, str]] = set()
    valid: set[str] = set()
    for item in envelope.signatures:
        if not isinstance(item, dict):
            continue
        kid, sig = item.get("key_id"), item.get("sig")
        if not isinstance(kid, str) or kid not in keys or kid in valid:
            continue
        if not isinstance(sig, str) or len(sig) > MAX_SIG_TEXT or (kid, sig) in tried:
            continue
        tried.add((kid, sig))
        try:
            verify_signature(keys, kid, base64.b64decode(sig, validate=True), envelope.message)
        except (SignatureError, binascii.Error, ValueError):
            continue
        valid.add(kid)
    return frozenset(valid)


def require_threshold(signers: frozenset[str], role_keys: Sequence[str], threshold: int, what: str) -> None:
    """Raise SignatureError unless `threshold` of `role_keys` are among `signers`."""
    got = len(signers & set(role_keys))
    if got < threshold:
        raise SignatureError(f"{what}: {got} valid of the {threshold} signature{'s' if threshold > 1 else ''} "
                             "needed")
