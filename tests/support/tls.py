"""TLS material for tests: ClientHellos as OpenSSL sends them or crafted byte by byte, and a self-signed certificate."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest


def client_hello(server_name: str | None, maximum: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3) -> bytes:
    """The first bytes OpenSSL sends for a connection to `server_name` (via Python's ssl)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.maximum_version = maximum
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    connection = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        connection.do_handshake()
    return outgoing.read()


def reframe(data: bytes, size: int) -> bytes:
    """The same handshake bytes in records of at most `size` bytes (as a client may split them)."""
    assert data[0] == 22
    body = data[5:5 + int.from_bytes(data[3:5], "big")]
    return b"".join(data[:3] + len(piece).to_bytes(2, "big") + piece
                    for piece in (body[i:i + size] for i in range(0, len(body), size)))


def with_extensions(extensions: bytes) -> bytes:
    body = b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    body += len(extensions).to_bytes(2, "big") + extensions
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + len(message).to_bytes(2, "big") + message


def sni_extension(*entries: tuple[int, bytes]) -> bytes:
    names = b"".join(bytes([kind]) + len(value).to_bytes(2, "big") + value for kind, value in entries)
    data = len(names).to_bytes(2, "big") + names
    return b"\x00\x00" + len(data).to_bytes(2, "big") + data


def self_signed_cert(folder: Path, *names: str) -> tuple[Path, Path]:
    """A certificate for `names` (and 127.0.0.1) that a test's client trusts as its own CA, and its key."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.UTC)
    alt = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "origin.pem", folder / "origin.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path
