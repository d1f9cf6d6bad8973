"""`forklane connect`: this machine as a sandbox's fork, through a tunnel to the control plane.

The laptop dials out (one WebSocket to `/api/v1/sandboxes/NAME/connect`, the URL and token
the CLI already uses), so nothing has to reach in. The control plane routes the sandbox's
key to a tunnel endpoint of its own; each connection a proxy opens there arrives here as one
stream, and `Connector` opens a TCP connection to the local service (`--to`) for it and
carries bytes both ways (HTTP/1.1, h2c/gRPC and WebSocket alike).

The other direction: `OutboundProxy` is an HTTP proxy on 127.0.0.1 for the local service's
own calls (`HTTP_PROXY`): it adds the routing key and sends each request to the
environment's outbound address (a forklane proxy's outbound listener), so those calls reach
the environment's services, and the sandbox's other forks, with the key.

A drop reconnects with capped, fully jittered backoff (0.25 s doubling to 5 s) under the same
session id, so the control plane gives back the same endpoint within its grace period and
the route never changes. Stopping (`stop` set, Ctrl-C in the CLI) withdraws the route and
waits for the control plane to confirm the snapshot no longer routes here, then closes.

Needs aiohttp (`pip install 'forklane[cli]'`).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import secrets
import socket
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import aiohttp

from forklane.controlplane.tunnel.frames import MAX_MESSAGE, FrameError, control, parse_control
from forklane.controlplane.tunnel.mux import Mux
from forklane.errors import ForklaneError, Invalid, NotFound, Unavailable, error_from_response

__all__ = [
    "Backoff",
    "Connector",
    "OutboundProxy",
    "Target",
    "env_lines",
    "parse_address",
    "parse_outbound",
    "rewrite_head",
]

KEY_HEADER = "x-forklane-routing-key"
_REFUSALS = (400, 401, 403, 404, 409, 410, 422)  # waiting does not change these answers
_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "te",
        "upgrade", KEY_HEADER}  # fmt: skip
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


@dataclass(frozen=True, slots=True)
class Target:
    """A connected service and the local address its requests go to."""

    service: str
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(text: str) -> tuple[str, int]:
    """`HOST:PORT`, `[v6]:PORT` or a bare `PORT` (localhost) → (host, port). ValueError."""
    text = text.strip()
    if text.isdigit():
        host, port_text = "127.0.0.1", text
    elif text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    else:
        host, _, port_text = text.rpartition(":")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{text!r}: expected HOST:PORT with a port in 1..65535")
    return ("127.0.0.1" if host == "localhost" else host), int(port_text)


@dataclass(slots=True)
class Backoff:
    """Full jitter, capped: the n-th wait is uniform in [0, min(cap, base·2ⁿ)]."""

    rng: random.Random
    base: float = 0.25
    cap: float = 5.0
    attempt: int = 0

    def next(self) -> float:
        delay = self.rng.uniform(0.0, min(self.cap, self.base * 2**self.attempt))
        self.attempt = min(self.attempt + 1, 16)
        return delay

    def reset(self) -> None:
        self.attempt = 0


def env_lines(proxy_url: str, routing_key: str, sandbox: str) -> list[str]:
    """The env file for IDE run configurations: the proxy for the service's outgoing calls
    (loopback calls bypass it) and the key, for code that wants to send it itself."""
    local = "localhost,127.0.0.1,::1"
    return [f"HTTP_PROXY={proxy_url}", f"http_proxy={proxy_url}", f"NO_PROXY={local}",
            f"no_proxy={local}", f"FORKLANE_ROUTING_KEY={routing_key}",
            f"FORKLANE_SANDBOX={sandbox}"]  # fmt: skip


def rewrite_head(head: bytes, routing_key: str) -> tuple[bytes | None, tuple[int, str] | None]:
    """A request head for the outbound proxy: the key added, hop-by-hop fields dropped, one
    request per connection. (head, None), or (None, (status, why)) when refused. Pure."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        return None, (400, "undecodable request head")
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not _TOKEN.match(parts[0]) or not parts[2].startswith("HTTP/1."):
        return None, (400, "not an HTTP/1.x request line")
    if parts[0] == "CONNECT":
        return None, (405, "CONNECT is not supported: the routing key can be added to plain "
                           "HTTP requests only (call the service with http://)")
    fields: list[tuple[str, str]] = []
    named: set[str] = set()
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.match(name):
            return None, (400, f"malformed header line {line[:40]!r}")
        if name.lower() == "connection":
            named |= {v.strip().lower() for v in value.split(",")}
        fields.append((name, value.strip()))
    kept = [(n, v) for n, v in fields if n.lower() not in _HOP and n.lower() not in named]
    out = [lines[0], *(f"{n}: {v}" for n, v in kept), f"{KEY_HEADER}: {routing_key}",
           "connection: close"]
    return ("\r\n".join(out) + "\r\n\r\n").encode("latin-1"), None


def _answer(status: int, why: str) -> bytes:
    body = f"forklane connect: {why}\n".encode()
    reason = {400: "Bad Request", 405: "Method Not Allowed", 502: "Bad Gateway"}.get(status, "")
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (OSError, ConnectionError):
        writer.transport.abort()


class OutboundProxy:
    """The local service's `HTTP_PROXY`: adds the key, forwards to the outbound address."""

    def __init__(self, routing_key: str, outbound: tuple[str, int]) -> None:
        self.routing_key = routing_key
        self.outbound = outbound
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(30):
                head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
            writer.close()
            return
        rewritten, refused = rewrite_head(head, self.routing_key)
        if rewritten is None:
            assert refused is not None
            writer.write(_answer(*refused))
            writer.close()
            return
        host, port = self.outbound
        try:
            async with asyncio.timeout(10):
                up_reader, up_writer = await asyncio.open_connection(host, port)
        except (OSError, TimeoutError) as exc:
            why = getattr(exc, "strerror", None) or type(exc).__name__
            writer.write(_answer(502, f"the environment's outbound address {host}:{port} is "
                                      f"not reachable ({why}); see --outbound"))
            writer.close()
            return
        up_writer.write(rewritten)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        for w in (writer, up_writer):
            w.close()


class _Transient(Exception):
    """The control plane could not be reached, or answered with something waiting may fix."""


class Connector:
    """One `forklane connect`: the tunnel, its reconnects and the outbound proxy.

    `say` gets each line meant for the user. `run(stop)` returns once the route is withdrawn
    after `stop` was set; it raises a `ForklaneError` for what waiting cannot fix (not found,
    not allowed, not forked, nothing listening locally, the control plane unreachable at
    the start)."""

    def __init__(self, *, url: str, token: str | None, sandbox: str, targets: Sequence[Target],
                 say: Callable[[str], None], hostname: str | None = None,
                 outbound: tuple[str, int] | None = None, proxy_port: int = 0,
                 env_file: Path | None = None, rng: random.Random | None = None) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.sandbox = sandbox
        self.targets = {t.service: t for t in targets}
        self.say = say
        self.hostname = hostname or socket.gethostname()
        self.outbound = outbound
        self.proxy_port = proxy_port
        self.env_file = env_file
        self.session = secrets.token_hex(8)
        self.backoff = Backoff(rng or random.Random())
        self.proxy: OutboundProxy | None = None
        self.endpoints: dict[str, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.ended: str | None = None  # why the control plane ended the tunnel for good

    async def run(self, stop: asyncio.Event) -> None:
        for target in self.targets.values():
            await self._check_local(target)
        try:
            async with aiohttp.ClientSession() as http:
                await self._loop(http, stop)
        finally:
            for task in list(self._tasks):
                task.cancel()
            if self.proxy is not None:
                await self.proxy.aclose()

    async def _loop(self, http: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        connected_once = False
        while not stop.is_set():
            try:
                ws = await self._dial(http)
            except _Transient as exc:
                if not connected_once:
                    raise Unavailable(f"cannot connect to {self.url}: {exc}") from None
                delay = self.backoff.next()
                self.say(f"reconnecting in {delay:.1f}s ({exc})")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await stop.wait()
                continue
            try:
                withdrawn, why = await self._session(ws, stop, first=not connected_once)
            finally:
                await ws.close()
            connected_once = True
            if withdrawn:
                return
            if self.ended is not None:
                raise NotFound(f"{self.ended}: disconnected")
            delay = self.backoff.next()  # reset by each `ready`: short after a good session
            self.say(f"tunnel dropped ({why}); reconnecting in {delay:.1f}s")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stop.wait()
        self.say("disconnected while the tunnel was down: the control plane withdraws the "
                 "route after its grace period")

    async def _check_local(self, target: Target) -> None:
        try:
            async with asyncio.timeout(5):
                _, writer = await asyncio.open_connection(target.host, target.port)
        except (OSError, TimeoutError) as exc:
            why = getattr(exc, "strerror", None) or "no answer"
            raise Unavailable(f"nothing accepts connections on {target.address} for "
                              f"{target.service} ({why}): start the service first") from None
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

    def _connect_url(self) -> str:
        query = [("service", s) for s in self.targets] + [("session", self.session),
                                                          ("host", self.hostname)]
        return (f"{self.url}/api/v1/sandboxes/{quote(self.sandbox, safe='')}/connect?"
                f"{urlencode(query)}")

    async def _dial(self, http: aiohttp.ClientSession) -> aiohttp.ClientWebSocketResponse:
        url = self._connect_url()
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            # no per-message deflate: the bytes are the services', often compressed already
            return await http.ws_connect(url, headers=headers, heartbeat=10.0, compress=0,
                                         max_msg_size=MAX_MESSAGE + 1024)
        except aiohttp.WSServerHandshakeError as exc:
            status = exc.status
            body = b""
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                async with http.get(url, headers=headers) as again:  # the body says why
                    status, body = again.status, await again.read()
            if status in _REFUSALS:
                raise error_from_response(status, body, f"connect to sandbox {self.sandbox}"
                                          ) from None
            raise _Transient(f"HTTP {status}") from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise _Transient(str(exc) or type(exc).__name__) from None

    async def _session(self, ws: aiohttp.ClientWebSocketResponse, stop: asyncio.Event,
                       *, first: bool) -> tuple[bool, str]:
        """Serve one WebSocket; (True, _) once withdrawn, else (False, why it ended)."""
        try:
            async with asyncio.timeout(30):
                msg = await ws.receive()
        except TimeoutError:
            return False, "no answer from the control plane"
        if msg.type != aiohttp.WSMsgType.TEXT:
            return False, f"closed before it was ready ({ws.close_code})"
        ready = parse_control(msg.data)
        if ready.get("type") != "ready":
            raise ForklaneError(f"unexpected first message from the control plane: {ready}")
        self.backoff.reset()
        self.endpoints = dict(ready.get("services") or {})
        await self._announce(ready, first)
        withdrawn = asyncio.Event()
        mux = Mux(ws.send_bytes, opener=False,
                  on_open=lambda sid, service: self._spawn(self._stream(mux, sid, service)))
        reader = asyncio.create_task(self._read(ws, mux, withdrawn), name="connect-read")
        stopping = asyncio.create_task(stop.wait(), name="connect-stop")
        try:
            await asyncio.wait({reader, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not stopping.done():
                mux.fail_all("the tunnel dropped")
                return False, reader.result() if reader.done() else "closed"
            await ws.send_str(control("withdraw"))
            try:
                async with asyncio.timeout(15):
                    await withdrawn.wait()
                self.say("route withdrawn; disconnected")
            except TimeoutError:
                self.say("the control plane did not confirm the withdrawal within 15s; "
                         "it removes the route after its grace period")
            mux.fail_all("disconnected")
            return True, ""
        finally:
            for task in (reader, stopping):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _announce(self, ready: dict[str, Any], first: bool) -> None:
        for service, endpoint in self.endpoints.items():
            target = self.targets[service]
            verb = "connected" if first else "reconnected"
            self.say(f"{verb}: sandbox {self.sandbox}, {service} -> {target.address} "
                     f"(tunnel endpoint {endpoint})")
        if not ready.get("routed", True):
            self.say("warning: the snapshot did not show the route within 10s yet")
        if not first or self.outbound is None:
            return
        self.proxy = OutboundProxy(str(ready.get("routingKey") or ""), self.outbound)
        await self.proxy.start(self.proxy_port)
        host, port = self.outbound
        self.say(f"HTTP_PROXY={self.proxy.url}  (your service's calls reach {host}:{port} "
                 "with the key)")
        if self.env_file is not None:
            lines = env_lines(self.proxy.url, str(ready.get("routingKey") or ""), self.sandbox)
            self.env_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
            self.say(f"wrote {self.env_file} ({', '.join(x.split('=')[0] for x in lines)})")
        self.say("Ctrl-C disconnects (the route is withdrawn first)")

    async def _read(self, ws: aiohttp.ClientWebSocketResponse, mux: Mux,
                    withdrawn: asyncio.Event) -> str:
        """Feed the tunnel until it ends; returns why it ended."""
        try:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    mux.handle(msg.data)
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    doc = parse_control(msg.data)
                    if doc.get("type") == "withdrawn":
                        withdrawn.set()
                    elif doc.get("type") == "ended":
                        self.ended = str(doc.get("reason") or "the sandbox ended")
        except FrameError as exc:
            await ws.close(code=1002, message=str(exc).encode()[:120])
            return f"protocol error: {exc}"
        except (aiohttp.ClientError, OSError, RuntimeError) as exc:
            return str(exc) or type(exc).__name__
        error = ws.exception()
        return f"{error}" if error else f"closed with code {ws.close_code}"

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _stream(self, mux: Mux, sid: int, service: str) -> None:
        target = self.targets.get(service)
        if target is None:
            await mux.reset(sid, f"{service} is not connected from {self.hostname}")
            return
        try:
            async with asyncio.timeout(10):
                reader, writer = await asyncio.open_connection(target.host, target.port)
        except (OSError, TimeoutError) as exc:
            why = getattr(exc, "strerror", None) or "no answer"
            await mux.reset(sid, f"{target.address} on {self.hostname} refused the "
                                 f"connection ({why})")
            return
        await mux.bridge(sid, reader, writer)


def parse_outbound(text: str) -> tuple[str, int]:
    """`http://HOST:PORT` (or `HOST:PORT`) → (host, port). Invalid when it is neither."""
    value = text if "://" in text else f"http://{text}"
    parts = urlsplit(value)
    if parts.scheme != "http" or not parts.hostname:
        raise Invalid(f"--outbound {text!r}: expected http://HOST:PORT")
    try:
        port = parts.port or 80
    except ValueError:
        raise Invalid(f"--outbound {text!r}: bad port") from None
    return parts.hostname, port
