"""The gRPC server that pushes the latest routing snapshot to every subscribed proxy.

See the package docstring for the protocol. This module owns the grpc.aio server and every
per-stream task; grpc exceptions never leave it. A stream's reader and writer tasks are owned
by the stream's handler and cancelled with it.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio

from forklane.controlplane.auth import Grant, subscription_refused
from forklane.controlplane.errors import AddressInUse
from forklane.controlplane.publisher import SnapshotPublisher
from forklane.controlplane.push.registry import ProxyRegistry, StreamId
from forklane.controlplane.tap import TapHub
from forklane.proxy.push_messages import (
    REPLICA_METADATA,
    SERVICE,
    MessageError,
    Node,
    SubscribeRequest,
    decode_request,
    encode_full_response,
    encode_tap_filters,
)
from forklane.proxy.schema import RoutingSnapshot

__all__ = ["Authorize", "PushServer", "server_options"]

log = logging.getLogger("forklane.controlplane.push")

Authorize = Callable[[str | None], Awaitable[Grant | None]]

def server_options(min_ping_interval: float, keepalive: float) -> tuple[tuple[str, Any], ...]:
    """Options of the push server.

    Proxies ping every `controlplane_keepalive` seconds (20 by default) to notice a dead
    peer; the server accepts pings `min_ping_interval` apart (10 s by default) and answers
    faster ones with GOAWAY `too_many_pings`, so the two must agree: min_ping_interval below
    every proxy's keepalive. (`grpc.http2.min_ping_interval_without_data_ms` is the real name
    of that option; a misspelt one is silently ignored and leaves gRPC's 5-minute default.)
    SO_REUSEPORT is off: a second control plane must not bind the same port and split the
    proxies between two replicas without anybody noticing.
    """
    return (
        ("grpc.so_reuseport", 0),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", max(1, int(min_ping_interval * 1000))),
        ("grpc.keepalive_time_ms", max(1, int(keepalive * 1000))),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.max_receive_message_length", 1 << 20),
    )


def _bind_error(address: str) -> str:
    """Why `address` cannot be bound, found with a plain socket (grpc does not say)."""
    from forklane.controlplane.settings import parse_hostport

    try:
        host, port = parse_hostport(address)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((host, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return "in use"
        return exc.strerror or str(exc)
    except ValueError as exc:
        return str(exc)
    return "unknown reason"


class _StreamClosed(Exception):
    """The proxy half-closed its side: the stream is over."""


@dataclass(slots=True)
class _Pending:
    """The one push of a stream that awaits its answer."""

    nonce: str | None = None
    version: str = ""
    answered: asyncio.Event = field(default_factory=asyncio.Event)


def _bearer(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    for key, value in metadata or ():
        if key.lower() != "authorization" or not isinstance(value, str):
            continue
        scheme, _, token = value.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return None


class PushServer:
    def __init__(
        self,
        publisher: SnapshotPublisher,
        registry: ProxyRegistry,
        authorize: Authorize,
        *,
        min_ping_interval: float = 10.0,
        keepalive: float = 30.0,
        recheck_interval: float = 30.0,
        taps: TapHub | None = None,
    ) -> None:
        self._taps = taps
        self._write_locks: dict[StreamId, asyncio.Lock] = {}
        self._publisher = publisher
        self._registry = registry
        self._authorize = authorize
        self._options = server_options(min_ping_interval, keepalive)
        self._recheck = recheck_interval
        self._server: grpc.aio.Server | None = None
        self._encoded: tuple[RoutingSnapshot, bytes] | None = None
        self._nonces = itertools.count(1)

    async def start(self, address: str) -> int:
        """Bind `host:port` (port 0: any free port), start serving; returns the bound port."""
        if self._server is not None:
            raise RuntimeError("push server already started")
        server = grpc.aio.server(options=self._options)
        handler = grpc.stream_stream_rpc_method_handler(self._stream)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, {"Stream": handler}),)
        )
        try:
            port = int(server.add_insecure_port(address))
        except RuntimeError:
            port = 0
        if port == 0:
            reason = _bind_error(address)
            if reason == "in use":
                raise AddressInUse(
                    f"cannot listen on {address} (gRPC push): the port is already in use by "
                    "another process (choose another with --grpc)"
                )
            raise OSError(f"cannot listen on {address} (gRPC push): {reason}")
        await server.start()
        self._server = server
        log.info("snapshot push (grpc) listening on %s (port %d)", address, port)
        return port

    async def aclose(self) -> None:
        """Stop at once: open streams are cancelled and their proxies reconnect elsewhere."""
        server, self._server = self._server, None
        if server is not None:
            await server.stop(None)

    # -- one stream -------------------------------------------------------------------------
    async def _stream(self, request_iterator: object, context: grpc.aio.ServicerContext) -> None:
        token = _bearer(context.invocation_metadata())
        try:
            grant = await self._authorize(token)
        except Exception as exc:
            log.warning("push: token check failed: %s", exc)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "cannot check the token now")
            return
        if grant is None:
            reason = (
                "missing bearer token (metadata 'authorization: Bearer <token>')"
                if token is None
                else "token is invalid or may not subscribe to snapshots"
            )
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)
            return
        try:
            first = await self._read(context)
        except _StreamClosed:
            return
        except MessageError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            return
        node = first.node
        if node is None:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "the first SubscribeRequest must carry 'node'"
            )
            return
        refused = subscription_refused(grant, node.service)
        if refused is not None:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, refused)
            return
        stream = self._registry.connect(
            node.id, node.service, node.listeners, first.version_info or None,
            proxy_version=node.version,
        )
        log.info(
            "push: proxy %s (%s) subscribed at version %r from %s",
            node.id,
            node.service,
            first.version_info,
            context.peer(),
        )
        try:
            await context.send_initial_metadata(((REPLICA_METADATA, self._registry.replica),))
            error = await self._serve(stream, context, token, node)
        finally:
            self._registry.disconnect(stream)
            log.info("push: proxy %s disconnected", node.id)
        if error is not None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, error)

    async def _serve(
        self, stream: StreamId, context: grpc.aio.ServicerContext, token: str | None, node: Node
    ) -> str | None:
        """Run reader, writer(s) and the token re-check until one ends; returns an error to
        abort with, if any."""
        pending = _Pending()
        self._write_locks[stream] = asyncio.Lock()
        reader = asyncio.create_task(self._read_answers(stream, context, pending, node.id))
        writer = asyncio.create_task(self._push_latest(stream, context, pending))
        checker = asyncio.create_task(self._recheck_token(token))
        tasks: tuple[asyncio.Task[None], ...] = (reader, writer, checker)
        if self._taps is not None and "tap" in node.capabilities:
            tasks += (asyncio.create_task(self._push_taps(stream, context, self._taps)),)
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._write_locks.pop(stream, None)
        if checker in done and not checker.cancelled() and checker.exception() is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "token revoked")
        for task in done:
            exc = task.exception()
            if isinstance(exc, MessageError):
                return str(exc)
            if isinstance(exc, _StreamClosed):
                return None
            if exc is not None:
                raise exc
        return None

    async def _recheck_token(self, token: str | None) -> None:
        """Return once the stream's token is no longer accepted (e.g. it was revoked)."""
        while True:
            await asyncio.sleep(self._recheck)
            try:
                if not await self._authorize(token):
                    return
            except Exception:  # the store is down: keep the stream, check again later
                log.warning("push: cannot re-check a proxy token now", exc_info=True)

    async def _read(self, context: grpc.aio.ServicerContext) -> SubscribeRequest:
        data = await context.read()
        if data is grpc.aio.EOF:
            raise _StreamClosed
        if not isinstance(data, bytes):
            raise MessageError("expected a JSON SubscribeRequest")
        return decode_request(data)

    async def _read_answers(
        self, stream: StreamId, context: grpc.aio.ServicerContext, pending: _Pending, node_id: str
    ) -> None:
        while True:
            answer = await self._read(context)
            if answer.tap is not None:  # live-tap records, not an answer to a push
                if self._taps is not None:
                    self._taps.received(node_id, answer.tap.records, answer.tap.dropped)
                continue
            if pending.nonce is None or answer.response_nonce != pending.nonce:
                log.debug(
                    "push: stream %d: stale answer (nonce %r) ignored",
                    stream,
                    answer.response_nonce,
                )
                continue
            if answer.is_nack:
                detail = answer.error_detail or ""
                self._registry.nacked(stream, pending.version, detail)
                log.warning(
                    "push: stream %d NACKed version %s: %s", stream, pending.version, detail
                )
            else:
                self._registry.acked(stream, answer.version_info)
            pending.nonce = None
            pending.answered.set()

    async def _push_latest(
        self, stream: StreamId, context: grpc.aio.ServicerContext, pending: _Pending
    ) -> None:
        # A new stream always gets the latest snapshot, whatever version the proxy reports:
        # the proxy skips re-applying identical content, and a control plane whose store was
        # reset may reuse a version number for different content.
        than: str | None = None
        while True:
            snapshot = await self._publisher.wait_newer(than)
            nonce = str(next(self._nonces))
            pending.nonce, pending.version = nonce, snapshot.version
            pending.answered.clear()
            self._registry.sent(stream, snapshot.version)
            async with self._write_locks[stream]:
                await context.write(
                    encode_full_response(snapshot.version, nonce, self._encode(snapshot))
                )
            await pending.answered.wait()
            than = snapshot.version

    async def _push_taps(
        self, stream: StreamId, context: grpc.aio.ServicerContext, taps: TapHub
    ) -> None:
        """Tell the proxy the whole filter set whenever it changes (nothing while nobody has
        ever watched: a proxy starts with no filters)."""
        seen = 0
        while True:
            seen = await taps.wait_changed(seen)
            async with self._write_locks[stream]:
                await context.write(encode_tap_filters(str(next(self._nonces)), taps.filters()))

    def _encode(self, snapshot: RoutingSnapshot) -> bytes:
        """Each version is encoded once and shared by every stream."""
        cached = self._encoded
        if cached is not None and cached[0] is snapshot:
            return cached[1]
        data = snapshot.model_dump_json().encode()
        self._encoded = (snapshot, data)
        return data
