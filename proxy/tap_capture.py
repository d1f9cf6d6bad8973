"""What a live tap may capture of one request: its heads and the first bytes of its bodies.

Capture is off unless a viewer asks for it (`TapFilter.headers`, `TapFilter.body`). The
listeners hold a `Capture` only for a request some capturing filter may want (its key and
service match, `open_capture`), so the request path's cost with nobody capturing stays the
test of `stats.taps` it already had, and one `capture is not None` test where body chunks
and the response head pass.

Invariants:
- a capture never delays or buffers the relay: it keeps a reference to a head the listener
  built anyway and copies at most `limit` bytes of each body direction, as bytes slices;
- heads are the wire as this proxy wrote it: the request as forwarded to the destination
  (hop-by-hop fields gone, carriers injected) and the response as returned to the client;
- redaction happens here, in the proxy, when the record is rendered: `authorization`,
  `proxy-authorization`, `cookie`, `set-cookie` and every name the filter lists become
  `[redacted]`, so a redacted value never leaves this process;
- a rendered capture is bounded (`MAX_HEAD_BYTES` of fields per head, `MAX_BODY` per body);
- pure: no asyncio, sockets or clocks here.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = [
    "ALWAYS_REDACTED",
    "MAX_BODY",
    "MAX_HEAD_BYTES",
    "REDACTED",
    "Capture",
    "open_capture",
    "render",
]

MAX_BODY = 16 * 1024  # bytes of each body direction a viewer may ask for
MAX_HEAD_BYTES = 16 * 1024  # bytes of field names and values rendered per head
MAX_VALUE = 4096  # characters of one field value rendered
REDACTED = "[redacted]"
ALWAYS_REDACTED = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})

Head = bytes | Sequence[tuple[bytes, bytes]]
"""An HTTP/1.1 head as written (request or status line, field lines, blank line) or an
HTTP/2 field list (pseudo-fields included)."""


class Capture:
    """One request's capture while it runs; rendered per filter when the request ends."""

    __slots__ = (
        "limit",
        "request_body",
        "request_bytes",
        "request_head",
        "response_body",
        "response_bytes",
        "response_head",
    )

    def __init__(self, request_head: Head, limit: int) -> None:
        self.limit = limit
        self.request_head: Head = request_head
        self.response_head: Head | None = None
        self.request_body: list[bytes] = []
        self.response_body: list[bytes] = []
        self.request_bytes = 0
        self.response_bytes = 0

    def request_data(self, data: bytes) -> None:
        """A request body chunk passed (copy what is still wanted of it)."""
        kept = self.request_bytes
        self.request_bytes = kept + len(data)
        if kept < self.limit:
            self.request_body.append(bytes(data[: self.limit - kept]))

    def response_data(self, data: bytes) -> None:
        """A response body chunk passed."""
        kept = self.response_bytes
        self.response_bytes = kept + len(data)
        if kept < self.limit:
            self.response_body.append(bytes(data[: self.limit - kept]))


def open_capture(sinks: Iterable[Any], key: str | None, service: str | None,
                 head: Head) -> Capture | None:
    """A capture for a request when some sink captures what matches its key and service
    (the status is not known yet; the record is filtered again when it ends)."""
    limit = -1
    for sink in sinks:
        wanted = getattr(sink, "capture_limit", None)
        if wanted is not None:
            n = wanted(key, service)
            if n > limit:
                limit = n
    return None if limit < 0 else Capture(head, limit)


def _fields(head: Head) -> list[tuple[str, str]]:
    if isinstance(head, bytes):
        lines = head.split(b"\r\n")[1:]  # after the request or status line
        out = []
        for line in lines:
            if not line:
                break
            name, _, value = line.partition(b":")
            out.append((name.decode("latin-1"), value.strip().decode("latin-1")))
        return out
    return [(n.decode("latin-1"), v.decode("latin-1")) for n, v in head]


def render_head(head: Head, redact: frozenset[str]) -> tuple[list[list[str]], bool]:
    """The fields as `[name, value]` pairs, redacted, and whether some were cut."""
    out: list[list[str]] = []
    size = 0
    cut = False
    for name, value in _fields(head):
        if name.lower() in redact:
            value = REDACTED
        elif len(value) > MAX_VALUE:
            value = value[:MAX_VALUE]
            cut = True
        size += len(name) + len(value)
        if size > MAX_HEAD_BYTES:
            return out, True
        out.append([name, value])
    return out, cut


def _body(doc: dict[str, Any], chunks: list[bytes], total: int, limit: int) -> None:
    data = b"".join(chunks)[:limit]
    try:
        doc["body"] = data.decode("utf-8")
    except UnicodeDecodeError:
        doc["body"] = base64.b64encode(data).decode("ascii")
        doc["body_encoding"] = "base64"
    doc["body_bytes"] = total
    doc["body_truncated"] = total > len(data)


def render(capture: Capture, headers: bool, body: int, redact: Iterable[str] = ()
           ) -> tuple[dict[str, Any], int]:
    """The `capture` member of a record for one filter's wishes, and its size in bytes
    (about what it adds to the JSON record)."""
    hidden = ALWAYS_REDACTED | {n.lower() for n in redact}
    request: dict[str, Any] = {}
    response: dict[str, Any] = {}
    size = 0
    if headers:
        request["headers"], cut = render_head(capture.request_head, hidden)
        if cut:
            request["headers_truncated"] = True
        if capture.response_head is not None:
            response["headers"], cut = render_head(capture.response_head, hidden)
            if cut:
                response["headers_truncated"] = True
        for doc in (request, response):
            size += sum(len(n) + len(v) + 6 for n, v in doc.get("headers", ()))
    if body > 0:
        _body(request, capture.request_body, capture.request_bytes, body)
        _body(response, capture.response_body, capture.response_bytes, body)
        size += len(request["body"]) + len(response["body"])
    return {"request": request, "response": response}, size + 100
