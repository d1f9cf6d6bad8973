"""gRPC glue: client and server interceptors for `grpc` (threads) and `grpc.aio`.

Server interceptors capture the routing context from the invocation metadata and make it
current while the method runs (and while a streaming response is produced); client
interceptors add the current context's carrier headers to the call's metadata, unless the
call already sets that key.

Invariants: metadata keys are lowercase and values printable ASCII (the core guarantees
it); a sync handler runs inside a copied `contextvars.Context`, so nothing leaks into the
server's worker threads after the call.
"""

# grpc ships no type information, so its base classes are Any; subclassing them is intended.
# mypy: disable-error-code="misc"

from __future__ import annotations

import contextvars
import inspect
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, NamedTuple

import grpc
import grpc.aio

from forklane.propagation._context import (
    RoutingContext,
    activate,
    context_from_headers,
    deactivate,
    outgoing_headers,
)

__all__ = [
    "AsyncClientInterceptor",
    "AsyncServerInterceptor",
    "ClientInterceptor",
    "ServerInterceptor",
]

Metadata = Sequence[tuple[str, str | bytes]]


def _metadata_pairs(metadata: Any) -> list[tuple[str, str]]:
    if not metadata:
        return []
    return [(k, v) for k, v in metadata if isinstance(v, str)]


def _with_routing(metadata: Any) -> list[tuple[str, str | bytes]] | None:
    """Existing metadata plus the carrier headers it lacks; None when nothing to add."""
    existing = list(metadata or ())
    extra = outgoing_headers(k for k, _ in existing)
    if not extra:
        return None
    return [*existing, *extra.items()]


def _context_of(details: grpc.HandlerCallDetails) -> RoutingContext:
    return context_from_headers(_metadata_pairs(getattr(details, "invocation_metadata", None)))


# --- client, sync ---------------------------------------------------------------------


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


class _ClientCallDetails(_CallDetails, grpc.ClientCallDetails):
    """grpc.ClientCallDetails is abstract; this is the usual concrete record."""


def _sync_details(details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
    metadata = _with_routing(details.metadata)
    if metadata is None:
        return details
    return _ClientCallDetails(
        details.method,
        details.timeout,
        metadata,
        details.credentials,
        getattr(details, "wait_for_ready", None),
        getattr(details, "compression", None),
    )


class ClientInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Use with `grpc.intercept_channel(channel, ClientInterceptor())`."""

    def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        return continuation(_sync_details(client_call_details), request)

    def intercept_unary_stream(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        return continuation(_sync_details(client_call_details), request)

    def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return continuation(_sync_details(client_call_details), request_iterator)

    def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return continuation(_sync_details(client_call_details), request_iterator)


# --- client, asyncio ------------------------------------------------------------------


def _aio_details(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
    metadata = _with_routing(details.metadata)
    if metadata is None:
        return details
    return grpc.aio.ClientCallDetails(
        details.method,
        details.timeout,
        grpc.aio.Metadata(*metadata),
        details.credentials,
        details.wait_for_ready,
    )


class AsyncClientInterceptor(
    grpc.aio.UnaryUnaryClientInterceptor,
    grpc.aio.UnaryStreamClientInterceptor,
    grpc.aio.StreamUnaryClientInterceptor,
    grpc.aio.StreamStreamClientInterceptor,
):
    """Use with `grpc.aio.insecure_channel(target, interceptors=[AsyncClientInterceptor()])`."""

    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(_aio_details(client_call_details), request)

    async def intercept_unary_stream(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(_aio_details(client_call_details), request)

    async def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(_aio_details(client_call_details), request_iterator)

    async def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(_aio_details(client_call_details), request_iterator)


# --- server ---------------------------------------------------------------------------

_KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
_FACTORIES: dict[str, Callable[..., grpc.RpcMethodHandler]] = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}


def _wrap_sync(
    behavior: Callable[..., Any], ctx: RoutingContext, streaming: bool
) -> Callable[..., Any]:
    """Run `behavior` (and, when it streams, each step of its iterator) inside `ctx`."""
    if streaming:

        def stream(request: Any, servicer_context: Any) -> Iterator[Any]:
            run = contextvars.copy_context().run
            run(activate, ctx)
            iterator = run(iter, run(behavior, request, servicer_context))
            while True:
                try:
                    item = run(next, iterator)
                except StopIteration:
                    return
                yield item

        return stream

    def unary(request: Any, servicer_context: Any) -> Any:
        run = contextvars.copy_context().run
        run(activate, ctx)
        return run(behavior, request, servicer_context)

    return unary


def _wrap_async(behavior: Callable[..., Any], ctx: RoutingContext) -> Callable[..., Any]:
    """Async variant: each gRPC asyncio call runs in its own task, so set/reset is local."""
    if inspect.isasyncgenfunction(behavior):

        async def agen(request: Any, servicer_context: Any) -> AsyncIterator[Any]:
            token = activate(ctx)
            try:
                async for item in behavior(request, servicer_context):
                    yield item
            finally:
                deactivate(token)

        return agen
    if inspect.iscoroutinefunction(behavior):

        async def coro(request: Any, servicer_context: Any) -> Any:
            token = activate(ctx)
            try:
                return await behavior(request, servicer_context)
            finally:
                deactivate(token)

        return coro
    return _wrap_sync(behavior, ctx, streaming=inspect.isgeneratorfunction(behavior))


def _rewrap(
    handler: grpc.RpcMethodHandler, wrap: Callable[[Callable[..., Any], str], Callable[..., Any]]
) -> grpc.RpcMethodHandler:
    for kind in _KINDS:
        behavior = getattr(handler, kind, None)
        if behavior is not None:
            return _FACTORIES[kind](
                wrap(behavior, kind),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
    return handler


class ServerInterceptor(grpc.ServerInterceptor):
    """Use with `grpc.server(executor, interceptors=[ServerInterceptor()])`."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        ctx = _context_of(handler_call_details)
        return _rewrap(
            handler, lambda behavior, kind: _wrap_sync(behavior, ctx, kind.endswith("_stream"))
        )


class AsyncServerInterceptor(grpc.aio.ServerInterceptor):
    """Use with `grpc.aio.server(interceptors=[AsyncServerInterceptor()])`."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler: grpc.RpcMethodHandler | None = await continuation(handler_call_details)
        if handler is None:
            return None
        ctx = _context_of(handler_call_details)
        return _rewrap(handler, lambda behavior, _kind: _wrap_async(behavior, ctx))
