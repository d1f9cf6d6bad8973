"""Overload protection at the edge of every listener: connection caps (per listener and in
total) and a memory watermark, so the proxy sheds load before the kernel kills it.

- a connection accepted while its listener holds `listener_max_connections`, or the process
  `max_connections`, is reset at once, before a byte of it is read, and counted in
  `forklane_downstream_connections_refused_total{listener,reason}`;
- while the process's resident memory is above the watermark, new connections are reset the
  same way and new requests are answered 503 `overloaded` (counted as rejected); idle upstream
  connections are closed to give memory back; below the watermark everything is back;
- the resident size is read by the housekeeping loop (every 100 ms while there is traffic),
  never per request: the request path reads one boolean.

Connections accepted but not yet started (asyncio builds the protocol, then calls
`connection_made` a turn later) count against the caps, so a burst of accepts cannot overshoot.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from forklane.proxy.listener.context import ListenerContext
    from forklane.proxy.metrics import Stats

__all__ = ["Overload", "cgroup_memory_limit", "gated", "resident_bytes"]

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_CGROUP_FILES = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def resident_bytes() -> int:
    """This process's resident set size (one small read of /proc/self/statm)."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def cgroup_memory_limit() -> int | None:
    """The container's memory limit in bytes, or None when there is none (or no cgroup)."""
    for name in _CGROUP_FILES:
        try:
            text = Path(name).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:  # v1 writes a huge number for "none"
            return int(text)
        return None
    return None


class Overload:
    """Process-wide overload state: the total connection cap and the memory watermark."""

    __slots__ = ("max_total", "memory_high", "opening", "over_memory", "read_rss", "stats",
                 "watermark")

    def __init__(self, stats: Stats, max_total: int, watermark: int,
                 read_rss: Callable[[], int] = resident_bytes) -> None:
        self.stats = stats
        self.max_total = max_total
        self.watermark = watermark  # bytes; 0: off
        self.read_rss = read_rss
        self.over_memory = False
        self.memory_high = 0  # times the watermark was crossed upwards
        self.opening = 0  # accepted, connection_made not run yet (all listeners)

    def check_memory(self) -> bool:
        """Read the resident size; True when the state changed to over the watermark (the
        caller then frees what it can)."""
        if not self.watermark:
            return False
        over = self.read_rss() > self.watermark
        crossed = over and not self.over_memory
        if crossed:
            self.memory_high += 1
        self.over_memory = over
        return crossed

    def refuse_reason(self, ctx: ListenerContext, listener_cap: int) -> str | None:
        if self.over_memory:
            return "memory"
        if listener_cap and len(ctx.connections) + ctx.opening >= listener_cap:
            return "listener-cap"
        if self.stats.connections_open + self.opening >= self.max_total:
            return "total-cap"
        return None


class _Refused(asyncio.Protocol):
    """A connection over a cap: reset as soon as it is made."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.abort()  # type: ignore[attr-defined]


def gated(factory: Callable[[], asyncio.BaseProtocol], ctx: ListenerContext,
          overload: Overload, listener_cap: int) -> Callable[[], asyncio.BaseProtocol]:
    """The listener's protocol factory behind the caps: over one, a protocol that resets."""
    stats = overload.stats
    key = f"{ctx.kind}\x1f"
    loop = ctx.loop

    def settle() -> None:
        overload.opening -= 1
        ctx.opening -= 1

    def make() -> asyncio.BaseProtocol:
        reason = overload.refuse_reason(ctx, listener_cap)
        if reason is not None:
            stats.connections_refused[key + reason] += 1
            return _Refused()
        overload.opening += 1
        ctx.opening += 1
        # connection_made runs before any callback scheduled after this one: by then the
        # connection is in `connections`, so it is counted once, there.
        loop.call_soon(settle)
        return factory()

    return make
