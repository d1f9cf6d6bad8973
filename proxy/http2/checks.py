"""What makes an HTTP/2 request head malformed (RFC 9113 §8.2, §8.3), checked before routing.

Only the rules a relay must enforce so that what it forwards means the same on the next hop:
lowercase field names, pseudo-header fields known, single and before every regular field,
and no field value carrying NUL, CR or LF (those would split a field on an HTTP/1.1 hop).
Connection-specific fields and `te` are the server's own checks (they depend on the field
table). Pure.

Where they run: `field_problem` (one field on its own) runs inside the HPACK decoder, on
fields that arrive as literals only (a field from the static table is well-formed, one from
the dynamic table was checked when it was added), so a head repeated on a connection costs
no check at all; the pseudo-header rules run in the server's own loop over the fields.
`request_problem` is both together over a whole head: the reference they are tested against.
"""

from __future__ import annotations

__all__ = ["PSEUDO", "field_problem", "request_problem"]

PSEUDO = frozenset({b":method", b":scheme", b":authority", b":path", b":protocol"})


def field_problem(name: bytes, value: bytes) -> str | None:
    """Why one field is malformed wherever it stands in a request head, or None."""
    if not name:
        return "an empty field name"
    if name[0] != 58 and not name.islower() and name != name.lower():  # 58: b":"
        return "an uppercase field name (HTTP/2 field names are lowercase)"
    # find, not `in`: a bytes needle is first tried as an integer, at a TypeError's cost.
    if value and (value.find(b"\x00") >= 0 or value.find(b"\r") >= 0
                  or value.find(b"\n") >= 0):
        return f"a forbidden character in the value of {name.decode('latin-1')}"
    return None


def request_problem(headers: list[tuple[bytes, bytes]]) -> str | None:
    """Why `headers` is not a well-formed request head, or None."""
    regular = False
    seen: set[bytes] = set()
    for name, value in headers:
        problem = field_problem(name, value)
        if problem is not None:
            return problem
        if name[0] == 58:  # b":"
            if regular:
                return "a pseudo-header field after a regular one"
            if name not in PSEUDO:
                return f"unknown pseudo-header field {name.decode('latin-1')!r}"
            if name in seen:
                return f"{name.decode('latin-1')} appears twice"
            seen.add(name)
        else:
            regular = True
    return None
