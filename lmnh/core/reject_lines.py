"""erroneous_data.log's line: one line per rejected message, whatever its bytes (pure).

Shared by the judging process and the backfill, so both write the same line format;
lmnh/services/reject_log.py appends the lines to the file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from datetime import datetime

# Line breaks to str.splitlines() that JSON leaves as they are: escaped, so a reader splitting
# the log in Python sees one line per reject too.
_UNICODE_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028",
                                      "\u2029": "\\u2029"})


def _utf8_prefix(value: bytes, limit: int) -> bytes:
    """At most `limit` bytes of valid UTF-8 `value`, never ending inside a character."""
    if len(value) <= limit:
        return value
    cut = limit
    while cut > 0 and value[cut] & 0xC0 == 0x80:  # a continuation byte: back to the start
        cut -= 1
    return value[:cut]


def format_reject_line(logged_at: datetime, reason: str, location: str, detail: str,
                       value: bytes | None, max_value_bytes: int) -> str:
    """One line, whatever the bytes: time, reason, location, detail, then the value's first
    `max_value_bytes` bytes (a JSON string if the value is UTF-8, b'...' if not, null if there
    is none), its full length in bytes and its SHA-256 (hex)."""
    return format_reject_lines(logged_at, [(reason, location, detail, value)],
                               max_value_bytes)[0]


def format_reject_lines(logged_at: datetime,
                        rejects: Iterable[tuple[str, str, str, bytes | None]],
                        max_value_bytes: int) -> list[str]:
    """format_reject_line for each (reason, location, detail, value) logged at one time."""
    at = logged_at.isoformat(timespec="milliseconds")
    return [f"{at}\t{reason}\t{location}\t{detail!r}\t{_shown(value, max_value_bytes)}\n"
            for reason, location, detail, value in rejects]


def _shown(value: bytes | None, max_value_bytes: int) -> str:
    """The value's first bytes as the line shows them, its length and its SHA-256."""
    if value is None:
        return f"null\t0\t{_EMPTY_SHA256}"
    digest = hashlib.sha256(value).hexdigest()
    if value.isascii():  # the common case: no character to cut or escape beyond JSON's own
        return f"{_json_string(value[:max_value_bytes].decode('ascii'))}\t{len(value)}\t{digest}"
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        shown = repr(value[:max_value_bytes])
    else:
        shown = _json_string(_utf8_prefix(value, max_value_bytes).decode("utf-8")).translate(
            _UNICODE_LINE_BREAKS)
    return f"{shown}\t{len(value)}\t{digest}"


_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
# json.dumps(text, ensure_ascii=False) without building an encoder for each call.
_json_string = json.JSONEncoder(ensure_ascii=False).encode
