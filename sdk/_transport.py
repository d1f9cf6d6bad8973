"""The two thin drivers that execute core operations: one over `httpx.Client`, one async.

They do nothing but run commands: send a `Request` and answer with a `Response`, or sleep.
httpx exceptions are translated here, once, into `TransportFailure` values (which the core
retries or reports as `Unavailable`); nothing from httpx escapes.

Invariant: the drivers contain no API knowledge, so sync and async behave identically.
"""

from __future__ import annotations

import asyncio
import time
from typing import TypeVar

import httpx

from forklane._core import Op, Reply, Request, Response, Sleep, TransportFailure
from forklane.errors import ConfigError, ForklaneError

__all__ = ["run_async", "run_sync"]

T = TypeVar("T")
_JSON = {"content-type": "application/json"}


def _failure(exc: httpx.TransportError) -> TransportFailure:
    """Classify: a connect failure surely sent nothing; anything later may have."""
    unsent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
    text = str(exc) or type(exc).__name__
    return TransportFailure(reason=text, sent=not unsent)


def _translate(exc: httpx.HTTPError | httpx.InvalidURL) -> Reply:
    """The one place httpx errors become ours: a bad URL is the caller's, the rest transient."""
    if isinstance(exc, httpx.InvalidURL | httpx.UnsupportedProtocol):
        raise ConfigError(f"cannot use the control-plane URL: {exc}") from None
    if isinstance(exc, httpx.TransportError):
        return _failure(exc)
    raise ForklaneError(f"HTTP client error: {exc}") from None


def _build(http: httpx.Client | httpx.AsyncClient, request: Request) -> httpx.Request:
    return http.build_request(
        request.method,
        request.path,
        params=request.params,
        content=request.body,
        headers=_JSON if request.body is not None else None,
    )


def _warnings(r: httpx.Response) -> tuple[str, ...]:
    """Texts of RFC 7234 `Warning: 299 - "text"` headers (one per warning)."""
    out = []
    for value in r.headers.get_list("warning"):
        _, _, rest = value.partition('"')
        out.append(rest.rstrip().removesuffix('"') or value)
    return tuple(out)


def _send_sync(http: httpx.Client, request: Request) -> Reply:
    try:
        r = http.send(_build(http, request))
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        return _translate(exc)
    return Response(r.status_code, r.content, _warnings(r))


async def _send_async(http: httpx.AsyncClient, request: Request) -> Reply:
    try:
        r = await http.send(_build(http, request))
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        return _translate(exc)
    return Response(r.status_code, r.content, _warnings(r))


def run_sync(op: Op[T], http: httpx.Client) -> T:
    """Drive `op` to completion, blocking."""
    reply: Reply = None
    try:
        while True:
            command = op.send(reply)
            if isinstance(command, Sleep):
                time.sleep(command.seconds)  # a backoff or poll interval, not synchronisation
                reply = None
            else:
                reply = _send_sync(http, command)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    finally:
        op.close()


async def run_async(op: Op[T], http: httpx.AsyncClient) -> T:
    """Drive `op` to completion on the running event loop."""
    reply: Reply = None
    try:
        while True:
            command = op.send(reply)
            if isinstance(command, Sleep):
                await asyncio.sleep(command.seconds)
                reply = None
            else:
                reply = await _send_async(http, command)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    finally:
        op.close()
