"""The control plane's end of `forklane connect`: one tunnel endpoint per connected fork.

`GET /api/v1/sandboxes/NAME/connect?service=S&session=ID&host=H`, upgraded to a WebSocket
and authorised like an update of the sandbox, attaches a developer's machine. For each
service named, this replica listens on `tunnel_host` (a port the kernel picks) and writes
`status.connections[]` of the sandbox: the service, the endpoint proxies dial
(`tunnel_advertise:PORT`), the developer's host, since when, this replica. The compiler
routes the fork there while the entry exists, so proxies need no change: a connection a
proxy opens to the endpoint becomes one stream of the tunnel, and the developer's machine
opens a connection to its local service for it (a byte stream: HTTP/1.1, h2c, gRPC and
WebSocket pass unchanged). `ready` is sent once the published snapshot routes there.

A drop (the WebSocket ends without `withdraw`): streams in flight fail (an HTTP/1.x request
whose answer had not begun gets `503` with `x-forklane-error: fork-unavailable` and the
reason; other connections are reset), the listener stops accepting, so proxies get a refused
connect and answer their own `503 fork-unavailable` (or the baseline with
`fallback: baseline`), and the entry stays `tunnel_grace` seconds as `reconnecting`. A
reconnect of the same session within the grace takes the same port back (the route does not
change); after it the entry goes and the route with it. `withdraw` (Ctrl-C) removes the
entries at once and answers `withdrawn` when the published snapshot no longer routes there.

Several replicas: the laptop's WebSocket lands on one; that replica's endpoint is what it
writes into the status, and every replica compiles the same route from the store. A sandbox
deleted while connected ends its tunnels (`ended`, with the reason).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

from aiohttp import WSMsgType, web

from forklane.controlplane.errors import ApiError
from forklane.controlplane.publisher import SnapshotPublisher
from forklane.controlplane.store.base import Conflict, NotFound, Record, Store
from forklane.controlplane.tunnel.frames import MAX_MESSAGE, FrameError, control, parse_control
from forklane.controlplane.tunnel.mux import Mux, StreamView
from forklane.proxy.schema import RoutingSnapshot

__all__ = ["TunnelRegistry", "http_failure"]

log = logging.getLogger("forklane.controlplane.tunnel")

_SESSION = re.compile(r"^[a-z0-9]{8,64}$")
_HOST = re.compile(r"^[\x21-\x7e]{1,253}$")
_HTTP1 = re.compile(rb"^[A-Z]{3,16} \S")
ROUTE_WAIT = 10.0  # seconds `ready`/`withdrawn` wait for the published snapshot


def http_failure(view: StreamView, reason: str) -> bytes | None:
    """What a failed stream answers its proxy: a 503 when it carries an HTTP/1.x request
    waiting for an answer that has not begun (so the caller reads why), else None (reset)."""
    if not view.waiting or not _HTTP1.match(view.first) or view.first.startswith(b"PRI * "):
        return None
    body = f"fork-unavailable: {reason}\n".encode()
    return (b"HTTP/1.1 503 Service Unavailable\r\nx-forklane-error: fork-unavailable\r\n"
            b"content-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (len(body), body))


@dataclass(eq=False)
class _Session:
    id: str
    host: str
    ws: web.WebSocketResponse
    mux: Mux
    # set once `ready` went out: the laptop reads it before any stream opens
    ready: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(eq=False)
class _Tunnel:
    sandbox: str
    service: str
    port: int = 0
    server: asyncio.Server | None = None
    session: _Session | None = None
    host: str = ""
    since: datetime | None = None
    grace: asyncio.Task[None] | None = None


@dataclass(eq=False)
class TunnelRegistry:
    """Every tunnel endpoint of this replica, by (sandbox, service)."""

    store: Store
    publisher: SnapshotPublisher
    clock: Callable[[], datetime]
    bind_host: str = "127.0.0.1"
    advertise: str = "127.0.0.1"
    grace: float = 15.0
    replica: str = ""
    _tunnels: dict[tuple[str, str], _Tunnel] = field(default_factory=dict)
    _closing: bool = False
    _checker: asyncio.Task[None] | None = None  # looks for sandboxes that ended
    _recheck: bool = False

    def start(self) -> None:
        """Follow the store: a connected sandbox that is deleted ends its tunnels."""
        self.store.add_listener(self._changed)

    def _changed(self, revision: int) -> None:
        if not self._tunnels or self._closing:
            return
        if self._checker is not None and not self._checker.done():
            self._recheck = True
            return
        self._checker = asyncio.create_task(self._end_deleted(), name="tunnel-ended-check")

    async def _end_deleted(self) -> None:
        while True:
            self._recheck = False
            for sandbox in sorted({t.sandbox for t in self._tunnels.values()}):
                try:
                    record = await self.store.get("sandboxes", sandbox)
                except NotFound:
                    why = f"sandbox {sandbox} was deleted"
                else:
                    if (record.status or {}).get("phase") != "Terminating":
                        continue
                    why = f"sandbox {sandbox} is being deleted"
                sessions = {id(t.session): t.session for t in self._tunnels.values()
                            if t.sandbox == sandbox and t.session is not None}
                for tunnel in [t for t in self._tunnels.values() if t.sandbox == sandbox]:
                    if tunnel.grace is not None:
                        tunnel.grace.cancel()
                    self._stop_listening(tunnel)
                    tunnel.session = None
                    self._tunnels.pop((tunnel.sandbox, tunnel.service), None)
                for session in sessions.values():
                    session.mux.fail_all(why)
                    session.ready.set()
                    with contextlib.suppress(Exception):
                        await session.ws.send_str(control("ended", reason=why))
                        await session.ws.close(code=1000, message=b"sandbox ended")
            if not self._recheck:
                return

    # -- the handler ---------------------------------------------------------------------------
    async def serve(self, request: web.Request, record: Record,
                    audit: Callable[[], Awaitable[None]] | None = None) -> web.StreamResponse:
        """Validate (errors are answers before the upgrade), upgrade, audit, attach, carry."""
        services, session_id, host = await self._parse(request, record)
        for service in services:
            held = self._tunnels.get((record.name, service))
            if held is not None and held.session is not None and held.session.id != session_id:
                since = held.since.strftime("%H:%M:%S UTC") if held.since else "-"
                raise ApiError(409, f"{service} of sandbox {record.name} is connected from "
                                    f"{held.host} since {since}; stop that forklane connect "
                                    "first")
        if self._closing:
            raise ApiError(503, "this control plane is shutting down; connect again")
        ws = web.WebSocketResponse(heartbeat=10.0, max_msg_size=MAX_MESSAGE + 1024, compress=False)
        if not ws.can_prepare(request).ok:
            raise ApiError(400, "this endpoint takes a WebSocket upgrade (use forklane connect)")
        await ws.prepare(request)
        if audit is not None:
            with contextlib.suppress(Exception):
                await audit()
        session = _Session(session_id, host, ws, Mux(ws.send_bytes, opener=True))
        withdrawn = False
        try:
            endpoints = await self._attach(record.name, services, session)
            routed = await self._wait_routes(record.name, endpoints)
            key = (record.status or {}).get("routingKey") or record.spec.get("routingKey")
            await ws.send_str(control("ready", sandbox=record.name, routingKey=key,
                                      services=endpoints, routed=routed))
            session.ready.set()
            withdrawn = await self._carry(session)
        except Exception:
            log.exception("tunnel of sandbox %s failed", record.name)
        finally:
            try:
                if not withdrawn:
                    await self._detach(session, f"the tunnel to {host} dropped")
                if not ws.closed:
                    await ws.close()
            except Exception:
                log.exception("tunnel of sandbox %s: detaching failed", record.name)
        return ws

    async def _parse(self, request: web.Request, record: Record) -> tuple[list[str], str, str]:
        query = request.query
        services = query.getall("service", [])
        if not services:
            raise ApiError(400, "name the services to connect: ?service=NAME (repeatable)")
        if len(set(services)) != len(services):
            raise ApiError(400, "a service is named twice")
        if (record.status or {}).get("phase") == "Terminating":
            raise ApiError(409, f"sandbox {record.name} is being deleted")
        forked = [f.get("service") for f in record.spec.get("forks", ())]
        for service in services:
            if service in forked:
                continue
            try:
                await self.store.get("services", service)
            except NotFound:
                raise ApiError(422, f"unknown service {service!r}") from None
            raise ApiError(422, f"sandbox {record.name} does not fork {service!r} (it forks "
                                f"{', '.join(map(str, forked))}); add the fork first, e.g. "
                                f"{{service: {service}, local: true}}")
        session = query.get("session") or secrets.token_hex(8)
        if not _SESSION.match(session):
            raise ApiError(400, "session must be 8..64 characters of [a-z0-9]")
        host = query.get("host") or (request.remote or "unknown")
        if not _HOST.match(host):
            raise ApiError(400, "host must be 1..253 printable characters without spaces")
        return services, session, host

    async def _carry(self, session: _Session) -> bool:
        """Feed the tunnel until it ends; True when the developer withdrew."""
        ws = session.ws
        async for msg in ws:
            try:
                if msg.type == WSMsgType.BINARY:
                    session.mux.handle(msg.data)
                elif msg.type == WSMsgType.TEXT:
                    if parse_control(msg.data)["type"] == "withdraw":
                        await self._withdraw(session)
                        return True
            except FrameError as exc:
                log.warning("tunnel from %s: protocol error: %s", session.host, exc)
                session.mux.fail_all(f"protocol error: {exc}")
                await ws.close(code=1002, message=str(exc).encode()[:120])
                return False
        return False

    # -- attach, detach, withdraw --------------------------------------------------------------
    async def _attach(self, sandbox: str, services: list[str], session: _Session
                      ) -> dict[str, str]:
        now = self.clock()
        for service in services:
            tunnel = self._tunnels.setdefault((sandbox, service), _Tunnel(sandbox, service))
            old = tunnel.session
            tunnel.session = session
            if old is not None and old is not session:  # the same session, reconnected
                old.mux.fail_all("replaced by a newer connection of the same session")
                await old.ws.close(code=4000, message=b"replaced by a newer connection")
            if tunnel.grace is not None:
                tunnel.grace.cancel()
                tunnel.grace = None
            if tunnel.since is None or tunnel.host != session.host:
                tunnel.since = now
            tunnel.host = session.host
            if tunnel.server is None:
                await self._listen(tunnel)
        await self._write(sandbox, {s: self._entry(self._tunnels[(sandbox, s)], "connected")
                                    for s in services})
        return {s: self._endpoint(self._tunnels[(sandbox, s)]) for s in services}

    async def _listen(self, tunnel: _Tunnel) -> None:
        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._accepted(tunnel, reader, writer)

        try:
            tunnel.server = await asyncio.start_server(accepted, self.bind_host, tunnel.port)
        except OSError:
            if tunnel.port == 0:
                raise
            log.info("tunnel port %d was taken meanwhile: a new one", tunnel.port)
            tunnel.server = await asyncio.start_server(accepted, self.bind_host, 0)
        tunnel.port = int(tunnel.server.sockets[0].getsockname()[1])

    async def _accepted(self, tunnel: _Tunnel, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:
        session = tunnel.session
        if session is not None and not session.ready.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ROUTE_WAIT + 5):
                    await session.ready.wait()
        if session is None or tunnel.session is not session or session.mux.closed is not None:
            writer.transport.abort()
            return
        try:
            sid = session.mux.open()
        except FrameError:
            writer.transport.abort()
            return
        await session.mux.bridge(sid, reader, writer, service=tunnel.service,
                                 failure=http_failure)

    async def _detach(self, session: _Session, reason: str) -> None:
        """A drop: fail the streams, stop accepting, keep the route for the grace period."""
        session.mux.fail_all(reason)
        session.ready.set()  # connections waiting for it give up now
        mine = [t for t in self._tunnels.values() if t.session is session]
        for tunnel in mine:
            tunnel.session = None
            self._stop_listening(tunnel)
            if not self._closing:
                tunnel.grace = asyncio.create_task(self._expire(tunnel),
                                                   name=f"tunnel-grace-{tunnel.service}")
        by_sandbox: dict[str, dict[str, dict[str, object] | None]] = {}
        for tunnel in mine:
            entry = None if self._closing else self._entry(tunnel, "reconnecting")
            by_sandbox.setdefault(tunnel.sandbox, {})[tunnel.service] = entry
        for sandbox, changes in by_sandbox.items():
            await self._write(sandbox, changes)
        if self._closing:
            for tunnel in mine:
                self._tunnels.pop((tunnel.sandbox, tunnel.service), None)

    async def _expire(self, tunnel: _Tunnel) -> None:
        await asyncio.sleep(self.grace)  # the grace period itself, not a synchronisation
        if tunnel.session is not None:
            return
        tunnel.grace = None
        self._tunnels.pop((tunnel.sandbox, tunnel.service), None)
        log.info("tunnel of %s/%s not back within %gs: route withdrawn", tunnel.sandbox,
                 tunnel.service, self.grace)
        await self._write(tunnel.sandbox, {tunnel.service: None})

    async def _withdraw(self, session: _Session) -> None:
        mine = [t for t in self._tunnels.values() if t.session is session]
        session.mux.fail_all(f"{session.host} disconnected")
        for tunnel in mine:
            tunnel.session = None
            self._stop_listening(tunnel)
            self._tunnels.pop((tunnel.sandbox, tunnel.service), None)
        sandboxes = {t.sandbox for t in mine}
        for sandbox in sandboxes:
            await self._write(sandbox, {t.service: None for t in mine if t.sandbox == sandbox})
        gone = {t.service: self._endpoint(t) for t in mine}
        for sandbox in sandboxes:
            await self._wait_routes(sandbox, gone, present=False)
        await session.ws.send_str(control("withdrawn"))

    def _stop_listening(self, tunnel: _Tunnel) -> None:
        if tunnel.server is not None:
            tunnel.server.close()
            tunnel.server = None

    async def forget_own(self) -> None:
        """At start: entries this replica (by name) wrote in an earlier life point at
        listeners that are gone; remove them (their laptops reconnect and write new ones)."""
        if not self.replica:
            return
        for record in (await self.store.list("sandboxes")).items:
            stale = [c.get("service") for c in (record.status or {}).get("connections") or ()
                     if c.get("replica") == self.replica]
            if stale:
                log.info("sandbox %s: removing connections left by this replica's last run",
                         record.name)
                await self._write(record.name, {str(s): None for s in stale})

    async def aclose(self) -> None:
        """Shutting down: close every tunnel and remove its entries (the laptop reconnects,
        to another replica or to this one restarted)."""
        self._closing = True
        self.store.remove_listener(self._changed)
        if self._checker is not None:
            self._checker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._checker
        sessions = {id(t.session): t.session for t in self._tunnels.values() if t.session}
        for session in sessions.values():
            session.mux.fail_all("the control plane is shutting down")
            with contextlib.suppress(Exception):
                await session.ws.close(code=1001, message=b"control plane shutting down")
        for tunnel in list(self._tunnels.values()):
            if tunnel.grace is not None:
                tunnel.grace.cancel()
            self._stop_listening(tunnel)
        stale: dict[str, dict[str, dict[str, object] | None]] = {}
        for tunnel in self._tunnels.values():
            stale.setdefault(tunnel.sandbox, {})[tunnel.service] = None
        self._tunnels.clear()
        for sandbox, changes in stale.items():
            with contextlib.suppress(Exception):
                await self._write(sandbox, changes)

    # -- status and snapshot -------------------------------------------------------------------
    def _endpoint(self, tunnel: _Tunnel) -> str:
        host = f"[{self.advertise}]" if ":" in self.advertise else self.advertise
        return f"{host}:{tunnel.port}"

    def _entry(self, tunnel: _Tunnel, state: str) -> dict[str, object]:
        since = tunnel.since or self.clock()
        return {"service": tunnel.service, "endpoint": self._endpoint(tunnel),
                "host": tunnel.host, "since": since.isoformat().replace("+00:00", "Z"),
                "state": state, "replica": self.replica,
                "session": tunnel.session.id if tunnel.session else ""}

    async def _write(self, sandbox: str, changes: dict[str, dict[str, object] | None]) -> None:
        """Replace the entries of `changes`' services (None: remove) in the sandbox's
        `status.connections`, with the resourceVersion read (the reconciler's writes race)."""
        for _ in range(50):
            try:
                record = await self.store.get("sandboxes", sandbox)
            except NotFound:
                return
            status = dict(record.status or {})
            before = list(status.get("connections") or [])
            after = [c for c in before if c.get("service") not in changes]
            after += [c for c in changes.values() if c is not None]
            after.sort(key=lambda c: str(c.get("service")))
            if after == before:
                return
            if after:
                status["connections"] = after
            else:
                status.pop("connections", None)
            try:
                await self.store.update_status("sandboxes", sandbox, status=status,
                                               expected_version=record.resource_version)
                return
            except Conflict:
                continue
        log.warning("could not record the connections of sandbox %s (writes kept racing)",
                    sandbox)

    async def _wait_routes(self, sandbox: str, endpoints: dict[str, str], *,
                           present: bool = True) -> bool:
        """Until the published snapshot routes (or no longer routes) each service of the
        sandbox to its endpoint; False after `ROUTE_WAIT` seconds."""
        def done(snap: RoutingSnapshot | None) -> bool:
            if snap is None:
                return False
            routed = {(f.service, ep) for f in snap.forks if f.sandbox == sandbox
                      for ep in f.endpoints}
            return all(((s, ep) in routed) == present for s, ep in endpoints.items())

        try:
            async with asyncio.timeout(ROUTE_WAIT):
                latest = self.publisher.latest
                while not done(latest):
                    latest = await self.publisher.wait_newer(
                        latest.version if latest is not None else None)
        except TimeoutError:
            return False
        return True
