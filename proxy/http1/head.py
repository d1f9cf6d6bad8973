"""The HTTP/1.1 request head in one call: raw bytes in, the fields the request path needs out.

httptools calls back into Python once per field name and once per value; for a request with a
dozen fields that is most of the proxy's work per request. `parse_request` reads a complete
head from a buffer in one call instead: it splits the lines, classifies each field name with
the listener's field table (`forward.core.TableFields.h1`), reads the fields that frame, route
or belong to this hop, and keeps the others as one block of raw lines, ready to be written to
the next hop as they came.

It handles the plain case only, and says so by returning None for anything else: the caller
then feeds the same bytes to the full parser (httptools), which accepts or rejects them with
its reasons. The rule that keeps the two paths one: **whatever this accepts, the full path
accepts too, with the same method, target, fields and framing** (a test checks it against
httptools on the malformed-input corpus and on generated heads). So this takes only:
- a request line `METHOD SP origin-form SP HTTP/1.1` with a common method and a target of URI
  characters;
- field lines `name ": " value CRLF` with a token name, a value of visible ASCII, spaces and
  tabs that neither starts nor ends with whitespace (so a kept line is byte for byte what the
  full path would write), no obs-fold, no bare CR or LF;
- exactly one non-empty Host, at most one Content-Length of digits, `Connection` only as
  `close` or `keep-alive`; no Transfer-Encoding, no Upgrade, no underscore in a name (a
  look-alike of a routing field), limits not reached.

Compiled by Cython from this source (the augmenting `head.pxd` types the offsets); the same
source runs interpreted, so it leans on bytes methods (`find`, `translate`), never on loops
over single bytes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from forklane.proxy.forward.core import (
    F_CONNECTION,
    F_CONTENT_LENGTH,
    F_EXPLAIN,
    F_HOP,
    F_HOST,
    F_INTERESTING,
    F_KEEP_ALIVE,
    F_MARKER,
    F_TE,
    F_VIA,
    F_XFF,
    F_XFH,
    F_XFP,
    join_view,
)
from forklane.proxy.table import ROUTED_MARKER

if TYPE_CHECKING:
    from forklane.proxy.forward.core import Hop, Injection
    from forklane.proxy.tracing import ProxySpan

__all__ = ["RequestHead", "ResponseHead", "drop_fields", "parse_request", "parse_response",
           "write_request_head"]

_METHODS: frozenset[bytes] = frozenset(
    {b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"}
)
# RFC 3986 characters of an origin-form target, without '#' (a fragment is not sent).
_TARGET_CHARS = (b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                 b"-._~!$&'()*+,;=:@/?%")
_TARGET_OK = bytes(1 if c in _TARGET_CHARS else 0 for c in range(256))  # by byte value
# RFC 9110 tchar, lowercase letters only (names are checked after lower()).
_TOKEN_CHARS = b"abcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-.^_`|~"
_CRLF = b"\r\n"
_END = b"\r\n\r\n"
_SPACE, _TAB = 0x20, 0x09
F_PLAIN = -1
"""The action of a field that is simply kept (no entry in the listener's field table)."""
_DROPPED = frozenset({F_VIA, F_XFF, F_MARKER, F_KEEP_ALIVE, F_HOP, F_TE, F_CONNECTION})
_NAMES_LIMIT = 4096


def _lines(data: bytes, start: int, end: int) -> list[bytes] | None:
    """The lines of the head `data[start:end]` (without its blank line), or None when it holds
    a byte no plain head has, a bare CR or LF, or a line ending in whitespace.

    `split` cuts the lines; one pass over the bytes checks them (visible ASCII, space and tab,
    CR only before LF). The compiled build reads them through a C pointer (`head.pxd`), a few
    instructions a byte where `translate` rebuilt its 256-entry table on every call; the
    interpreted build, which never reads heads this way (`http1.server.FAST_HEADS`), runs the
    same loop slowly."""
    raw = data[start:end]
    lines = raw.split(_CRLF)
    size = len(raw)
    chars = raw
    pos = 0
    while pos < size:
        c = chars[pos]
        if c < 0x20 or c > 0x7E:
            if c == 0x0D and pos + 1 < size and chars[pos + 1] == 0x0A:  # CRLF
                pos += 2
                continue
            if c != 0x09:  # tab
                return None
        pos += 1
    return lines


def _only(value: bytes, allowed: bytes) -> bool:
    """Whether `allowed` (256 bytes, one per byte value) marks every byte of `value`; C over
    the bytes in the compiled build, as `_lines`."""
    chars = value
    table = allowed
    size = len(value)
    pos = 0
    while pos < size:
        if not table[chars[pos]]:
            return False
        pos += 1
    return True


def _field_action(
    names: dict[bytes, tuple[int, str]], actions: dict[bytes, int], name: bytes
) -> tuple[int, str] | None:
    """What field `name` (as sent) means, from the listener's cache of names seen; None for a
    name that is not a token, or a look-alike of a routing field spelled with underscores."""
    lname = name.lower()
    action = actions.get(lname)
    if action is None:
        if not name or lname.translate(None, _TOKEN_CHARS) or lname.find(b"_") >= 0:
            return None
        action = F_PLAIN
    if len(names) >= _NAMES_LIMIT:
        names.clear()
    entry = names[name] = (action, lname.decode("latin-1"))
    return entry


class RequestHead:
    """A request head read by `parse_request` (names lowercase where they are keys)."""

    __slots__ = ("content_length", "end", "explain", "header_bytes", "host", "keep_alive",
                 "kept", "method", "target", "via", "view", "xff", "xfh", "xfp")

    def __init__(self) -> None:
        self.end = 0
        self.method = b""
        self.target = b""
        self.host = b""
        self.kept = b""
        self.view: dict[str, str] = {}
        self.content_length = -1
        self.keep_alive = True
        self.xff: bytes | None = None
        self.xfp = False
        self.xfh = False
        self.via: bytes | None = None
        self.explain = False
        self.header_bytes = 0


def parse_request(
    data: bytes,
    start: int,
    actions: dict[bytes, int],
    names: dict[bytes, tuple[int, str]],
    max_bytes: int,
    max_count: int,
) -> RequestHead | None:
    """Read the request head that starts at `data[start]`, or None when the full parser must.

    `actions` is the listener's field table (lowercase names), `names` its cache of the
    names seen as sent (`TableFields.names`). None also when the head is not complete in
    `data` (the full parser buffers it)."""
    end = data.find(_END, start)
    if end < 0 or end - start > max_bytes:
        return None
    lines = _lines(data, start, end)
    if lines is None:
        return None
    method, _, rest = lines[0].partition(b" ")
    target, _, version = rest.partition(b" ")
    if (version != b"HTTP/1.1" or method not in _METHODS or not target.startswith(b"/")
            or not _only(target, _TARGET_OK)):
        return None
    count = len(lines) - 1
    block = data[start + len(lines[0]) + 2 : end + 2]  # the field lines, each with its CRLF
    if count > max_count or len(target) + len(block) > max_bytes:
        return None
    head = RequestHead()
    head.method = method
    head.target = target
    head.end = end + 4
    head.header_bytes = len(target) + len(block)
    view = head.view
    host_count = 0
    parts: list[bytes] = []  # runs of kept lines
    run = 0  # where the current run of kept lines starts in `block`
    pos = 0  # where the current line starts in `block`
    index = 1
    while index <= count:
        line = lines[index]
        index += 1
        name, sep, value = line.partition(b": ")
        if not sep or not value:
            return None
        first = value[0]
        last = value[-1]
        if first == _SPACE or first == _TAB or last == _SPACE or last == _TAB:
            return None  # the full path would strip it: not the same bytes
        entry = names.get(name)
        if entry is None:
            entry = _field_action(names, actions, name)
            if entry is None:
                return None
        action = entry[0]
        if action == F_PLAIN:
            pass
        elif action == F_INTERESTING:
            join_view(view, entry[1], value.decode("latin-1"))
        elif action == F_HOST:
            host_count += 1
            head.host = value
        elif action == F_CONTENT_LENGTH:
            if (head.content_length >= 0 or not value.isdigit() or len(value) > 15
                    or (value[0] == 0x30 and len(value) > 1)):
                return None  # repeated, not digits, or a leading zero: the full path decides
            head.content_length = int(value)
        elif action == F_XFP:
            head.xfp = True
        elif action == F_XFH:
            head.xfh = True
        elif action == F_EXPLAIN:
            head.explain = True
        elif action in _DROPPED:
            if action == F_CONNECTION:
                token = value.lower()
                if token == b"close":
                    head.keep_alive = False
                elif token != b"keep-alive":
                    return None
            elif action == F_XFF:
                head.xff = value if head.xff is None else head.xff + b", " + value
            elif action == F_VIA:
                head.via = value if head.via is None else head.via + b", " + value
            elif action == F_MARKER:
                view[ROUTED_MARKER] = "1"
            if run < pos:
                parts.append(block[run:pos])
            run = pos + len(line) + 2
        else:
            return None  # Transfer-Encoding, Upgrade, anything new: the full path knows
        pos += len(line) + 2
    if host_count != 1:
        return None
    if run == 0:
        head.kept = block
    else:
        if run < pos:
            parts.append(block[run:pos])
        head.kept = b"".join(parts)
    return head


def drop_fields(block: bytes, names: frozenset[bytes]) -> bytes:
    """`block` (raw field lines) without the lines whose lowercase name is in `names`."""
    lowered = b"\r\n" + block.lower()
    for name in names:
        if lowered.find(b"\r\n" + name + b":") >= 0:
            break
    else:
        return block
    out: list[bytes] = []
    for line in block.split(_CRLF)[:-1]:
        if line.partition(b":")[0].lower() not in names:
            out.append(line + _CRLF)
    return b"".join(out)


_SPAN_DROPS = frozenset({b"traceparent"})
_SPAN_DROPS_ALL = frozenset({b"traceparent", b"tracestate"})


def write_request_head(
    method: bytes,
    target: bytes,
    block: bytes,
    injection: Injection,
    hop: Hop,
    xff: bytes | None,
    xfp: bool,
    xfh: bool,
    host: bytes,
    via: bytes | None,
    span: ProxySpan | None,
) -> bytes:
    """The forwarded request head from a head `parse_request` read: the same fields, in the
    same order, as `forward.core.forwarded_fields` writes from a field list (the kept lines,
    the span's traceparent, the carriers, X-Forwarded-*, Via)."""
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    if span is not None:
        block = drop_fields(block, _SPAN_DROPS if span.keeps_tracestate else _SPAN_DROPS_ALL)
        block += b"traceparent: " + span.traceparent + b"\r\n"
    replaced, updates = injection
    if replaced:  # an edge's stripping replaces fields with nothing: `updates` may be empty
        parts.append(drop_fields(block, replaced))
        for name, value in updates:
            parts.append(name + b": " + value + b"\r\n")
    else:
        parts.append(block)
    if xff is None and not xfp:
        parts.append(hop.forwarded_raw)
    else:
        parts.append(b"x-forwarded-for: " + (xff + b", " + hop.peer if xff else hop.peer)
                     + b"\r\n")
        if not xfp:
            parts.append(b"x-forwarded-proto: " + hop.proto + b"\r\n")
    if not xfh and host:
        parts.append(b"x-forwarded-host: " + host + b"\r\n")
    if via:
        parts.append(b"via: " + via + b", " + hop.via_hop + b"\r\n\r\n")
    else:
        parts.append(hop.via_raw)
    return b"".join(parts)


# What a response field name means to `parse_response` (lowercase names).
_R_PLAIN, _R_LENGTH, _R_CONNECTION, _R_VIA, _R_DROP, _R_UNSURE = range(6)
_RESPONSE_FIELDS: dict[bytes, int] = {
    b"content-length": _R_LENGTH,
    b"connection": _R_CONNECTION,
    b"via": _R_VIA,
    b"keep-alive": _R_DROP,
    b"proxy-connection": _R_DROP,
    b"proxy-authenticate": _R_DROP,
    b"proxy-authorization": _R_DROP,
    b"te": _R_DROP,
    b"trailer": _R_DROP,
    b"transfer-encoding": _R_UNSURE,
    b"upgrade": _R_UNSURE,
}
_RESPONSE_NAMES: dict[bytes, int] = {}  # names as sent -> action (upstreams repeat theirs)
_RESPONSE_MAX_FIELDS = 256


class ResponseHead:
    """A response head read by `parse_response`."""

    __slots__ = ("content_length", "end", "keep_alive", "kept", "length", "line", "status",
                 "via")

    def __init__(self) -> None:
        self.end = 0
        self.status = 0
        self.line = b""
        self.kept = b""
        self.length = b""
        self.content_length = -1
        self.keep_alive = True
        self.via: bytes | None = None


def _response_action(name: bytes) -> int:
    lname = name.lower()
    action = _RESPONSE_FIELDS.get(lname)
    if action is None:
        if not name or lname.translate(None, _TOKEN_CHARS):
            return _R_UNSURE
        action = _R_PLAIN
    if len(_RESPONSE_NAMES) >= _NAMES_LIMIT:
        _RESPONSE_NAMES.clear()
    _RESPONSE_NAMES[name] = action
    return action


def parse_response(data: bytes, start: int) -> ResponseHead | None:
    """Read the response head at `data[start]`, or None when the full parser must.

    Only a final (2xx-5xx, not 204 or 304) `HTTP/1.1` response with a reason phrase and one
    Content-Length, under the same rules for field lines as `parse_request`."""
    end = data.find(_END, start)
    if end < 0:
        return None
    lines = _lines(data, start, end)
    if lines is None:
        return None
    line = lines[0]
    if len(line) < 14 or not line.startswith(b"HTTP/1.1 ") or line[12] != _SPACE:
        return None
    # The three status digits by byte value (no slices: each costs an object in the build).
    d1 = line[9] - 0x30
    d2 = line[10] - 0x30
    d3 = line[11] - 0x30
    if not (0 <= d1 <= 9 and 0 <= d2 <= 9 and 0 <= d3 <= 9):
        return None
    status = d1 * 100 + d2 * 10 + d3
    if status < 200 or status == 204 or status == 304:
        return None
    count = len(lines) - 1
    if count > _RESPONSE_MAX_FIELDS:
        return None
    head = ResponseHead()
    head.status = status
    head.line = data[start : start + len(line) + 2]
    head.end = end + 4
    block = data[start + len(line) + 2 : end + 2]
    parts: list[bytes] = []
    run = 0
    pos = 0
    index = 1
    while index <= count:
        line = lines[index]
        index += 1
        name, sep, value = line.partition(b": ")
        if not sep or not value:
            return None
        first = value[0]
        last = value[-1]
        if first == _SPACE or first == _TAB or last == _SPACE or last == _TAB:
            return None
        known = _RESPONSE_NAMES.get(name)
        action = _response_action(name) if known is None else known
        if action != _R_PLAIN:
            if action == _R_LENGTH:
                if (head.content_length >= 0 or not value.isdigit() or len(value) > 15
                        or (value[0] == 0x30 and len(value) > 1)):
                    return None
                head.content_length = int(value)
                head.length = value
            elif action == _R_CONNECTION:
                token = value.lower()
                if token == b"close":
                    head.keep_alive = False
                elif token != b"keep-alive":
                    return None
            elif action == _R_VIA:
                head.via = value if head.via is None else head.via + b", " + value
            elif action == _R_UNSURE:
                return None
            if run < pos:
                parts.append(block[run:pos])
            run = pos + len(line) + 2
        pos += len(line) + 2
    if head.content_length < 0:
        return None  # chunked or close-delimited: the full parser frames it
    if run == 0:
        head.kept = block
    else:
        if run < pos:
            parts.append(block[run:pos])
        head.kept = b"".join(parts)
    return head
