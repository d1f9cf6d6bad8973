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
  exactly those viewers; a filter that captures (headers, the first bytes of bodies, see
  `tap_capture`) gets its own copy of the record with the capture rendered and redacted
  for it, the others never see a captured field;
- the buffer is bounded in records (`capacity`) and in bytes (`max_bytes`, what captures
  may add), and a batch taken stays under `MAX_BATCH_BYTES` (the control plane reads
  messages of up to 1 MiB);
- pure: no asyncio, sockets or clocks here.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from forklane.proxy.tap_capture import MAX_BODY, Capture, render

__all__ = [
    "TapBuffer",
    "TapFilter",
    "TapSink",
    "filters_of",
    "parse_status_class",
]

MAX_TARGET = 2048  # characters of a request target a tap record keeps
RECORD_BYTES = 700  # about what a record without capture takes as JSON, beside its target
MAX_BATCH_BYTES = 512 * 1024  # a batch taken stays under this (the gRPC limit is 1 MiB)
MAX_BUFFER_BYTES = 8 * 1024 * 1024  # what the records waiting may take, captures included


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
    the routed service's name; `status_class` 5 means 5xx (0 counts as a reset: class 0).
    `headers` and `body` (bytes of each body) ask for a capture, `redact` names the fields
    hidden beyond the ones always hidden (`tap_capture.ALWAYS_REDACTED`)."""

    id: str
    keys: frozenset[str] = frozenset()
    service: str | None = None
    status_class: int | None = None
    headers: bool = False
    body: int = 0
    redact: frozenset[str] = frozenset()

    @property
    def captures(self) -> bool:
        return self.headers or self.body > 0

    def wants(self, key: str | None, service: str | None, status: int) -> bool:
        if self.keys and key not in self.keys:
            return False
        if self.service is not None and service != self.service:
            return False
        return self.status_class is None or status // 100 == self.status_class


class TapBuffer:
    """The records this proxy owes the control plane, for the filters it was pushed."""

    __slots__ = ("_bytes", "_capturing", "_records", "capacity", "dropped", "filters",
                 "max_bytes")

    def __init__(self, filters: Iterable[TapFilter] = (), capacity: int = 2000,
                 max_bytes: int = MAX_BUFFER_BYTES) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._records: collections.deque[tuple[int, dict[str, Any]]] = collections.deque()
        self._bytes = 0
        self.dropped: collections.Counter[str] = collections.Counter()
        self.filters: tuple[TapFilter, ...] = ()
        self._capturing: tuple[TapFilter, ...] = ()
        self.replace(filters)

    def replace(self, filters: Iterable[TapFilter]) -> None:
        """A new filter set, whole; records of filters no longer there are discarded."""
        self.filters = tuple(filters)
        self._capturing = tuple(f for f in self.filters if f.captures)
        ids = {f.id for f in self.filters}
        kept: collections.deque[tuple[int, dict[str, Any]]] = collections.deque()
        size = 0
        for entry in self._records:
            record = entry[1]
            taps = [t for t in record["taps"] if t in ids]
            if taps:
                record["taps"] = taps
                kept.append(entry)
                size += entry[0]
        self._records = kept
        self._bytes = size
        for gone in set(self.dropped) - ids:
            del self.dropped[gone]

    def capture_limit(self, key: str | None, service: str | None) -> int:
        """-1 when no capturing filter may want this request, else the body bytes to keep
        (0: the heads only). Asked once per request, before its status is known."""
        limit = -1
        for f in self._capturing:
            if (not f.keys or key in f.keys) and (f.service is None or service == f.service):
                limit = max(limit, min(f.body, MAX_BODY))
        return limit

    def wants(self, key: str | None, service: str | None, status: int) -> bool:
        return any(f.wants(key, service, status) for f in self.filters)

    def offer(self, record: dict[str, Any], capture: Capture | None = None) -> None:
        """A finished request: one copy per distinct capture wish among the filters that
        want it (usually one), or counted as dropped when the buffer is full."""
        key = record.get("routing_key")
        service = record.get("service")
        status = int(record.get("status") or 0)
        wanting = [f for f in self.filters if f.wants(key, service, status)]
        if not wanting:
            return
        if len(self._records) >= self.capacity:
            self.dropped.update(f.id for f in wanting)
            return
        base = {**record}
        target = base.get("target")
        if isinstance(target, str) and len(target) > MAX_TARGET:
            base["target"] = target[:MAX_TARGET]
            base["target_truncated"] = True
        size = RECORD_BYTES + (len(target) if isinstance(target, str) else 0)
        if capture is None or not any(f.captures for f in wanting):
            self._append(size, {**base, "taps": [f.id for f in wanting]})
            return
        groups: dict[tuple[bool, int, frozenset[str]], list[str]] = {}
        for f in wanting:
            wish = (f.headers, min(f.body, capture.limit), f.redact) if f.captures else (
                False, 0, frozenset())
            groups.setdefault(wish, []).append(f.id)
        for (headers, body, redact), taps in groups.items():
            if not headers and body <= 0:
                self._append(size, {**base, "taps": taps})
                continue
            rendered, extra = render(capture, headers, body, redact)
            if self._bytes + size + extra > self.max_bytes:
                self.dropped.update(taps)
                continue
            self._append(size + extra, {**base, "taps": taps, "capture": rendered})

    def _append(self, size: int, record: dict[str, Any]) -> None:
        self._records.append((size, record))
        self._bytes += size

    def take(self, limit: int, max_bytes: int = MAX_BATCH_BYTES
             ) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """Up to `limit` records (and about `max_bytes`; always one), oldest first, and the
        drops counted since the last take."""
        out: list[dict[str, Any]] = []
        records = self._records
        size = 0
        while records and len(out) < limit:
            if out and size + records[0][0] > max_bytes:
                break
            entry = records.popleft()
            size += entry[0]
            out.append(entry[1])
        self._bytes -= size
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
            headers=bool(s.get("headers")),
            body=int(s.get("body") or 0),
            redact=frozenset(n.lower() for n in s.get("redact") or ()),
        )
        for s in specs
    )
