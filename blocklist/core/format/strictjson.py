"""JSON both ways: canonical JSON written, strict JSON read into typed fields, list names.

Canonical JSON is UTF-8 with sorted keys, no spaces, ASCII only and no NaN or
Infinity. The reader refuses NaN and Infinity too, so whatever parses also
re-serializes canonically, and a signature over the canonical form stays checkable.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from blocklist.core.errors import FormatError

__all__ = [
    "MAX_LIST_NAME", "canonical_json", "strict_loads", "typed_field", "count_field",
    "check_list_name",
]

MAX_LIST_NAME = 64


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number out of range: {text[:20]}")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def strict_loads(data: bytes, what: str) -> Any:
    """Strict JSON: no NaN/Infinity, so whatever parses also re-serializes canonically."""
    try:
        return json.loads(data, parse_float=_finite, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise FormatError(f"{what}: not valid JSON ({exc})") from None


def typed_field(obj: Mapping[str, Any], name: str, kind: type | tuple[type, ...], what: str) -> Any:
    """obj[name], which must be there and be a `kind` (a bool is not an int)."""
    if not isinstance(obj, Mapping) or name not in obj:
        raise FormatError(f"{what}: missing field {name!r}")
    value = obj[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise FormatError(f"{what}: field {name!r} has the wrong type")
    return value


def count_field(obj: Mapping[str, Any], name: str, what: str, maximum: int = 2**40) -> int:
    """obj[name], an int from 0 to `maximum`."""
    value: int = typed_field(obj, name, int, what)
    if not 0 <= value <= maximum:
        raise FormatError(f"{what}: field {name!r} out of range")
    return value


def check_list_name(name: object) -> str:
    if (not isinstance(name, str) or not 0 < len(name) <= MAX_LIST_NAME
            or not all(ch.isascii() and (ch.isalnum() or ch in "-_.") for ch in name)
            or name.startswith(".")):
        raise FormatError(f"invalid list name {name!r}: use 1-{MAX_LIST_NAME} of a-z 0-9 - _ .")
    return name
