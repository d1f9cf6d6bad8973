"""W3C Trace Context `traceparent`: parse exactly, or say it is invalid.

Rules (Trace Context Level 1, section 3.2):
- `version-traceid-parentid-flags`, all lowercase hex: version 2, trace-id 32, parent-id 16,
  flags 2 characters;
- version `ff` is invalid; an all-zero trace-id or parent-id is invalid;
- version `00` must be exactly 55 characters; a higher version is parsed from its first 55
  characters and anything after must start with `-` (future fields are ignored);
- two `traceparent` fields make the context invalid. The caller combines repeated fields with
  `,` (RFC 9110 section 5.3), and `,` can never occur in a valid value, so a comma means two.
Surrounding optional whitespace (space, tab) is trimmed, as any HTTP field parser does.
An invalid traceparent is never an error for the request: the result is simply `None`.
"""

from __future__ import annotations

import re
from typing import NamedTuple

__all__ = ["TraceParent", "parse_traceparent"]

_FIELDS = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE = "0" * 32
_ZERO_PARENT = "0" * 16


class TraceParent(NamedTuple):
    """A valid traceparent. `text` is the header value as received (trimmed).

    A NamedTuple: immutable and cheap to build per request.
    """

    version: str
    trace_id: str
    parent_id: str
    flags: str
    text: str

    @property
    def sampled(self) -> bool:
        """The sampled flag (bit 0 of flags)."""
        return bool(int(self.flags, 16) & 0x01)


def parse_traceparent(value: str | None) -> TraceParent | None:
    """The parsed traceparent, or None when absent or invalid (never raises)."""
    if value is None:
        return None
    text = value.strip(" \t")
    if len(text) < 55:
        return None
    m = _FIELDS.match(text)
    if m is None:
        return None
    version, trace_id, parent_id, flags = m.groups()
    if version == "ff" or trace_id == _ZERO_TRACE or parent_id == _ZERO_PARENT:
        return None
    if len(text) != 55:
        # Version 00 has exactly four fields; a future version may append "-..." fields.
        if version == "00" or text[55] != "-" or "," in text:
            return None
        # Anything after must still be header-safe visible ASCII.
        if not text.isascii() or not all(0x20 < ord(c) < 0x7F for c in text):
            return None
    return TraceParent(version, trace_id, parent_id, flags, text)
