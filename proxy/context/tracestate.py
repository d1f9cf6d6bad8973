"""W3C Trace Context `tracestate`: parse members, add one left-most, serialize.

Grammar (Trace Context, section 3.3):
    list   = list-member 0*31( OWS "," OWS list-member )
    key    = simple-key / multi-tenant-key
             simple-key: [a-z0-9][a-z0-9_-*/]{0,255}; tenant@system: [a-z0-9][..]{0,240}@[a-z][..]{0,13}
    value  = 0*255(chr) nblk-chr      ; printable ASCII but "," and "=", not ending in a space
Invariants kept here:
- several `tracestate` fields are one list: the caller joins them with `,` in order;
- without a valid traceparent the whole tracestate is discarded (the caller checks that);
- more than 32 members is an invalid list and is discarded whole; a malformed member is
  dropped whole; empty list elements are skipped; no input makes the parser raise;
- a kept member's text is the bytes received less the surrounding OWS;
- when a member is added or updated it goes left-most, any older member with that key is
  removed, and the list is cut to 32 by dropping the right-most members (section 3.5);
- serialized lists have unique keys (duplicates after the first are dropped), since a
  receiver may discard a list with a duplicate key whole.
Only printable ASCII passes the grammar, so output never contains CR, LF or NUL.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import NamedTuple

__all__ = [
    "MAX_MEMBERS",
    "TraceStateMember",
    "make_member",
    "member_values",
    "parse_tracestate",
    "serialize_tracestate",
    "with_member",
]

MAX_MEMBERS = 32

_KEY = r"(?:[a-z0-9][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13})"
_VALUE = r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
_MEMBER = re.compile(rf"({_KEY})=({_VALUE})")
_KEY_RE = re.compile(_KEY)
_VALUE_RE = re.compile(_VALUE)


class TraceStateMember(NamedTuple):
    """One well-formed member; `text` is `key=value` exactly as received.

    A NamedTuple: immutable and cheap to build per request.
    """

    key: str
    value: str
    text: str


def parse_tracestate(value: str | None) -> tuple[TraceStateMember, ...]:
    """Well-formed members in order (duplicates included); () for an over-long list."""
    if not value:
        return ()
    out: list[TraceStateMember] = []
    count = 0
    for raw in value.split(","):
        text = raw.strip(" \t")
        if not text:
            continue
        count += 1
        if count > MAX_MEMBERS:
            return ()
        m = _MEMBER.fullmatch(text)
        if m is None:
            continue
        out.append(TraceStateMember(m.group(1), m.group(2), text))
    return tuple(out)


def member_values(value: str, names: frozenset[str]) -> list[tuple[str, str]]:
    """`(key, value)` of well-formed members whose key is in `names`; [] for a list over 32.

    The routing hot path: other members are only counted, never matched.
    """
    out: list[tuple[str, str]] = []
    count = 0
    for raw in value.split(","):
        text = raw.strip(" \t")
        if not text:
            continue
        count += 1
        if count > MAX_MEMBERS:
            return []
        head, sep, _ = text.partition("=")
        if sep and head in names:
            m = _MEMBER.fullmatch(text)
            if m is not None:
                out.append((m.group(1), m.group(2)))
    return out


def make_member(key: str, value: str) -> TraceStateMember:
    """A new member; ValueError when the key or value breaks the grammar."""
    if not _KEY_RE.fullmatch(key):
        raise ValueError(f"tracestate key {key!r} is not valid")
    if not _VALUE_RE.fullmatch(value):
        raise ValueError(f"tracestate value {value!r} is not valid")
    return TraceStateMember(key, value, f"{key}={value}")


def _unique(members: Iterable[TraceStateMember]) -> list[TraceStateMember]:
    seen: set[str] = set()
    out: list[TraceStateMember] = []
    for member in members:
        if member.key not in seen:
            seen.add(member.key)
            out.append(member)
    return out


def with_member(
    members: Iterable[TraceStateMember], new: TraceStateMember
) -> tuple[TraceStateMember, ...]:
    """`new` left-most, older members with its key removed, right-most beyond 32 dropped."""
    rest = [m for m in members if m.key != new.key]
    return tuple(_unique([new, *rest])[:MAX_MEMBERS])


def serialize_tracestate(members: Iterable[TraceStateMember]) -> str:
    """The header value: unique keys, at most 32 members."""
    return ",".join(m.text for m in _unique(members)[:MAX_MEMBERS])
