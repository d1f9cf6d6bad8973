"""The proxy end of the snapshot push stream: subscribe, apply, ACK or NACK, persist, reconnect.

This is the only proxy module that imports grpc; whoever starts a subscriber imports it
lazily, so a proxy fed by a static file never loads grpc. grpc errors are translated here
into `last_error` text and log lines; none leaves `run()`.

Invariants:
- the routing table changes only through `TableHolder.apply`; a snapshot that fails
  validation or `apply` is NACKed with the reason and never applied, and the old table keeps
  serving;
- while disconnected the last good table keeps serving; `run()` reconnects forever with
  full-jitter exponential backoff (about 0.2 s at first, capped at 5 s), reset after a
  stream that was established, and cut short (with the backoff reset) when the address, which
  did not accept connections when the wait began, accepts one again;
- after every ACK the snapshot is written to `state_dir/snapshot.json` (atomically), and a
  cold start with no table serves that file until the control plane answers;
- `connected` is True exactly while a stream is open that the control plane has accepted
  (it sent its replica metadata), and `on_connected_change` is called on each transition;
- live tap: the filters the control plane pushes (`kind="tap"`) are installed as one
  `TapBuffer` among `taps` (the request path's sinks) while non-empty and while the stream
  lasts; a flusher sends what matched every `tap_interval` seconds in batches. The request
  path never waits for the stream: a full buffer drops and counts;
- activity: the keys the request path saw (`seen_keys`) are reported every
  `activity_interval` seconds while connected, then forgotten (a report lost with a
  stream only delays a TTL by one interval);
- writes to the stream are serialised (ACKs and tap batches come from two tasks);
- with `token_file` (a projected ServiceAccount token that kubelet rotates), the file is read
  again for every stream, so a reconnect always presents the current token; an unreadable
  or empty file is a stream error (retried), never a crash.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from forklane.proxy.persist import load_snapshot, save_snapshot
from forklane.proxy.push_messages import (
    MAX_ACTIVITY_KEYS,
    MAX_ERROR_DETAIL,
    MAX_TAP_RECORDS,
    METHOD,
    REPLICA_METADATA,
    MessageError,
    Node,
    SnapshotRejected,
    SnapshotResponse,
    SubscribeRequest,
    TapBatch,
    decode_response,
    encode_request,
)
from forklane.proxy.schema import RoutingSnapshot
from forklane.proxy.state import TableHolder
from forklane.proxy.table import ConfigError
from forklane.proxy.tap import TapBuffer, filters_of

__all__ = ["Subscriber", "backoff_delay", "channel_options"]

log = logging.getLogger("forklane.proxy.subscriber")

BACKOFF_BASE = 0.2
# Low enough that a restarted control plane is found within seconds even without the
# address probe below; a proxy retries at most every 5 s (jittered) while it is down.
BACKOFF_CAP = 5.0
# While waiting out a backoff after the address refused, check this often whether it accepts
# a TCP connection again (a control plane that restarted): if so, retry at once.
ANSWER_PROBE_INTERVAL = 0.25

def channel_options(keepalive: float) -> tuple[tuple[str, Any], ...]:
    """Options of the channel to the control plane.

    Keepalive pings notice a control plane that vanished without closing the connection. The
    control plane accepts a ping every `grpc_min_ping_interval` (10 s by default) and answers
    faster pings with GOAWAY `too_many_pings`, so `keepalive` must stay above that (20 s).
    """
    return (
        ("grpc.keepalive_time_ms", max(1, int(keepalive * 1000))),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # A snapshot of thousands of sandboxes is several MB; the default limit is 4 MB.
        ("grpc.max_receive_message_length", 256 << 20),
        # Our own backoff decides when to retry; every attempt uses a fresh channel.
        ("grpc.enable_retries", 0),
    )


def backoff_delay(
    attempt: int, rng: random.Random, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP
) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempt)] (attempt counts from 0)."""
    ceiling = cap if attempt >= 64 else min(cap, base * (2**attempt))
    return rng.uniform(0.0, ceiling)


class _StreamError(Exception):
    """A stream ended with an error; the text says why. Retried after a backoff."""


class _Refused(_StreamError):
    """The control plane refused this proxy (bad token, bad request): worth an error log."""


_REFUSALS = frozenset(
    {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
    }
)


class Subscriber:
    def __init__(
        self,
        address: str,
        holder: TableHolder,
        node_id: str,
        service: str | None,
        listeners: tuple[str, ...] | list[str] = (),
        token: str | None = None,
        state_dir: Path | None = None,
        token_file: Path | None = None,
        on_connected_change: Callable[[bool], None] | None = None,
        *,
        rng: random.Random | None = None,
        backoff_base: float = BACKOFF_BASE,
        backoff_cap: float = BACKOFF_CAP,
        keepalive: float = 20.0,
        version: str | None = None,
        taps: list[Any] | None = None,
        tap_interval: float = 0.1,
        seen_keys: set[str] | None = None,
        activity_interval: float = 5.0,
    ) -> None:
        self.seen_keys = seen_keys
        self.activity_interval = activity_interval
        self.address = address
        self.holder = holder
        self.node = Node(
            id=node_id, service=service, listeners=tuple(listeners), version=version,
            capabilities=("full", "tap") if taps is not None else ("full",),
        )
        self.taps = taps
        self.tap = TapBuffer()
        self.tap_interval = tap_interval
        self.tap_sent = 0
        self._write_lock = asyncio.Lock()
        self._channel_options = channel_options(keepalive)
        self.state_dir = state_dir
        self._token = token
        self._token_file = token_file
        self._on_connected_change = on_connected_change
        self._rng = rng or random.Random()
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._connected = False
        self._closing = asyncio.Event()
        self._stopped = asyncio.Event()
        self._running = False
        self._session_task: asyncio.Task[bool] | None = None
        self._restored = False
        self.version = ""  # the version applied from the control plane (or restored)
        self.replica = ""  # the control-plane replica of the current stream
        self.last_error = ""
        self.pushes_received = 0
        self.acks = 0
        self.nacks = 0
        self.reconnects = 0

    @property
    def connected(self) -> bool:
        return self._connected

    def restore(self) -> bool:
        """Serve the persisted snapshot if the holder has no table yet; True if it did."""
        if self._restored or self.holder.table is not None or self.state_dir is None:
            return False
        self._restored = True
        snapshot = load_snapshot(self.state_dir)
        if snapshot is None:
            return False
        try:
            self.holder.apply(snapshot, source=f"persisted:{self.state_dir}")
        except ConfigError as exc:
            log.warning("persisted snapshot %s cannot be served: %s", snapshot.version, exc)
            return False
        self.version = snapshot.version
        log.info("serving persisted snapshot %s until the control plane answers", snapshot.version)
        return True

    async def run(self) -> None:
        """Subscribe until `aclose()`, reconnecting with jittered backoff."""
        if self._running:
            raise RuntimeError("subscriber already running")
        self._running = True
        try:
            self.restore()
            attempt = 0
            first = True
            while not self._closing.is_set():
                if not first:
                    self.reconnects += 1
                first = False
                # The session runs in its own task so aclose() can cancel a blocked read
                # without cancelling run()'s caller.
                session = asyncio.create_task(self._session(), name="forklane-subscription")
                self._session_task = session
                await asyncio.wait((session,))
                self._session_task = None
                if self._closing.is_set() or session.cancelled():
                    break
                established = session.result()
                if established:
                    attempt = 0
                delay = backoff_delay(attempt, self._rng, self._backoff_base, self._backoff_cap)
                attempt += 1
                log.info(
                    "control plane %s: retrying in %.2fs (%s)",
                    self.address,
                    delay,
                    self.last_error or "stream ended",
                )
                if await self._wait_retry(delay):
                    attempt = 0  # the address answers again: a restarted control plane
        finally:
            leftover = self._session_task
            if leftover is not None and not leftover.done():
                # run() itself was cancelled: its session must not outlive it.
                leftover.cancel()
                await asyncio.wait((leftover,))
            self._session_task = None
            self._set_connected(False)
            self._running = False
            self._stopped.set()

    async def _wait_retry(self, delay: float) -> bool:
        """Wait `delay` seconds or until closing; True when the wait was cut short because the
        address, refusing connections at the start, accepts one again. An address that answers
        from the start (a control plane that refuses the stream) is waited out in full, so a
        refusal is never retried in a tight loop."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay
        was_down = not await self._address_answers()
        while not self._closing.is_set():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(
                    self._closing.wait(), timeout=min(remaining, ANSWER_PROBE_INTERVAL)
                )
            except TimeoutError:
                pass
            if was_down and not self._closing.is_set() and await self._address_answers():
                log.info("control plane %s answers again: reconnecting now", self.address)
                return True
        return False

    async def _address_answers(self) -> bool:
        """Whether the control plane's address accepts a TCP connection (closed at once)."""
        host, _, port = self.address.rpartition(":")
        try:
            async with asyncio.timeout(ANSWER_PROBE_INTERVAL):
                _, writer = await asyncio.open_connection(host.strip("[]"), int(port))
        except (OSError, TimeoutError, ValueError):
            return False
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass
        return True

    async def aclose(self) -> None:
        """Stop `run()` (if running) and close the stream; the table stays as it is."""
        self._closing.set()
        session = self._session_task
        if session is not None:
            session.cancel()
        if self._running:
            await self._stopped.wait()

    # -- one stream -------------------------------------------------------------------------
    async def _session(self) -> bool:
        """One stream, until it ends; returns whether the control plane accepted it."""
        established = False
        try:
            metadata = self._call_metadata()
        except _StreamError as exc:
            self._record(exc)
            return False
        channel = grpc.aio.insecure_channel(self.address, options=self._channel_options)
        try:
            call = channel.stream_stream(METHOD)(metadata=metadata)
            await call.write(
                encode_request(SubscribeRequest(node=self.node, version_info=self.version))
            )
            replica = _metadata_value(await call.initial_metadata(), REPLICA_METADATA)
            if replica is None:
                error = await self._status_error(call)
                raise error or _StreamError("the control plane ended the stream at once")
            established = True
            self.replica = replica
            self.last_error = ""
            self._set_connected(True)
            log.info("subscribed to control plane %s (replica %s)", self.address, replica)
            flusher = asyncio.create_task(self._flush_taps(call), name="forklane-tap-flush")
            try:
                while True:
                    data = await call.read()
                    if data is grpc.aio.EOF:
                        error = await self._status_error(call)
                        raise error or _StreamError("the control plane ended the stream")
                    await self._handle(call, data)
            finally:
                flusher.cancel()
                await asyncio.gather(flusher, return_exceptions=True)
                self._set_tap_filters(())
        except grpc.aio.AioRpcError as exc:
            if not self._closing.is_set():
                self._record(_error_of(exc))
        except _StreamError as exc:
            if not self._closing.is_set():
                self._record(exc)
        except MessageError as exc:
            self.last_error = f"control plane sent an unreadable message: {exc}"
            log.error("control plane %s: %s", self.address, self.last_error)
        finally:
            self._set_connected(False)
            await channel.close(grace=None)
        return established

    def _call_metadata(self) -> tuple[tuple[str, str], ...]:
        """The bearer token for one stream: the static one, or the token file as it is now."""
        token = self._token
        if self._token_file is not None:
            try:
                token = self._token_file.read_text().strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise _StreamError(f"cannot read token file {self._token_file}: {exc}") from exc
            if not token:
                raise _StreamError(f"token file {self._token_file} is empty")
        return (("authorization", f"Bearer {token}"),) if token else ()

    async def _status_error(self, call: Any) -> _StreamError | None:
        """The error a finished call ended with, or None if it ended OK."""
        code = await call.code()
        if code == grpc.StatusCode.OK:
            return None
        text = f"{code.name}: {await call.details()}"
        return _Refused(text) if code in _REFUSALS else _StreamError(text)

    async def _write(self, call: Any, request: SubscribeRequest) -> None:
        async with self._write_lock:
            await call.write(encode_request(request))

    def _set_tap_filters(self, specs: Any) -> None:
        """Install the pushed filter set (whole); with none, the request path has no sink."""
        taps = self.taps
        if taps is None:
            return
        self.tap.replace(filters_of(spec.model_dump() for spec in specs))
        installed = any(sink is self.tap for sink in taps)
        if self.tap.filters and not installed:
            taps.append(self.tap)
        elif not self.tap.filters and installed:
            taps.remove(self.tap)

    async def _flush_taps(self, call: Any) -> None:
        """Send what matched, in batches, and the keys seen every `activity_interval`,
        until the stream ends (its owner cancels it)."""
        loop = asyncio.get_running_loop()
        report_at = loop.time() + self.activity_interval
        while True:
            await asyncio.sleep(self.tap_interval)  # the flush period
            seen = self.seen_keys
            if seen and loop.time() >= report_at:
                report_at = loop.time() + self.activity_interval
                keys = tuple(seen)[:MAX_ACTIVITY_KEYS]
                seen.clear()
                await self._write(call, SubscribeRequest(activity=keys))
            while len(self.tap) or self.tap.dropped:
                records, dropped = self.tap.take(MAX_TAP_RECORDS)
                await self._write(
                    call, SubscribeRequest(tap=TapBatch(records=tuple(records), dropped=dropped))
                )
                self.tap_sent += len(records)

    async def _handle(self, call: Any, data: bytes) -> None:
        try:
            response = decode_response(data)
        except SnapshotRejected as exc:
            self.pushes_received += 1
            await self._nack(call, exc.version_info, exc.nonce, exc.reason)
            return
        if response.kind == "tap":
            self._set_tap_filters(response.taps or ())
            return
        self.pushes_received += 1
        await self._apply(call, response)

    async def _apply(self, call: Any, response: SnapshotResponse) -> None:
        snapshot = response.snapshot
        assert snapshot is not None  # decode_response guarantees a full snapshot
        table = self.holder.table
        if table is not None and table.snapshot == snapshot:
            pass  # the same content again (a reconnect): nothing to rebuild
        else:
            try:
                self.holder.apply(snapshot, source=f"controlplane:{self.address}")
            except ConfigError as exc:
                await self._nack(call, response.version_info, response.nonce, str(exc))
                return
        self.version = snapshot.version
        await self._write(
            call, SubscribeRequest(version_info=snapshot.version, response_nonce=response.nonce)
        )
        self.acks += 1
        log.info("applied and ACKed snapshot %s", snapshot.version)
        await self._persist(snapshot)

    async def _nack(self, call: Any, version: str, nonce: str, reason: str) -> None:
        reason = reason[:MAX_ERROR_DETAIL] or "rejected"
        self.holder.reject(reason)
        log.error("NACK snapshot %s: %s", version, reason)
        await self._write(
            call,
            SubscribeRequest(version_info=self.version, response_nonce=nonce, error_detail=reason),
        )
        self.nacks += 1

    async def _persist(self, snapshot: RoutingSnapshot) -> None:
        if self.state_dir is None:
            return
        try:
            await asyncio.to_thread(save_snapshot, self.state_dir, snapshot)
        except OSError as exc:
            log.warning(
                "cannot persist snapshot %s to %s: %s", snapshot.version, self.state_dir, exc
            )

    def _record(self, error: _StreamError) -> None:
        self.last_error = str(error)
        if isinstance(error, _Refused):
            log.error("control plane %s refused the subscription: %s", self.address, error)
        else:
            log.warning("control plane %s: %s", self.address, error)

    def _set_connected(self, value: bool) -> None:
        if value == self._connected:
            return
        self._connected = value
        if self._on_connected_change is not None:
            self._on_connected_change(value)


def _metadata_value(metadata: Any, key: str) -> str | None:
    for k, v in metadata or ():
        if k == key:
            return str(v)
    return None


def _error_of(exc: grpc.aio.AioRpcError) -> _StreamError:
    """Translate grpc's exception at this boundary."""
    code = exc.code()
    text = f"{code.name if code is not None else 'UNKNOWN'}: {exc.details() or 'no details'}"
    return _Refused(text) if code in _REFUSALS else _StreamError(text)
