"""Field readers for decoded JSON objects, and the bounds of what the store can write.

Each reader takes a mapping, a key and the path to it, and either returns a clean value or raises
``DecodeError`` naming the field and the problem. Bounds, on SQLite and PostgreSQL alike: times
lie in years 1970..9999 (epoch ms ``MAX_TIME_MS``, span ns ``MAX_TIME_NS``), counts within int64
(``INT64_MAX``), JSON values at most ``MAX_JSON_DEPTH`` levels deep, ids at most
``MAX_ID_CHARS`` characters; text reaches text columns without NUL (``clean``). Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import orjson

from consumers.errors import DecodeError

MAX_ID_CHARS = 256
INT64_MAX = 2**63 - 1  # what a BIGINT column holds
MAX_TIME_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
# The last nanosecond of year 9999. Numbers above 2**64 reach us as floats (orjson's rule), so
# the bound holds to a float's precision there.
MAX_TIME_NS = MAX_TIME_MS * 1_000_000 + 999_999
MAX_JSON_DEPTH = 254  # orjson reads 1,024 levels of nesting, but writes only 254
_BOUND_NAMES = {INT64_MAX: "the int64 maximum", MAX_TIME_MS: "9999-12-31T23:59:59.999Z",
                MAX_TIME_NS: "the end of year 9999"}


def load_object(value: bytes | None, max_bytes: int) -> dict[str, Any]:
    """A record's value as a JSON object, at most ``max_bytes`` long (errors name "payload")."""
    if value is None:
        raise DecodeError("empty record (a tombstone); expected a JSON object", "payload")
    if len(value) > max_bytes:
        raise DecodeError(f"{len(value)} bytes exceeds max_event_bytes={max_bytes}", "payload")
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"not valid UTF-8 JSON ({exc})", "payload") from None
    if not isinstance(obj, dict):
        raise DecodeError(f"expected a JSON object, got {type(obj).__name__}", "payload")
    return obj


def str_field(d: Mapping[str, Any], key: str, path: str, *, required: bool = True,
              max_chars: int | None = None) -> str | None:
    """A string, NUL-cleaned; when ``required``, present and non-empty."""
    v = d.get(key)
    if v is None:
        if required:
            raise DecodeError("is missing", f"{path}{key}")
        return None
    if not isinstance(v, str):
        raise DecodeError(f"expected a string, got {type(v).__name__}", f"{path}{key}")
    if required and not v:
        raise DecodeError("is empty", f"{path}{key}")
    if max_chars is not None and len(v) > max_chars:
        raise DecodeError(f"longer than {max_chars} characters", f"{path}{key}")
    return clean(v)


# A named tuple from its fields in order: ``new_tuple(Cls, (a, b, ...))`` is ``Cls(a, b, ...)``
# without the generated constructor's frame and argument parsing (hot paths only).
new_tuple = tuple.__new__


def clean(v: str) -> str:
    """PostgreSQL text cannot hold NUL; a stray NUL in a name or message becomes U+FFFD."""
    return v.replace("\x00", "\ufffd") if "\x00" in v else v


def id_field(d: Mapping[str, Any], key: str, path: str = "") -> str:
    """A required id of at most ``MAX_ID_CHARS`` characters; a NUL in it is refused, not cleaned."""
    raw = d.get(key)
    if isinstance(raw, str) and "\x00" in raw:
        raise DecodeError("contains a NUL character", f"{path}{key}")
    v = str_field(d, key, path, max_chars=MAX_ID_CHARS)
    assert v is not None  # required=True guarantees it
    return v


def int_field(d: Mapping[str, Any], key: str, path: str, *, required: bool,
              maximum: int = INT64_MAX) -> int | None:
    """A number in ``[0, maximum]`` (``INT64_MAX``, ``MAX_TIME_MS`` or ``MAX_TIME_NS``)."""
    v = d.get(key)
    if v is None:
        if required:
            raise DecodeError("is missing", f"{path}{key}")
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or (
            isinstance(v, float) and not math.isfinite(v)):
        raise DecodeError(f"expected a number, got {type(v).__name__}", f"{path}{key}")
    iv = int(v)
    if iv < 0:
        raise DecodeError(f"must be >= 0, got {v}", f"{path}{key}")
    if iv > maximum:
        raise out_of_range(v, maximum, f"{path}{key}")
    return iv


def out_of_range(v: Any, maximum: int, field: str) -> DecodeError:
    """The error for ``v`` above ``maximum``, which it names ("the int64 maximum", ...)."""
    return DecodeError(f"out of range: {v} > {maximum} ({_BOUND_NAMES.get(maximum, 'max')})",
                       field)


def str_map_field(d: Mapping[str, Any], key: str, path: str) -> dict[str, str]:
    """A string -> string mapping; scalar values are stringified, nested values rejected. A NUL
    in a value becomes U+FFFD: a tag's value can become a text column (the metrics dimension)."""
    v = d.get(key)
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise DecodeError(f"expected an object, got {type(v).__name__}", f"{path}{key}")
    for item in v.values():  # the common case, all clean strings: no copy
        if type(item) is not str or "\x00" in item:
            break
    else:
        return v
    out: dict[str, str] = {}
    for k, item in v.items():
        if isinstance(item, str):
            out[k] = clean(item)
        elif isinstance(item, bool | int | float):
            out[k] = orjson.dumps(item).decode()
        elif item is None:
            continue
        else:
            raise DecodeError(f"expected a string value, got {type(item).__name__}",
                              f"{path}{key}.{k}")
    return out


def time_ms_field(d: Mapping[str, Any], key: str, path: str, *, required: bool) -> int | None:
    """ISO-8601 text (``2026-11-27T11:54:16.865Z``) or epoch milliseconds."""
    v = d.get(key)
    if v is None:
        if required:
            raise DecodeError("is missing", f"{path}{key}")
        return None
    if isinstance(v, str):
        return iso_time_ms(v, f"{path}{key}")
    return int_field(d, key, path, required=required, maximum=MAX_TIME_MS)


def iso_time_ms(v: str, field: str) -> int:
    """ISO-8601 text with a time zone as epoch milliseconds, 1970 to the end of year 9999."""
    try:
        dt = datetime.fromisoformat(v)
    except ValueError:
        raise DecodeError(f"not an ISO-8601 time: {v[:40]!r}", field) from None
    if dt.tzinfo is None:
        raise DecodeError(f"ISO-8601 time without a time zone: {v[:40]!r}", field)
    try:
        ms = int(dt.timestamp() * 1000)
    except (OverflowError, OSError, ValueError):
        raise DecodeError(f"time out of range: {v[:40]!r}", field) from None
    if ms < 0:
        raise DecodeError(f"before 1970: {v[:40]!r}", field)
    if ms > MAX_TIME_MS:  # year 9999 with a negative offset is year 10000 in UTC
        raise DecodeError(f"out of range: {v[:40]!r} is after 9999-12-31T23:59:59.999Z", field)
    return ms


def json_text(v: Any, field: str) -> str | None:
    """Request/response as JSON text. Strings that already hold a JSON object or array are kept."""
    if v is None:
        return None
    if isinstance(v, str):
        s = v.lstrip()
        if s[:1] in ("{", "["):
            try:
                orjson.loads(v)
                return v
            except orjson.JSONDecodeError:
                pass
    return dump_json(v, field).decode()


def dump_json(v: Any, field: str) -> bytes:
    """``v`` as the store will encode it. A parsed value can fail only by its depth: orjson
    reads 1,024 levels of nesting but writes ``MAX_JSON_DEPTH``."""
    try:
        return orjson.dumps(v)
    except orjson.JSONEncodeError as exc:
        if "Recursion limit" in str(exc):
            raise DecodeError(f"nested deeper than {MAX_JSON_DEPTH} levels", field) from None
        raise DecodeError(f"not JSON-serializable ({exc})", field) from None

