"""WSGI glue (Flask, Django, any WSGI app): a middleware that makes each request's routing
context current while the app handles it, including while its response body is produced.

    app.wsgi_app = RoutingContextMiddleware(app.wsgi_app)            # Flask
    application = RoutingContextMiddleware(get_wsgi_application())   # Django (wsgi.py)

It imports no framework. WSGI servers hand headers over as `HTTP_*` environ keys (repeated
fields already joined with `,`); only the carrier headers are read. A streamed body (a
generator the app returns) is produced after the app returned, so the context is made
current again around each chunk and around `close()`: a next hop called while streaming
carries the key too. Outgoing calls need the client helpers (`forklane.propagation.requests`
for a `requests.Session`, `.httpx` for httpx).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack
from typing import Any

from forklane.propagation._context import (
    FORWARDED_HEADERS,
    RoutingContext,
    activate,
    context_from_headers,
    deactivate,
)

__all__ = ["RoutingContextMiddleware"]

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]
_ENVIRON_KEYS = tuple((name, "HTTP_" + name.upper().replace("-", "_")) for name in FORWARDED_HEADERS)


def environ_headers(environ: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The carrier headers of a WSGI environ as (name, value) pairs."""
    return [(name, environ[key]) for name, key in _ENVIRON_KEYS if isinstance(environ.get(key), str)]


class RoutingContextMiddleware:
    """Capture the carrier headers of each request for the app's run and its body."""

    def __init__(self, app: WSGIApp, *, otel_baggage: bool = False) -> None:
        self.app = app
        self.otel_baggage = otel_baggage

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        ctx = context_from_headers(environ_headers(environ))
        with self._current(ctx):
            body = self.app(environ, start_response)
        return _Body(body, ctx, self._current)

    def _current(self, ctx: RoutingContext) -> ExitStack:
        stack = ExitStack()
        token = activate(ctx)
        stack.callback(deactivate, token)
        if self.otel_baggage and ctx.key is not None:
            from forklane.propagation.otel import routing_key_baggage

            stack.enter_context(routing_key_baggage(ctx.key))
        return stack


class _Body:
    """The app's response body, each chunk produced with the request's context current."""

    def __init__(
        self, body: Iterable[bytes], ctx: RoutingContext,
        current: Callable[[RoutingContext], ExitStack],
    ) -> None:
        self._body = body
        self._chunks: Iterator[bytes] | None = None
        self._ctx = ctx
        self._current = current

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        with self._current(self._ctx):
            if self._chunks is None:
                self._chunks = iter(self._body)
            return next(self._chunks)

    def close(self) -> None:
        close = getattr(self._body, "close", None)
        if close is not None:
            with self._current(self._ctx):
                close()
