"""W3C Baggage: parse members byte-exactly, decode values, serialize within the limits.

Grammar (W3C Baggage, section 3.3):
    baggage-string = list-member 0*179( OWS "," OWS list-member )
    list-member    = key OWS "=" OWS value *( OWS ";" OWS property )
    property       = key OWS "=" OWS value / key OWS
    key            = token                       ; RFC 9110 section 5.6.2
    value          = *baggage-octet              ; visible ASCII but DQUOTE "," ";" "\"
Invariants kept here:
- several `baggage` fields are one list: the caller joins them with `,` in arrival order;
- a member that does not match the grammar is dropped whole, never partly kept; empty list
  elements (`a=1,,b=2`) are skipped; no input makes the parser raise;
- a kept member's text is the bytes received, less the OWS around it, so members the proxy
  does not own are forwarded exactly;
- values are percent-decoded as UTF-8 (`+` is a literal plus, never a space); an ill-formed
  escape makes the value undecodable (`None`), invalid UTF-8 becomes U+FFFD as the spec says;
- a serialized list keeps whole members only, at most 64 members and 8,192 bytes
  (the spec's minimum every platform must propagate; OpenTelemetry drops larger headers whole).
Because only visible ASCII passes the grammar, output never contains CR, LF or NUL.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import NamedTuple

__all__ = [
    "MAX_BYTES",
    "MAX_MEMBERS",
    "BaggageMember",
    "decode_value",
    "encode_value",
    "fit_members",
    "make_member",
    "member_values",
    "parse_baggage",
    "serialize_baggage",
]

MAX_MEMBERS = 64
MAX_BYTES = 8192

_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_VALUE = r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*"
_OWS = r"[ \t]*"
_MEMBER = re.compile(
    rf"({_TOKEN}){_OWS}={_OWS}({_VALUE})"
    rf"((?:{_OWS};{_OWS}{_TOKEN}(?:{_OWS}={_OWS}{_VALUE})?)*){_OWS}"
)
_TOKEN_RE = re.compile(_TOKEN)
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
# Characters that may stay literal in an encoded value: baggage-octet without '%'.
_SAFE = frozenset(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '",;\\%')


class BaggageMember(NamedTuple):
    """One well-formed list member. `value` is still percent-encoded; `text` is exact.

    A NamedTuple rather than a frozen dataclass: just as immutable, and several times
    cheaper to build, which matters because members are built per request.
    """

    key: str
    value: str
    properties: str
    text: str


def parse_baggage(value: str | None) -> tuple[BaggageMember, ...]:
    """Every well-formed member, in order; malformed ones are dropped, never fatal."""
    if not value:
        return ()
    out: list[BaggageMember] = []
    for raw in value.split(","):
        text = raw.strip(" \t")
        if not text:
            continue
        m = _MEMBER.fullmatch(text)
        if m is None:
            continue
        out.append(BaggageMember(m.group(1), m.group(2), m.group(3), text))
    return tuple(out)


def member_values(value: str, names: frozenset[str]) -> list[tuple[str, str]]:
    """`(key, raw value)` of the well-formed members whose key is in `names`, in order.

    The routing hot path: members with other keys are skipped before any regex runs.
    Exactly the members `parse_baggage` would return for those keys.
    """
    out: list[tuple[str, str]] = []
    for raw in value.split(","):
        head, sep, _ = raw.partition("=")
        if not sep or head.strip(" \t") not in names:
            continue
        m = _MEMBER.fullmatch(raw.strip(" \t"))
        if m is not None:
            out.append((m.group(1), m.group(2)))
    return out


def decode_value(raw: str) -> str | None:
    """Percent-decode a value (UTF-8, `+` literal); None when an escape is ill-formed."""
    if "%" not in raw:
        return raw
    if _BAD_ESCAPE.search(raw):
        return None
    data = bytearray()
    pos = 0
    for m in _ESCAPE.finditer(raw):
        data += raw[pos : m.start()].encode("ascii")
        data.append(int(m.group(1), 16))
        pos = m.end()
    data += raw[pos:].encode("ascii")
    return data.decode("utf-8", errors="replace")


def encode_value(value: str) -> str:
    """Percent-encode what baggage-octet does not allow, and `%` itself (UTF-8)."""
    if all(c in _SAFE for c in value):
        return value
    parts: list[str] = []
    for c in value:
        if c in _SAFE:
            parts.append(c)
        else:
            parts.extend(f"%{b:02X}" for b in c.encode("utf-8", errors="surrogatepass"))
    return "".join(parts)


def make_member(key: str, value: str) -> BaggageMember:
    """A new member `key=value` (the value is encoded here); ValueError for a bad key."""
    if not _TOKEN_RE.fullmatch(key):
        raise ValueError(f"baggage key {key!r} is not a token")
    encoded = encode_value(value)
    return BaggageMember(key, encoded, "", f"{key}={encoded}")


def fit_members(members: Iterable[BaggageMember]) -> tuple[BaggageMember, ...]:
    """The leading members that fit in 64 members and 8,192 bytes; later ones are dropped."""
    out: list[BaggageMember] = []
    size = -1  # no comma before the first member
    for member in members:
        grown = size + 1 + len(member.text)
        if len(out) == MAX_MEMBERS or grown > MAX_BYTES:
            break
        out.append(member)
        size = grown
    return tuple(out)


def serialize_baggage(members: Iterable[BaggageMember]) -> str:
    """The header value for `members`, cut to the limits at a member boundary."""
    return ",".join(m.text for m in fit_members(members))
