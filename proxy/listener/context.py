"""What every connection of one listener shares, whatever protocol it speaks.

`ListenerContext` is built once per listener at start and handed to each connection: the
routing table holder, settings, counters, upstream pools, the balancer, the random draw, the
propagation hooks, the connections themselves (for the sweep and the drain) and the tasks it
owns. The HTTP/1.1 and HTTP/2 modules both import it from here; it imports neither of them:
run wiring plugs the HTTP/2 hand-off in (`open_h2`), and the HTTP/2 module keeps its own
shared state in `h2` (loaded with the first HTTP/2 connection).

Timeouts are enforced by `sweep()`, ten times a second while the listener has connections or
deadlines to watch, and not at all while it has none (see `busy`). Connections whose deadline
passed are ended `EXPIRE_BATCH` at a time, one batch per loop turn: thousands of them expiring
together (slowloris connections opened in one burst) would otherwise stall every other
connection for the whole burst.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from forklane.proxy.balancer import Balancer
from forklane.proxy.listener.overload import Overload
from forklane.proxy.metrics import Stats
from forklane.proxy.routing import ListenerKind
from forklane.proxy.settings import ProxySettings
from forklane.proxy.state import TableHolder

if TYPE_CHECKING:
    from forklane.proxy.forward.core import TableFields
    from forklane.proxy.hooks import RequestHooks
    from forklane.proxy.table import Route

__all__ = ["EXPIRE_BATCH", "Clock", "Deadline", "ListenerConnection", "ListenerContext",
           "Watched"]

EXPIRE_BATCH = 16  # connection deadlines handled per loop turn (answers, closes)


class Deadline:
    """What a connection-level deadline means (`ListenerConnection.deadline_kind`)."""

    NONE = 0
    HEADERS = 1
    IDLE = 2
    TUNNEL = 3
    LINGER = 4  # closing: our side is shut, the client's late bytes are read and dropped


class Clock:
    """The event loop's time, read once per read event and shared by everything that event
    does (request start, finish, deadlines): one `loop.time()` instead of several."""

    __slots__ = ("now", "time")

    def __init__(self, time: Callable[[], float]) -> None:
        self.time = time
        self.now = time()

    def tick(self) -> float:
        now = self.now = self.time()
        return now


class ListenerConnection(Protocol):
    """What the sweep and the drain need of a client connection (HTTP/1.1 or HTTP/2)."""

    deadline: float
    deadline_kind: int

    def deadline_expired(self) -> None: ...
    def expire_requests(self, now: float) -> None: ...
    def drain(self) -> None: ...
    def close(self) -> None: ...


class Watched(Protocol):
    """Something with a deadline of its own the sweep watches (a mirror copy)."""

    deadline: float

    def expired(self) -> None: ...


class ListenerContext:
    """Everything the connections of one listener share. Built once at start."""

    def __init__(
        self,
        kind: ListenerKind,
        holder: TableHolder,
        settings: ProxySettings,
        stats: Stats,
        pools: Any,
        balancer: Balancer,
        draw: Callable[[], float],
        loop: asyncio.AbstractEventLoop,
        clock: Clock | None = None,
    ) -> None:
        self.kind: ListenerKind = kind
        self.holder = holder
        self.settings = settings
        self.stats = stats
        self.pools = pools  # the HTTP/1.1 upstream pools (shared by every listener)
        self.balancer = balancer
        self.draw = draw
        self.loop = loop
        self.clock = clock or Clock(loop.time)
        self.connections: set[ListenerConnection] = set()
        self.opening = 0  # accepted, not started yet (listener.overload counts them)
        # Process-wide overload state; the process wiring shares one among its listeners.
        self.overload = Overload(stats, settings.max_connections, 0)
        self.watched: set[Watched] = set()  # mirror copies in flight
        self.tasks: set[asyncio.Task[None]] = set()
        self.draining = False
        self.on_idle: Callable[[], None] | None = None  # called when draining empties us
        self.on_busy: Callable[[], None] | None = None  # called when the first connection opens
        self.max_header_bytes = settings.max_header_bytes
        self.max_header_count = settings.max_header_count
        self.header_timeout = settings.header_timeout
        self.idle_timeout = settings.idle_timeout
        self.body_timeout = settings.body_timeout
        self.min_body_rate = settings.min_body_rate
        self.max_pipelined = settings.max_pipelined
        self.retries = settings.retries
        self.explain_raw = settings.explain_header.encode() if settings.explain_header else None
        self.access_log = settings.access_log
        self.rows: dict[str, list[int]] = {}
        stats.listener_rows[kind] = self.rows
        self.host_ok = b""  # the last Host value that passed validation (clients repeat it)
        self.hooks: RequestHooks | None = None  # propagation hooks; None when all are off
        self.fields: TableFields | None = None  # field classification of the current table
        # The HTTP/2 hand-off (set by the process wiring) and the HTTP/2 module's shared
        # state, loaded with the first HTTP/2 connection.
        self.open_h2: Callable[[asyncio.Transport, bytes, Route | None], None] | None = None
        self.h2: Any = None
        self.expiring: list[ListenerConnection] = []  # due, not yet ended (see sweep)

    def add(self, conn: ListenerConnection) -> None:
        """A connection opened: counted, and the sweep wakes if it was resting."""
        if not self.connections and self.on_busy is not None:
            self.on_busy()
        self.connections.add(conn)
        stats = self.stats
        stats.connections_open += 1
        stats.connections_total += 1

    def adopt(self, conn: ListenerConnection) -> None:
        """Take over a connection already counted (a relay replacing its sniffer)."""
        if not self.connections and self.on_busy is not None:
            self.on_busy()
        self.connections.add(conn)

    def remove(self, conn: ListenerConnection) -> None:
        if conn in self.connections:
            self.connections.discard(conn)
            self.stats.connections_open -= 1
        if self.draining and not self.connections and self.on_idle is not None:
            self.on_idle()

    def watch(self, item: Watched) -> None:
        if not self.connections and not self.watched and self.on_busy is not None:
            self.on_busy()
        self.watched.add(item)

    @property
    def busy(self) -> bool:
        """Anything for the sweep to look at: connections, watched copies, HTTP/2 pools."""
        h2 = self.h2
        return bool(self.connections or self.watched or (h2 is not None and h2.pools.conns))

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a connection-opening coroutine owned by this listener (cancelled at close)."""
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def sweep(self) -> None:
        """Enforce header, idle, tunnel and response deadlines.

        A sweep instead of a timer per request: arming and cancelling a timer for every
        request cost more than the rest of routing; a tenth of a second is precise enough
        for timeouts measured in seconds."""
        now = self.clock.tick()
        h2 = self.h2
        if h2 is not None and h2.pools.conns:
            h2.pools.sweep(self.idle_timeout)
        collect = not self.expiring  # else the batches still running take them
        due = self.expiring
        for conn in tuple(self.connections):
            if collect and conn.deadline_kind and now >= conn.deadline:
                due.append(conn)
            conn.expire_requests(now)
        if collect and due:
            self._expire_batch()
        if self.watched:
            for item in tuple(self.watched):
                if now >= item.deadline:
                    item.expired()

    def _expire_batch(self) -> None:
        """End the next `EXPIRE_BATCH` due connections; the rest in the next loop turn, after
        the other connections' I/O. Each is checked again: it may have moved on or closed."""
        due = self.expiring
        batch = due[:EXPIRE_BATCH]
        del due[:EXPIRE_BATCH]
        now = self.clock.now
        connections = self.connections
        for conn in batch:
            if conn in connections and conn.deadline_kind and now >= conn.deadline:
                conn.deadline_expired()
        if due:
            self.loop.call_soon(self._expire_batch)

    def close_h2(self) -> None:
        if self.h2 is not None:
            self.h2.pools.close_all()
