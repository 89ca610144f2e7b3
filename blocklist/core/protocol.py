"""The poll headers: what a plugin tells `blocklist serve` on every manifest request, and back.

    X-Blocklist-Node: <node id>          printable, at most MAX_NODE_ID characters
    X-Blocklist-Have: iwf=3,other=5      the versions the node enforces, at most
                                         MAX_LISTS_REPORTED items; malformed items are dropped;
                                         0 for a list it is configured for and has no version of
    X-Blocklist-Proof: v1 t=<ms> n=<nonce> mac=<hex>
                                         the node's credential, proven for this one poll (below)
    X-Blocklist-Wait: <seconds>          request: how long the server may hold a poll whose
                                         ETag still matches (long-poll); answer: the wait applied,
                                         so a plugin knows the source long-polls
    X-Blocklist-Report: <outcome>        answer: whether serve recorded this poll for the fleet
                                         (a ReportOutcome value); only `blocklist serve` sends it
    X-Blocklist-Bundle: <bytes>          request: the node takes, in the answer that brings a new
                                         manifest, the files it needs next up to <bytes> in all
    X-Blocklist-Bundle: manifest.json=<size>, <path>=<size>, ...
                                         answer: the body is these parts, back to back, in this
                                         order: the manifest, then files of the publish tree
                                         (the delta chains from the versions in X-Blocklist-Have).
                                         Only `blocklist serve` sends it, and only when asked;
                                         without it the body is the manifest, as from any mirror.

The proof, in ABNF (RFC 5234; SP is one space, nothing else may separate the fields):

    proof   = "v1" SP "t=" millis SP "n=" nonce SP "mac=" mac
    millis  = 1*15DIGIT                 ; Unix time of the poll in milliseconds
    nonce   = 32HEXDIG                  ; 16 random bytes, lower-case hex
    mac     = 64HEXDIG                  ; lower-case hex of
              HMAC-SHA256(report_key, "blocklist-poll-v1" LF node LF have LF millis LF nonce)
    report_key = SHA-256("blocklist-node-key-v1" LF token)

where `node` and `have` are the exact values of X-Blocklist-Node and
X-Blocklist-Have sent with it (have may be empty) and `token` is the node's
credential as `blocklist node add` printed it. The server keeps only
report_key, never the token; it accepts a proof when the MAC verifies, millis
is within PROOF_WINDOW_MS of its own clock, and millis is above the last
millis it accepted from that node (no replay, one integer of memory per node).
A proof never carries the token and is good for one poll only.

Both sides parse and format them here and nowhere else.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

__all__ = ["BUNDLE", "BUNDLE_TYPE", "HAVE", "MAX_BUNDLE_PARTS", "MAX_LISTS_REPORTED", "MAX_NODE_ID", "NODE",
           "PROOF", "PROOF_WINDOW_MS", "REPORT", "WAIT", "Proof", "ReportOutcome", "check_token",
           "clean_node_id", "format_have", "make_proof", "new_token", "format_bundle", "parse_bundle",
           "parse_have", "parse_proof", "proof_mac", "report_key", "verify_proof"]

NODE = "X-Blocklist-Node"
HAVE = "X-Blocklist-Have"
PROOF = "X-Blocklist-Proof"
WAIT = "X-Blocklist-Wait"
REPORT = "X-Blocklist-Report"
BUNDLE = "X-Blocklist-Bundle"
BUNDLE_TYPE = "application/vnd.blocklist.bundle"
MAX_BUNDLE_PARTS = 65  # the manifest and one delta for each of MAX_LISTS_REPORTED lists
MAX_NODE_ID = 128
MAX_LISTS_REPORTED = 64
PROOF_WINDOW_MS = 300_000     # a proof's clock may differ from the server's by this much
TOKEN_PREFIX = "blnode1."
_TOKEN = re.compile(r"blnode1\.[A-Za-z0-9_-]{43}")
_PART = re.compile(r"([A-Za-z0-9][A-Za-z0-9._/-]{0,254})=([0-9]{1,12})")
_PROOF = re.compile(r"v1 t=([0-9]{1,15}) n=([0-9a-f]{32}) mac=([0-9a-f]{64})")


class ReportOutcome(enum.StrEnum):
    """What serve did with a poll's report; the value of X-Blocklist-Report."""

    RECORDED = "recorded"      # the proof verified: the fleet shows this poll
    ANONYMOUS = "anonymous"    # no node or no proof: served, not recorded
    MALFORMED = "malformed"    # a proof header that does not parse
    CLOCK = "clock"            # millis outside PROOF_WINDOW_MS of the server's clock
    REFUSED = "refused"        # unknown node or a MAC that does not verify (not told apart)
    REPLAY = "replay"          # a valid proof no newer than one already accepted


def parse_have(header: str) -> dict[str, int]:
    """"iwf=3,other=5" -> {"iwf": 3, "other": 5}; malformed items are dropped."""
    versions: dict[str, int] = {}
    for item in header.split(",")[:MAX_LISTS_REPORTED]:
        name, sep, version = item.strip().partition("=")
        if sep and version.isdigit() and 0 < len(name) <= 64 and len(version) <= 12:
            versions[name] = int(version)
    return versions


def format_have(versions: dict[str, int]) -> str:
    return ",".join(f"{name}={version}" for name, version in sorted(versions.items()))


def clean_node_id(node_id: str) -> str | None:
    node_id = node_id.strip()
    if not node_id or len(node_id) > MAX_NODE_ID or not node_id.isprintable():
        return None
    return node_id


def format_bundle(parts: list[tuple[str, bytes]]) -> tuple[str, bytes]:
    """The X-Blocklist-Bundle answer header and body of `parts`, (path, bytes) with the manifest first."""
    header = ", ".join(f"{path}={len(data)}" for path, data in parts)
    return header, b"".join(data for _, data in parts)


def parse_bundle(header: str, body: bytes) -> list[tuple[str, bytes]]:
    """The (path, bytes) parts of a bundle answer, manifest.json first; ValueError unless the header
    follows the grammar (relative paths without "..", at most MAX_BUNDLE_PARTS) and its sizes add up
    to the body's. The parts are only bytes: the caller checks each as if it had fetched it."""
    items = [item.strip() for item in header.split(",")]
    if len(items) > MAX_BUNDLE_PARTS:
        raise ValueError(f"{len(items)} parts, more than {MAX_BUNDLE_PARTS}")
    parts: list[tuple[str, bytes]] = []
    at = 0
    for item in items:
        found = _PART.fullmatch(item)
        if found is None or ".." in found[1].split("/") or "//" in found[1]:
            raise ValueError(f"part {item[:80]!r} is not <path>=<size>")
        size = int(found[2])
        parts.append((found[1], body[at:at + size]))
        at += size
    if at != len(body):
        raise ValueError(f"the parts add up to {at} bytes, the body has {len(body)}")
    if parts[0][0] != "manifest.json" or len({path for path, _ in parts}) != len(parts):
        raise ValueError("the first part is not manifest.json, or a part is named twice")
    return parts


# ----------------------------------------------------------------------------- node credentials

def new_token() -> str:
    """A fresh node credential: a prefix that names its form, then 32 random bytes (base64url)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def check_token(token: str) -> bool:
    """Is `token` (surrounding white space removed by the caller) a credential `new_token` makes?"""
    return _TOKEN.fullmatch(token) is not None


def report_key(token: str) -> bytes:
    """The key a node's proofs are made with, and all the server keeps of its token."""
    return hashlib.sha256(b"blocklist-node-key-v1\n" + token.encode()).digest()


@dataclass(frozen=True)
class Proof:
    millis: int
    nonce: str
    mac: str

    def header(self) -> str:
        return f"v1 t={self.millis} n={self.nonce} mac={self.mac}"


def proof_mac(key: bytes, node: str, have: str, millis: int, nonce: str) -> str:
    message = "\n".join(("blocklist-poll-v1", node, have, str(millis), nonce)).encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def make_proof(key: bytes, node: str, have: str, millis: int) -> Proof:
    """The proof of one poll by `node` reporting `have` at `millis` (the header values as sent)."""
    nonce = secrets.token_hex(16)
    return Proof(millis, nonce, proof_mac(key, node, have, millis, nonce))


def parse_proof(header: str) -> Proof | None:
    """The proof in an X-Blocklist-Proof value; None unless it follows the grammar exactly."""
    found = _PROOF.fullmatch(header)
    if found is None:
        return None
    return Proof(int(found[1]), found[2], found[3])


def verify_proof(key: bytes, proof: Proof, node: str, have: str) -> bool:
    """Does `proof` show the holder of `key`'s token sent this node and have? (Not its time: the caller's.)"""
    return hmac.compare_digest(proof.mac, proof_mac(key, node, have, proof.millis, proof.nonce))
