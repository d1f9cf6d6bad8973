"""What makes an HTTP/2 request head malformed (RFC 9113 §8.2, §8.3), checked before routing.

Only the rules a relay must enforce so that what it forwards means the same on the next hop:
lowercase field names, pseudo-header fields known, single and before every regular field,
and no field value carrying NUL, CR or LF (those would split a field on an HTTP/1.1 hop).
Connection-specific fields and `te` are the server's own checks (they depend on the field
table). Pure.
"""

from __future__ import annotations

__all__ = ["request_problem"]

_PSEUDO = frozenset({b":method", b":scheme", b":authority", b":path", b":protocol"})


def request_problem(headers: list[tuple[bytes, bytes]]) -> str | None:
    """Why `headers` is not a well-formed request head, or None."""
    regular = False
    seen: set[bytes] = set()
    for name, value in headers:
        if not name:
            return "an empty field name"
        if name[0] == 58:  # b":"
            if regular:
                return "a pseudo-header field after a regular one"
            if name not in _PSEUDO:
                return f"unknown pseudo-header field {name.decode('latin-1')!r}"
            if name in seen:
                return f"{name.decode('latin-1')} appears twice"
            seen.add(name)
        else:
            regular = True
            if not name.islower() and name != name.lower():
                return "an uppercase field name (HTTP/2 field names are lowercase)"
        if value and (b"\x00" in value or b"\r" in value or b"\n" in value):
            return f"a forbidden character in the value of {name.decode('latin-1')}"
    return None
