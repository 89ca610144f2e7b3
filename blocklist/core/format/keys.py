"""Ed25519 keys: the 16-hex-digit key id, PEM and raw-base64 key text, signature checks."""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from blocklist.core.errors import SignatureError

__all__ = [
    "Keyring", "key_id", "public_key_text", "load_public_key", "private_key_bytes",
    "load_private_key", "verify_signature", "shown_id", "raw_public_key",
    "public_key_from_raw",
]

Keyring = Mapping[str, Ed25519PublicKey]


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def raw_public_key(public_key: Ed25519PublicKey) -> str:
    """The base64 of the 32 raw key bytes, as documents and plugin.yaml `public_key` carry keys."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def public_key_from_raw(text: object) -> Ed25519PublicKey:
    """The key `raw_public_key` wrote; SignatureError for anything else."""
    if not isinstance(text, str) or len(text) != 44:
        raise SignatureError("not the base64 of a 32-byte Ed25519 public key")
    try:
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(text, validate=True))
    except (ValueError, binascii.Error):
        raise SignatureError("not the base64 of a 32-byte Ed25519 public key") from None


def public_key_text(public_key: Ed25519PublicKey) -> str:
    """The PEM text `blocklist key export` prints and plugin.yaml's public_key_file reads."""
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def load_public_key(text: str | bytes) -> Ed25519PublicKey:
    """A public key from PEM, or from the base64 of its 32 raw bytes (plugin.yaml `public_key`)."""
    data = text.encode("ascii", "replace") if isinstance(text, str) else text
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_public_key(data)
        else:
            key = Ed25519PublicKey.from_public_bytes(base64.b64decode(data.strip(), validate=True))
    except (ValueError, TypeError, binascii.Error) as exc:
        raise SignatureError(f"not an Ed25519 public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError("not an Ed25519 public key")
    return key


def private_key_bytes(private_key: Ed25519PrivateKey) -> bytes:
    return private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_private_key(data: bytes) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"not an Ed25519 private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError("not an Ed25519 private key")
    return key


def shown_id(kid: object) -> str:
    """A key id as error texts show it: at most 16 printable characters, whatever the file held."""
    text = kid if isinstance(kid, str) else repr(kid)
    text = "".join(ch if ch.isascii() and ch.isprintable() else "?" for ch in text[:16])
    return text + ("..." if len(str(kid)) > 16 else "")


def verify_signature(keys: Keyring, kid: str, signature: bytes, message: bytes) -> None:
    """Raise SignatureError unless `kid` is in `keys` and its key signed `message`."""
    key = keys.get(kid)
    if key is None:
        raise SignatureError(f"signed by unknown key {shown_id(kid)!r}")
    try:
        key.verify(signature, message)
    except InvalidSignature:
        raise SignatureError(f"bad signature by key {shown_id(kid)}") from None
