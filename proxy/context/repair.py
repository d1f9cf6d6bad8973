"""Repair by trace: remember trace-id -> routing key, give it back to the same trace later.

An app that forwards `traceparent` but drops baggage breaks the routing chain; the sidecar
saw the key on the inbound request of that trace, so it can restore it on the outbound ones.

Invariants:
- bounded: at most `max_entries` traces are remembered; the least recently written one is
  forgotten first;
- TTL: an entry is valid for `ttl` seconds after it was last written; an expired entry is
  never returned and is removed when read or when it reaches the front;
- O(1) amortised `get` and `put` (an `OrderedDict` kept in write order, which is also expiry
  order because the TTL is the same for all entries and the clock is monotonic);
- pure: the clock is injected (`time.monotonic` in the proxy, a fake in tests); no locks,
  since the data plane runs it on one event loop thread.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

__all__ = ["TraceKeyMemory"]


class TraceKeyMemory:
    """A bounded, expiring map from trace-id to the routing key seen for it."""

    __slots__ = ("_clock", "_entries", "_max", "_ttl")

    def __init__(self, *, max_entries: int, ttl: float, clock: Callable[[], float]) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        self._max = max_entries
        self._ttl = ttl
        self._clock = clock
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, trace_id: str, key: str) -> None:
        """Remember `key` for `trace_id` from now on; the newest write wins."""
        now = self._clock()
        entries = self._entries
        entries[trace_id] = (key, now + self._ttl)
        entries.move_to_end(trace_id)
        # Drop expired entries from the front: each is removed once, so this is amortised O(1).
        while entries:
            _, (_, expires) = next(iter(entries.items()))
            if expires > now:
                break
            entries.popitem(last=False)
        while len(entries) > self._max:
            entries.popitem(last=False)

    def get(self, trace_id: str) -> str | None:
        """The key remembered for `trace_id`, or None when unknown or expired."""
        entry = self._entries.get(trace_id)
        if entry is None:
            return None
        key, expires = entry
        if expires <= self._clock():
            del self._entries[trace_id]
            return None
        return key
