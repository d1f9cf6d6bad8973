"""Live-tap filters and the bounded buffer records wait in until the control plane takes them.

A tap is somebody watching: `forklane tap --sandbox NAME` opens one at the control plane,
which pushes its filter to every proxy; the admin listener's `/tap` opens one locally. A
filter is evaluated where the decision is made (`wants`, before a record is even built), so
a proxy sends only what somebody watches, and nothing at all when nobody does (the request
path checks `stats.taps` is non-empty, one attribute test).

Invariants:
- the request path never waits for a reader: `offer` appends to a bounded buffer and counts
  what does not fit (per filter), it never blocks or grows past `capacity`;
- a record names every filter that matched it (`taps`), so the control plane hands it to
  exactly those viewers;
- pure: no asyncio, sockets or clocks here.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "TapBuffer",
    "TapFilter",
    "TapSink",
    "filters_of",
    "parse_status_class",
]

MAX_TARGET = 2048  # characters of a request target a tap record keeps


class TapSink(Protocol):
    """Where finished-request records go while somebody watches."""

    def wants(self, key: str | None, service: str | None, status: int) -> bool: ...

    def offer(self, record: dict[str, Any]) -> None: ...


def parse_status_class(text: str | None) -> int | None:
    """`5xx`, `5` or `503` style: the status class (1..5), None for no filter. Raises ValueError."""
    if text is None or text == "":
        return None
    value = text.strip().lower().removesuffix("xx")
    if value.isdigit() and len(value) in (1, 3) and 1 <= int(value[0]) <= 5:
        return int(value[0])
    raise ValueError(f"status {text!r}: expected a class like 5xx or 4xx")


@dataclass(frozen=True, slots=True)
class TapFilter:
    """What one viewer watches. Empty `keys` means any request, keyed or not; `service` is
    the routed service's name; `status_class` 5 means 5xx (0 counts as a reset: class 0)."""

    id: str
    keys: frozenset[str] = frozenset()
    service: str | None = None
    status_class: int | None = None

    def wants(self, key: str | None, service: str | None, status: int) -> bool:
        if self.keys and key not in self.keys:
            return False
        if self.service is not None and service != self.service:
            return False
        return self.status_class is None or status // 100 == self.status_class


class TapBuffer:
    """The records this proxy owes the control plane, for the filters it was pushed."""

    __slots__ = ("_records", "capacity", "dropped", "filters")

    def __init__(self, filters: Iterable[TapFilter] = (), capacity: int = 2000) -> None:
        self.filters: tuple[TapFilter, ...] = tuple(filters)
        self.capacity = capacity
        self._records: collections.deque[dict[str, Any]] = collections.deque()
        self.dropped: collections.Counter[str] = collections.Counter()

    def replace(self, filters: Iterable[TapFilter]) -> None:
        """A new filter set, whole; records of filters no longer there are discarded."""
        self.filters = tuple(filters)
        ids = {f.id for f in self.filters}
        kept: collections.deque[dict[str, Any]] = collections.deque()
        for record in self._records:
            taps = [t for t in record["taps"] if t in ids]
            if taps:
                record["taps"] = taps
                kept.append(record)
        self._records = kept
        for gone in set(self.dropped) - ids:
            del self.dropped[gone]

    def wants(self, key: str | None, service: str | None, status: int) -> bool:
        return any(f.wants(key, service, status) for f in self.filters)

    def offer(self, record: dict[str, Any]) -> None:
        key = record.get("routing_key")
        service = record.get("service")
        status = int(record.get("status") or 0)
        taps = [f.id for f in self.filters if f.wants(key, service, status)]
        if not taps:
            return
        if len(self._records) >= self.capacity:
            self.dropped.update(taps)
            return
        copy = {**record, "taps": taps}
        target = copy.get("target")
        if isinstance(target, str) and len(target) > MAX_TARGET:
            copy["target"] = target[:MAX_TARGET]
            copy["target_truncated"] = True
        self._records.append(copy)

    def take(self, limit: int) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """Up to `limit` records, oldest first, and the drops counted since the last take."""
        out: list[dict[str, Any]] = []
        records = self._records
        while records and len(out) < limit:
            out.append(records.popleft())
        dropped = dict(self.dropped)
        self.dropped.clear()
        return out, dropped

    def __len__(self) -> int:
        return len(self._records)


def filters_of(specs: Iterable[Mapping[str, Any]]) -> tuple[TapFilter, ...]:
    """Filters from their pushed form (already validated by the push message model)."""
    return tuple(
        TapFilter(
            id=str(s["id"]),
            keys=frozenset(s.get("keys") or ()),
            service=s.get("service"),
            status_class=s.get("status_class"),
        )
        for s in specs
    )
